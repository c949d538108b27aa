//! `hydrant agent --check`: proves that a resolved configuration can run, without contacting
//! the server. The CA, certificate and key files must parse, and each camera's pipeline must
//! reach PLAYING and produce video for about a second ([`CHECK_RUN_MS`]). Nothing is sent or
//! spooled; fragments are cut short ([`CHECK_FRAGMENT_MS`]) so that one appears quickly even
//! between keyframes, and are dropped.

use std::time::Duration;

use tokio::time::Instant;

use crate::capture::{Capture, CaptureConfig, CaptureEvent, Pace, SourceSpec};
use crate::config::{AgentSettings, CameraSettings};
use crate::fragment::UnixMillis;
use crate::transport::certs;

/// How long each pipeline runs once it produced video.
pub const CHECK_RUN_MS: u64 = 1_000;
/// How long a pipeline may take to produce its first video.
pub const CHECK_FIRST_VIDEO_TIMEOUT_MS: u64 = 10_000;
/// Fragment length during a check: short, so that video shows up within the run.
const CHECK_FRAGMENT_MS: u32 = 100;
/// Fragments waiting in the capture channel during a check.
const CHECK_CHANNEL_FRAGMENTS_MAX: usize = 4;

/// One checked item and its outcome: what passed, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub subject: String,
    pub outcome: Result<String, String>,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "{}: OK ({detail})", self.subject),
            Err(error) => write!(f, "{}: FAILED: {error}", self.subject),
        }
    }
}

/// Every line of a check, in order: files first, then one per camera.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub lines: Vec<CheckLine>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.outcome.is_ok())
    }
}

/// Checks the TLS files and runs each camera's pipeline briefly.
pub async fn check(settings: &AgentSettings) -> CheckReport {
    let mut lines = tls_lines(settings);
    for camera in &settings.cameras {
        lines.push(CheckLine {
            subject: format!("camera {} ({})", camera.stream, camera.source),
            outcome: check_camera(camera, settings).await,
        });
    }
    CheckReport { lines }
}

fn tls_lines(settings: &AgentSettings) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    if let Some(ca) = &settings.ca {
        lines.push(CheckLine {
            subject: format!("ca {}", ca.display()),
            outcome: certs::check_ca(ca)
                .map(|()| "parses".to_owned())
                .map_err(|e| e.to_string()),
        });
    }
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        lines.push(CheckLine {
            subject: format!(
                "device certificate {} and key {}",
                cert.display(),
                key.display()
            ),
            outcome: certs::check_client_identity(cert, key)
                .map(|()| "parse".to_owned())
                .map_err(|e| e.to_string()),
        });
    }
    lines
}

async fn check_camera(camera: &CameraSettings, settings: &AgentSettings) -> Result<String, String> {
    let source: SourceSpec = camera.source.parse().map_err(|e| format!("{e}"))?;
    // A file is read as fast as the check takes it; a live source runs at its own pace.
    let pace = match source {
        SourceSpec::File(_) => Pace::Fast,
        _ => Pace::RealTime,
    };
    let config = CaptureConfig {
        source,
        pace,
        fragment_target_ms: CHECK_FRAGMENT_MS,
        fragment_duration_ms_max: CHECK_FRAGMENT_MS,
        fragment_bytes_max: usize::try_from(settings.fragment_bytes_max).unwrap_or(usize::MAX),
        channel_fragments_max: CHECK_CHANNEL_FRAGMENTS_MAX,
    };
    let started = Instant::now();
    let (capture, mut events) =
        Capture::start(config, UnixMillis::now()).map_err(|e| e.to_string())?;
    let outcome = watch(&mut events, started).await;
    capture.stop();
    outcome
}

/// Waits for the first video, then lets the pipeline run until [`CHECK_RUN_MS`] have passed,
/// failing on any pipeline error.
async fn watch(
    events: &mut tokio::sync::mpsc::Receiver<CaptureEvent>,
    started: Instant,
) -> Result<String, String> {
    let first_deadline = started + Duration::from_millis(CHECK_FIRST_VIDEO_TIMEOUT_MS);
    let mut fragments = 0u32;
    let mut ended = false;
    loop {
        let deadline = if fragments == 0 {
            first_deadline
        } else {
            started + Duration::from_millis(CHECK_RUN_MS)
        };
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(CaptureEvent::Fragment(_))) => fragments = fragments.saturating_add(1),
            Ok(Some(CaptureEvent::Error(e))) => return Err(e.to_string()),
            Ok(Some(CaptureEvent::EndOfStream) | None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    if fragments == 0 {
        return Err(if ended {
            "the source ended without producing video".to_owned()
        } else {
            format!("no video within {CHECK_FIRST_VIDEO_TIMEOUT_MS} ms")
        });
    }
    let ms = started.elapsed().as_millis();
    Ok(format!(
        "playing, {fragments} fragment(s) of video in {ms} ms{}",
        if ended { ", then end of file" } else { "" }
    ))
}
