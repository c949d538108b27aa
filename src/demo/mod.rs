//! `hydrant demo`: the whole video path on one machine with embedded defaults.
//!
//! Starts a server on loopback with a temporary data directory, an agent replaying the sample
//! clip over QUIC, prints each fragment as the server persists it, then writes an MP4 of the last
//! 10 seconds (muxed on read, exactly as GetClip does) and says how to play it. A detection
//! consumer follows the demo stream and prints each event as it happens (its snapshot is copied
//! beside the clip, its clip URL served while the demo runs). Nothing else is left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::agent::{self, AgentEvent};
use crate::config::{AgentConfig, CameraSection, ServerConfig};
use crate::fragment::{StreamName, UnixMillis};
use crate::media::{self, MediaFragment};
use crate::server::Server;
use crate::store::{FragmentNumber, FragmentSummary, LIST_FRAGMENTS_MAX, TimestampKind};

/// The clip the demo replays, under the assets directory.
pub const DEMO_CLIP: &str = "videos/intel_one-by-one-person-detection.mp4";
const DEMO_STREAM: &str = "demo-camera";
/// Length of the clip written at the end.
const CLIP_MS: u64 = 10_000;
/// Longest wait after the replay for detection to go quiet.
const DETECT_DRAIN_S: u64 = 60;
/// Detection is considered finished after this long without an event update.
const DETECT_QUIET_S: u64 = 8;
/// Fragments a clip may hold (GetClip's limit).
const CLIP_FRAGMENTS_MAX: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "the sample clip {DEMO_CLIP} was not found: run `make demo` (it fetches the assets), or set HYDRANT_ASSETS to the assets directory"
    )]
    NoAssets,
    #[error("cannot create a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("server: {0}")]
    Server(#[from] crate::server::ServerError),
    #[error("agent: {0}")]
    Agent(#[from] agent::AgentError),
    #[error("the agent finished but {refused} fragment(s) were refused")]
    Refused { refused: u64 },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("media: {0}")]
    Media(#[from] crate::media::MediaError),
    #[error("nothing was stored, so there is no clip to write")]
    NothingStored,
    #[error("cannot write the clip to {path}: {source}")]
    WriteClip {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Replay as fast as possible instead of at the camera's pace.
    pub fast: bool,
    /// Where the final clip goes.
    pub clip_out: PathBuf,
}

/// Finds the assets directory: `$HYDRANT_ASSETS`, then `.assets` and `../shared/assets` beside
/// the current directory.
pub fn find_assets() -> Option<PathBuf> {
    let candidates = std::env::var_os("HYDRANT_ASSETS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(".assets"), PathBuf::from("../shared/assets")]);
    candidates
        .into_iter()
        .find(|dir| dir.join(DEMO_CLIP).is_file())
}

pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let assets = find_assets().ok_or(DemoError::NoAssets)?;
    let clip = assets.join(DEMO_CLIP);
    let tmp = tempfile::Builder::new()
        .prefix("hydrant-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    let stream = StreamName::new(DEMO_STREAM).map_err(|_| DemoError::NothingStored)?;

    let server = start_server(tmp.path()).await?;
    println!("Hydrant demo");
    println!(
        "  server   HTTP http://{}  QUIC {}  data {}",
        server.http_addr,
        server.quic_addr,
        tmp.path().display()
    );
    println!(
        "  agent    replaying {} {}",
        clip.display(),
        if options.fast {
            "as fast as possible"
        } else {
            "at real-time pace"
        }
    );
    println!(
        "  (sample video by Intel IoT DevKit, https://github.com/intel-iot-devkit/sample-videos, CC BY 4.0)"
    );
    println!();

    let settings = AgentConfig {
        server: server.quic_addr.to_string(),
        ca: Some(server.ca_pem.clone()),
        spool_dir: tmp.path().join("agent"),
        agent_name: "demo-agent".to_owned(),
        cameras: vec![CameraSection {
            stream: DEMO_STREAM.to_owned(),
            source: format!("file:{}", clip.display()),
            fast: options.fast,
        }],
        ..AgentConfig::default()
    }
    .resolve()?;
    let (events_tx, events_rx) = mpsc::channel(64);
    let (_stop, stop_rx) = watch::channel(false);
    let printer = tokio::spawn(print_events(
        events_rx,
        server.store.clone(),
        stream.clone(),
    ));
    let detections = server.events.as_ref().map(|hub| {
        tokio::spawn(print_detections(
            hub.subscribe(),
            options.clip_out.clone(),
            hub.dir().to_path_buf(),
            hub.base_url.clone(),
        ))
    });
    let report = agent::run(settings, Some(events_tx), stop_rx).await;
    let _ = printer.await;
    if let Some(detections) = detections {
        // Detection runs behind ingest: let it finish the clip (it prints as it goes).
        let _ = tokio::time::timeout(Duration::from_secs(DETECT_DRAIN_S), detections).await;
    }
    let report = report?;
    if !report.all_persisted() {
        server.shutdown().await;
        return Err(DemoError::Refused {
            refused: report.refused,
        });
    }

    let result = write_last_clip(&server, &stream, &options.clip_out);
    server.shutdown().await;
    let (fragments, bytes) = result?;
    println!();
    println!("{} fragments persisted.", report.persisted);
    println!(
        "Wrote a clip of the last {} s ({fragments} fragments, {} KiB) to {}",
        CLIP_MS / 1000,
        bytes / 1024,
        options.clip_out.display()
    );
    println!(
        "Play it with:  gst-play-1.0 {0}   (or: ffplay {0}, vlc {0})",
        options.clip_out.display()
    );
    Ok(())
}

/// Prints each detection event as it opens and closes; copies snapshots beside the clip. Ends
/// once no event has changed for [`DETECT_QUIET_S`] after the first one.
async fn print_detections(
    mut events: tokio::sync::broadcast::Receiver<crate::detect::events::Event>,
    clip_out: PathBuf,
    events_dir: PathBuf,
    base_url: String,
) {
    let mut count = 0u32;
    // Event ids to their number in the output (the demo raises a handful).
    let mut numbers: std::collections::BTreeMap<String, u32> = Default::default();
    loop {
        let next = if count == 0 {
            events.recv().await
        } else {
            match tokio::time::timeout(Duration::from_secs(DETECT_QUIET_S), events.recv()).await {
                Ok(next) => next,
                Err(_) => return,
            }
        };
        let event = match next {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        match event.end {
            None => {
                count += 1;
                if numbers.len() < 1000 {
                    numbers.insert(event.id.clone(), count);
                }
                let snapshot = event.snapshot.as_ref().map(|name| {
                    let copy = clip_out.with_file_name(format!("hydrant-event-{count}.jpg"));
                    match std::fs::copy(events_dir.join(name), &copy) {
                        Ok(_) => copy.display().to_string(),
                        Err(_) => events_dir.join(name).display().to_string(),
                    }
                });
                println!(
                    "  EVENT {count}: {} (score {:.2})\n           snapshot {}\n           clip     {base_url}/events/{}/clip.mp4",
                    event.label,
                    event.score,
                    snapshot.unwrap_or_else(|| "-".into()),
                    event.id
                );
            }
            Some(end) => println!(
                "  EVENT {}: ended after {:.1} s",
                numbers.get(&event.id).copied().unwrap_or(0),
                end.saturating_sub(event.start) as f64 / 1000.0
            ),
        }
    }
}

async fn start_server(data_dir: &Path) -> Result<Server, DemoError> {
    let mut config = ServerConfig {
        data_dir: data_dir.join("server"),
        ..ServerConfig::default()
    };
    config.storage.create_streams_on_first_use = true;
    // A loopback demo with no keys configured: the AWS CLI examples work with any credentials.
    config.auth.open = true;
    // Person detection on the demo stream, at a light sampling rate.
    config.detect.sample_fps = 2.0;
    // A fast replay outruns detection; let it catch up on the whole clip instead of skipping.
    config.detect.backlog_fragments_max = 100;
    config.detect.cameras = vec![crate::config::DetectCamera {
        stream: DEMO_STREAM.to_owned(),
        labels: vec!["person".to_owned()],
        ..crate::config::DetectCamera::default()
    }];
    config.quic.listen = "127.0.0.1:0".to_owned();
    // The usual port when it is free, so the AWS CLI examples in the README work as written.
    config.http.listen = "127.0.0.1:7070".to_owned();
    match Server::start(config.clone().resolve()?).await {
        Ok(server) => Ok(server),
        Err(crate::server::ServerError::BindHttp { .. }) => {
            config.http.listen = "127.0.0.1:0".to_owned();
            Ok(Server::start(config.resolve()?).await?)
        }
        Err(e) => Err(e.into()),
    }
}

async fn print_events(
    mut events: mpsc::Receiver<AgentEvent>,
    store: std::sync::Arc<crate::store::Store>,
    stream: StreamName,
) {
    while let Some(event) = events.recv().await {
        match event {
            AgentEvent::Persisted {
                id,
                fragment_number,
            } => {
                let summary = fragment_number
                    .as_deref()
                    .and_then(|n| n.parse::<FragmentNumber>().ok())
                    .and_then(|n| store.read_fragment(&stream, n).ok())
                    .map(|(s, _)| s);
                match summary {
                    Some(s) => println!(
                        "  persisted #{:<4} fragment {}  producer {}  {:>5} ms  {:>6} KiB",
                        id.sequence,
                        s.number,
                        s.producer_timestamp.to_rfc3339(),
                        s.duration_ms,
                        s.size_bytes / 1024
                    ),
                    None => println!("  persisted #{:<4} (already stored)", id.sequence),
                }
            }
            AgentEvent::Refused { id, reason } => println!("  REFUSED   #{} {reason}", id.sequence),
            AgentEvent::StreamRefused { stream, reason } => {
                println!("  STREAM REFUSED {stream}: {reason}")
            }
        }
    }
}

/// Muxes the last [`CLIP_MS`] of the stream (by producer time) into an MP4 file.
fn write_last_clip(
    server: &Server,
    stream: &StreamName,
    out: &Path,
) -> Result<(usize, usize), DemoError> {
    let all = all_fragments(server, stream)?;
    let end = all
        .iter()
        .map(|f| {
            f.producer_timestamp
                .saturating_add_ms(u64::from(f.duration_ms))
        })
        .max()
        .ok_or(DemoError::NothingStored)?;
    let start = UnixMillis(end.0.saturating_sub(CLIP_MS));
    let mut fragments: Vec<MediaFragment> = Vec::new();
    for summary in all
        .iter()
        .filter(|f| f.producer_timestamp >= start)
        .take(CLIP_FRAGMENTS_MAX)
    {
        let (_, payload) = server.store.read_fragment(stream, summary.number)?;
        fragments.push(MediaFragment::decode(&payload)?);
    }
    let mp4 = media::mp4::write_mp4(&fragments)?;
    std::fs::write(out, &mp4).map_err(|source| DemoError::WriteClip {
        path: out.to_owned(),
        source,
    })?;
    Ok((fragments.len(), mp4.len()))
}

/// Every fragment of the stream in producer-time order, a page at a time.
fn all_fragments(server: &Server, stream: &StreamName) -> Result<Vec<FragmentSummary>, DemoError> {
    let mut all: Vec<FragmentSummary> = Vec::new();
    loop {
        let after = all.last().map(|f| f.number);
        let page = server.store.list_fragments(
            stream,
            TimestampKind::Producer,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            after,
            LIST_FRAGMENTS_MAX,
        )?;
        let done = page.len() < LIST_FRAGMENTS_MAX;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}
