//! Agent benchmark: the agent's CPU time and peak RSS per camera stream next to a bare
//! `gst-launch-1.0` pipeline doing the same capture into `fakesink`, in the same run; the ratio
//! is what the agent adds (fragmenting, spooling with fsync, QUIC, TLS). Also the spool's write
//! amplification, read from the agent's exit summary.
//!
//! Two captures, each for `HYDRANT_BENCH_SECONDS` (default 20) with `HYDRANT_BENCH_CAMERAS`
//! cameras (default 2) in one agent:
//! - `test`: videotestsrc + x264 (live, spooled);
//! - `file`: a recorded H.264 clip replayed at real-time pace, passed through without encoding
//!   (the shape of an RTSP camera's capture; file sources are not spooled).
//!
//! The agent sends to a real `hydrant server` on loopback. CPU is user + system time from
//! `/proc/<pid>/stat`, peak RSS is `VmHWM` from `/proc/<pid>/status`, both read just before the
//! process is stopped. Run with `cargo bench --bench agent`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hydrant::capture::{SourceSpec, launch_description};

const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const CLIP: &str = "intel_one-by-one-person-detection.mkv";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) and peak RSS in KiB of a running process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    peak_rss_kib: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_s: self.cpu_s + o.cpu_s,
            peak_rss_kib: self.peak_rss_kib + o.peak_rss_kib,
        }
    }
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at state: utime and stime
    // are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Usage {
        cpu_s: ticks as f64 / clock_ticks_per_s(),
        peak_rss_kib,
    }
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port()
}

fn hydrant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hydrant"))
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

struct Server {
    child: Child,
    quic: SocketAddr,
    ca: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let data = dir.join("data");
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().expect("addr");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp()).parse().expect("addr");
        std::fs::write(dir.join("server.toml"), "").expect("config");
        let child = hydrant()
            .args(["server", "--open", "--config"])
            .arg(dir.join("server.toml"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--http", &http.to_string(), "--quic", &quic.to_string()])
            .env("HYDRANT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let ca = data.join("tls").join("ca.pem");
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while !(ca.is_file() && std::net::TcpStream::connect(http).is_ok()) {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = reqwest::blocking::Client::new();
        for index in 0..env_u64("HYDRANT_BENCH_CAMERAS", 2) {
            let status = client
                .post(format!("http://{http}/createStream"))
                .json(&serde_json::json!({"StreamName": format!("bench-{index}"), "DataRetentionInHours": 1}))
                .send()
                .expect("createStream")
                .status();
            assert!(
                status.is_success() || status.as_u16() == 400,
                "createStream {status}"
            );
        }
        Server { child, quic, ca }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one agent with `cameras` streams of `source` for `seconds`; returns its usage and
/// its spool summary line.
fn run_agent(
    server: &Server,
    dir: &Path,
    source: &str,
    cameras: u64,
    seconds: u64,
) -> (Usage, String) {
    let mut config = format!(
        "server = \"{}\"\nca = \"{}\"\nspool_dir = \"{}\"\n",
        server.quic,
        server.ca.display(),
        dir.join("spool").display()
    );
    for index in 0..cameras {
        config.push_str(&format!(
            "\n[[cameras]]\nstream = \"bench-{index}\"\nsource = \"{source}\"\n"
        ));
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).expect("agent config");
    let child = hydrant()
        .args(["agent", "--config"])
        .arg(&path)
        .env("HYDRANT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    std::thread::sleep(Duration::from_secs(seconds));
    let used = usage(child.id());
    sigterm(&child);
    let output = wait_output(child);
    let summary = output
        .lines()
        .find(|l| l.starts_with("hydrant agent spool:"))
        .unwrap_or("(no spool summary)")
        .to_owned();
    (used, summary)
}

fn wait_output(mut child: Child) -> String {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("agent output");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `cameras` bare `gst-launch-1.0 <capture> ! fakesink` processes for `seconds`.
fn run_bare(source: &SourceSpec, cameras: u64, seconds: u64) -> Usage {
    let description = launch_description(source).expect("source builds");
    let launch = format!("{description} ! fakesink sync=true");
    let children: Vec<Child> = (0..cameras)
        .map(|_| {
            Command::new("gst-launch-1.0")
                .arg("-q")
                .args(shell_words(&launch))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gst-launch-1.0 (package gstreamer1.0-tools)")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    let mut total = Usage::default();
    for mut child in children {
        total = total + usage(child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
    total
}

/// gst-launch-1.0 joins its arguments into one description, so splitting on spaces outside
/// quotes and dropping the quotes gives it back exactly.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn clip() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("HYDRANT_ASSETS")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared/assets"), root.join(".assets")])
        .map(|d| d.join("videos").join(CLIP))
        .find(|p| p.is_file())
        .expect("test assets: run `make test` once (it fetches them) or set HYDRANT_ASSETS")
}

fn report(name: &str, cameras: u64, seconds: u64, agent: Usage, bare: Usage) {
    let per = |v: f64| v / cameras as f64;
    println!(
        "{name:<5} agent: {:.3} CPU s/stream ({:.1}% of a core), peak RSS {:.1} MiB/stream | bare gst-launch: {:.3} CPU s/stream ({:.1}%), peak RSS {:.1} MiB/stream | CPU ratio {:.2}, RSS ratio {:.2}",
        per(agent.cpu_s),
        100.0 * per(agent.cpu_s) / seconds as f64,
        per(agent.peak_rss_kib as f64) / 1024.0,
        per(bare.cpu_s),
        100.0 * per(bare.cpu_s) / seconds as f64,
        per(bare.peak_rss_kib as f64) / 1024.0,
        agent.cpu_s / bare.cpu_s.max(1e-9),
        agent.peak_rss_kib as f64 / (bare.peak_rss_kib as f64).max(1.0),
    );
}

fn main() {
    let seconds = env_u64("HYDRANT_BENCH_SECONDS", 20);
    let cameras = env_u64("HYDRANT_BENCH_CAMERAS", 2);
    println!(
        "agent benchmark: {cameras} camera stream(s) in one agent vs {cameras} bare gst-launch-1.0 process(es), {seconds} s each"
    );
    println!(
        "(the agent is one process for all streams: its RSS per stream includes its fixed share)"
    );
    let clip = clip();
    let file_spec = format!("file:{}", clip.display());
    for (name, spec) in [("test", "test".to_owned()), ("file", file_spec)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start(dir.path());
        let (agent, summary) = run_agent(&server, dir.path(), &spec, cameras, seconds);
        drop(server);
        let source: SourceSpec = spec.parse().expect("spec");
        let bare = run_bare(&source, cameras, seconds);
        report(name, cameras, seconds, agent, bare);
        println!("      {summary}");
    }
}
