//! The `hydrant` command: parses the command line, applies flags over the config file, and hands
//! over to the library. The only place that uses `anyhow`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use hydrant::config::{self, AgentConfig, CameraSection, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "hydrant",
    version,
    about = "Self-hosted, Kinesis-style streaming for cameras and data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: QUIC ingest from agents, storage, AWS-compatible HTTP APIs.
    Server(ServerArgs),
    /// Run an agent: capture cameras or files and send fragments to a server.
    Agent(AgentArgs),
    /// Run a server and an agent replaying a sample clip, then write a clip back.
    Demo(DemoArgs),
    /// Person detection tools.
    #[command(subcommand)]
    Detect(DetectCommand),
    /// Manage device identities: the server CA, device certificates, revocation.
    Certs(CertsArgs),
    /// Load tools that drive a running server over HTTP.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Drive PutRecord, PutRecords and GetRecords against a data streams endpoint.
    Streams(BenchStreamsArgs),
}

#[derive(Debug, clap::Args)]
struct BenchStreamsArgs {
    /// Server HTTP base URL (started with --open; add --no-throttle for raw speed).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    /// Concurrent requests in flight (one connection each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Total run time in seconds, split evenly across the three operations.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Entries per PutRecords request.
    #[arg(long, default_value_t = 500)]
    records_per_request: usize,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Shards of the stream the run creates.
    #[arg(long, default_value_t = 4)]
    shards: u32,
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// The server's data directory (its tls/ holds the CA and the device registry).
    #[arg(long, env = "HYDRANT_DATA_DIR", default_value = "hydrant-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    action: CertsAction,
}

#[derive(Debug, Subcommand)]
enum CertsAction {
    /// Create the server CA (kept if there is one; the server also creates it at first start).
    Init,
    /// Issue a client certificate for a device, allowed to write the given streams.
    Issue {
        /// Device name (letters, digits, '_', '.', '-').
        #[arg(long)]
        device: String,
        /// Streams the device may write, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        streams: Vec<String>,
        /// Where to write NAME.crt, NAME.key and ca.pem.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a device: a running server refuses it from its next connection on.
    Revoke {
        #[arg(long)]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum DetectCommand {
    /// Replay a clip through the detection pipeline and print decisions and a summary.
    Eval(EvalArgs),
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Video file to replay (MP4, Matroska, raw H.264).
    #[arg(long)]
    clip: PathBuf,
    /// Model name (yolox_nano_416, light_person_detector_192) or a sidecar .toml path.
    #[arg(long, default_value = hydrant::detect::model::DEFAULT_MODEL)]
    model: String,
    /// Labelled person intervals: {"fps": N, "person": [[first_frame, last_frame], ...]}.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Print only the JSON summary.
    #[arg(long)]
    json: bool,
    /// Frames per second sampled from the clip.
    #[arg(long, default_value_t = hydrant::detect::eval::SAMPLE_FPS_DEFAULT)]
    fps: f64,
    /// Intra-op threads for ONNX Runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Execution provider: cpu, cuda, tensorrt, openvino (falls back to CPU when unavailable).
    #[arg(long, default_value = "cpu")]
    ep: String,
    /// Score threshold (default: the model sidecar's).
    #[arg(long)]
    threshold: Option<f32>,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Server config file (TOML); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (streams, TLS identity).
    #[arg(long, env = "HYDRANT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (default 0.0.0.0:7070).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// QUIC listen address for agents (default 0.0.0.0:7071/udp).
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// Development mode: any AWS credentials, agents without client certificates.
    #[arg(long)]
    open: bool,
    /// Turn off the per-shard throughput limits of data streams (load tests).
    #[arg(long)]
    no_throttle: bool,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Agent config file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Server QUIC address, host:port.
    #[arg(long)]
    server: Option<String>,
    /// CA certificate of the server (its <data-dir>/tls/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Development mode: trust and pin the first server certificate seen.
    #[arg(long)]
    trust_first_cert: bool,
    /// This device's certificate (NAME.crt from `hydrant certs issue`).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// This device's private key (NAME.key).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Stream to send to (with --source: replaces the cameras of the config file).
    #[arg(long, requires = "source")]
    stream: Option<String>,
    /// Source: test, file:PATH, rtsp://..., v4l2:/dev/videoN, libcamera, jetson.
    #[arg(long, requires = "stream")]
    source: Option<String>,
    /// Replay files as fast as possible instead of at real-time pace.
    #[arg(long)]
    fast: bool,
    /// Agent state directory.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Check the config, the TLS files and each camera's pipeline (about a second each, nothing
    /// sent), print one line per item, exit 0 only if all pass.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Replay the clip as fast as possible instead of at real-time pace.
    #[arg(long)]
    fast: bool,
    /// Where to write the final clip.
    #[arg(long, default_value = "hydrant-demo-clip.mp4")]
    clip: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo talks to the user on stdout; its logs stay quiet unless asked for.
    init_logging(
        if matches!(
            cli.command,
            Command::Demo(_) | Command::Detect(_) | Command::Bench(_)
        ) {
            "warn"
        } else {
            "info,quinn=warn,ort=warn"
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HYDRANT_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: logs written to files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Certs(args) => run_certs(args),
        Command::Demo(args) => {
            hydrant::demo::run(hydrant::demo::DemoOptions {
                fast: args.fast,
                clip_out: args.clip,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detect(DetectCommand::Eval(args)) => {
            tokio::task::spawn_blocking(move || run_detect_eval(args)).await?
        }
        Command::Bench(BenchCommand::Streams(args)) => run_bench_streams(args).await,
    }
}

async fn run_bench_streams(args: BenchStreamsArgs) -> anyhow::Result<ExitCode> {
    let settings = hydrant::bench::streams::LoadSettings {
        endpoint: args.endpoint,
        connections: args.connections,
        duration: std::time::Duration::from_secs(args.duration_s),
        records_per_request: args.records_per_request,
        record_bytes: args.record_bytes,
        shards: args.shards,
    };
    let figures = hydrant::bench::streams::run(&settings, |line| println!("{line}")).await?;
    println!(
        "--- {} connections, {} B records",
        settings.connections, settings.record_bytes
    );
    for op in &figures {
        println!("{op}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_detect_eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    use hydrant::detect::eval::{self, EvalOptions};
    let mut options = EvalOptions::new(args.clip);
    options.model = args.model;
    options.labels = args.labels;
    options.pipeline.sample_fps = args.fps;
    options.detector.threads = args.threads;
    options.detector.execution_provider = args.ep;
    options.detector.score_threshold = args.threshold;
    let json = args.json;
    let report = eval::evaluate(&options, |d| {
        if !json {
            println!(
                "frame {:>6} t={:>8.3}s {:<9} gain={:.2} persons={} max={:.2} tracks={}{}{}",
                d.index,
                d.pts_ms as f64 / 1000.0,
                format!("{:?}", d.gate).to_lowercase(),
                d.gain,
                d.persons,
                d.max_score,
                d.tracks,
                if d.event_started {
                    " EVENT START"
                } else if d.event_open {
                    " event"
                } else {
                    ""
                },
                d.inference_ms
                    .map(|ms| format!(" {ms:.1}ms"))
                    .unwrap_or_default()
            );
        }
    })
    .context("detect eval failed")?;
    let s = &report.summary;
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    for e in &s.events {
        println!(
            "event {} {:.1}s-{:.1}s score {:.2}",
            e.label, e.start_s, e.end_s, e.score
        );
    }
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "{} event(s); frames: {} decoded, {} sampled, {} inferred ({} skipped by the motion gate)",
        s.events.len(),
        s.frames_total,
        report.frames_sampled,
        s.frames_inferred,
        report.frames_sampled - s.frames_inferred
    );
    println!(
        "precision {} recall {} (sampled frames; tp {} fp {} fn {}); inference ms p50 {:.1} p99 {:.1}",
        fmt(s.precision),
        fmt(s.recall),
        report.true_positives,
        report.false_positives,
        report.false_negatives,
        s.inference_ms_p50,
        s.inference_ms_p99
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: ServerConfig = match &args.config {
        Some(path) => config::load(path)?,
        None => ServerConfig::default(),
    };
    if let Some(dir) = args.data_dir {
        cfg.data_dir = dir;
    }
    if let Some(addr) = args.http {
        cfg.http.listen = addr.to_string();
    }
    if let Some(addr) = args.quic {
        cfg.quic.listen = addr.to_string();
    }
    cfg.auth.open |= args.open;
    if args.no_throttle {
        cfg.streams.throttle = false;
        tracing::info!("--no-throttle: data stream throughput limits are off");
    }
    let server = hydrant::server::Server::start(cfg.resolve()?).await?;
    println!(
        "hydrant server: HTTP {} QUIC {} CA {}",
        server.http_addr,
        server.quic_addr,
        server.ca_pem.display()
    );
    wait_for_signal().await;
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: AgentConfig = match &args.config {
        Some(path) => config::load(path)?,
        None => AgentConfig::default(),
    };
    if let Some(server) = args.server {
        cfg.server = server;
    }
    if let Some(ca) = args.ca {
        cfg.ca = Some(ca);
    }
    cfg.trust_first_certificate |= args.trust_first_cert;
    if let (Some(cert), Some(key)) = (args.cert, args.key) {
        cfg.cert = Some(cert);
        cfg.key = Some(key);
    }
    if cfg.trust_first_certificate && args.config.is_none() && cfg.ca.is_none() {
        tracing::warn!(
            "development mode: the first server certificate seen will be trusted and pinned"
        );
    }
    if let Some(dir) = args.spool_dir {
        cfg.spool_dir = dir;
    }
    if let (Some(stream), Some(source)) = (args.stream, args.source) {
        cfg.cameras = vec![CameraSection {
            stream,
            source,
            fast: args.fast,
        }];
    } else if args.fast {
        cfg.cameras.iter_mut().for_each(|c| c.fast = true);
    }
    let settings = cfg.resolve()?;
    if args.check {
        let report = hydrant::agent::check(&settings).await;
        for line in &report.lines {
            println!("{line}");
        }
        return Ok(if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: flushing what was captured");
        let _ = stop_tx.send(true);
    });
    let report = hydrant::agent::run(settings, None, stop_rx)
        .await
        .context("agent failed")?;
    println!(
        "hydrant agent: {} fragment(s) persisted ({} already stored), {} refused, {} stream(s) refused",
        report.persisted, report.already_stored, report.refused, report.streams_refused
    );
    let spool = &report.spool;
    println!(
        "hydrant agent spool: {} recovered, {} spooled, {} released, {} dropped, {} expired, {} refused, {} unreleased; {:.4} bytes written per payload byte",
        spool.recovered_fragments,
        spool.fragments_spooled,
        spool.fragments_released,
        spool.fragments_dropped,
        spool.fragments_expired,
        spool.fragments_refused,
        spool.unreleased_fragments,
        spool.write_amplification()
    );
    Ok(if report.all_persisted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_certs(args: CertsArgs) -> anyhow::Result<ExitCode> {
    use hydrant::transport::{DeviceName, certs};
    let tls = certs::tls_dir(&args.data_dir);
    let now_ms = hydrant::fragment::UnixMillis::now().0;
    match args.action {
        CertsAction::Init => {
            let status = certs::init_ca(&tls)?;
            let verb = if status.created {
                "created"
            } else {
                "kept the existing"
            };
            println!("hydrant certs: {verb} CA {}", status.ca_pem.display());
        }
        CertsAction::Issue {
            device,
            streams,
            out,
        } => {
            let device = DeviceName::new(&device)?;
            let streams = streams
                .iter()
                .map(|s| hydrant::fragment::StreamName::new(s.trim()))
                .collect::<Result<Vec<_>, _>>()
                .context("--streams")?;
            let issued = certs::issue_device(&tls, &device, streams, &out, now_ms)?;
            if issued.replaced {
                println!("hydrant certs: device {device} had a certificate; it no longer works");
            }
            println!(
                "hydrant certs: issued {} (key {}, CA {}) for device {device}",
                issued.cert.display(),
                issued.key.display(),
                issued.ca.display()
            );
        }
        CertsAction::Revoke { device } => {
            let device = DeviceName::new(&device)?;
            let state = if certs::revoke_device(&tls, &device, now_ms)? {
                "revoked"
            } else {
                "was already revoked"
            };
            println!("hydrant certs: device {device} {state}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
