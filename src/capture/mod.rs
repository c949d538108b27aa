//! GStreamer capture on the agent: a source (test pattern, recorded file, RTSP camera, V4L2
//! USB camera, Raspberry Pi libcamera, Jetson Argus), an encoder where needed, and
//! `h264parse ! appsink` with AVC access units. H.264 from a camera (RTSP, UVC cameras with
//! native H.264) is passed through untouched; the agent decodes nothing with one exception: an
//! MJPEG camera must be decoded to be encoded to H.264, the only codec the payload carries.
//! H.265 RTSP cameras are refused with [`CaptureError::CodecUnsupported`] for the same reason.
//! Live chains are data ([`Chain`]): built by element name, checked for missing elements
//! before anything runs (a typed error naming the plugin package), printable in
//! `gst-launch-1.0` syntax ([`launch_description`]). Samples are cut into [`MediaFragment`]s by the pure [`Fragmenter`] and leave as
//! [`CaptureEvent`]s through a bounded channel.
//!
//! May import `crate::fragment` and `crate::media`.
//!
//! Behaviour:
//! - Backpressure: the appsink holds at most [`APPSINK_BUFFERS_MAX`] buffers and the streaming
//!   thread waits for room in the bounded event channel, so a slow consumer slows the pipeline
//!   (a file source simply reads slower; a live source falls behind) instead of growing memory.
//!   The wait gives up when the capture is stopped, so stopping never deadlocks.
//! - Errors and end of stream are watched on the bus by a separate thread: at end of stream
//!   the last, partial fragment is flushed, then [`CaptureEvent::EndOfStream`] is sent; a
//!   pipeline error becomes [`CaptureEvent::Error`]. A live source that delivers no sample for
//!   [`LIVE_STALL_MS_MAX`] also ends with an error ([`CaptureError::Stalled`]): an RTSP camera
//!   that vanished without closing its connection. Restarting is the caller's decision (the
//!   agent restarts live sources with backoff).
//! - Timestamps: sample times are microseconds since the Unix epoch: `origin + pts` for a file,
//!   `origin + running time` for a live source. A raw Annex-B file carries no timestamps: they
//!   are synthesized at [`DEFAULT_FRAME_RATE_FPS`] (frame index times the frame duration).

mod chain;
mod fragmenter;
mod pipeline;
mod source;
#[cfg(test)]
mod tests;

pub use chain::{Chain, ElementSpec, Stage, plugin_package};
pub use fragmenter::{FragmentLimits, Fragmenter, FragmenterStats, StreamFormat};
pub use pipeline::{
    APPSINK_BUFFERS_MAX, Capture, DEFAULT_FRAME_RATE_FPS, LIVE_STALL_MS_MAX, launch_description,
};
pub use source::{
    EncodeSettings, JetsonSource, LibcameraEncoder, LibcameraSource, RTSP_LATENCY_MS_DEFAULT,
    RtspSource, RtspTransport, SourceSpec, V4l2Format, V4l2Source, VideoCodec, redact_credentials,
};

use crate::fragment::UnixMillis;
use crate::media::MediaFragment;

/// How fast a file source is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// At the clip's own pace (the sink synchronises on the clock), as a camera would deliver.
    RealTime,
    /// As fast as the consumer takes fragments.
    Fast,
}

/// What to capture and how to cut it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub source: SourceSpec,
    pub pace: Pace,
    /// A fragment is cut at the first keyframe once this much media has accumulated.
    pub fragment_target_ms: u32,
    /// A fragment is cut here even without a keyframe.
    pub fragment_duration_ms_max: u32,
    /// Largest encoded media payload of one fragment; a cut is forced before it is exceeded.
    pub fragment_bytes_max: usize,
    /// Capacity of the event channel, in fragments.
    pub channel_fragments_max: usize,
}

impl CaptureConfig {
    /// Defaults: 2 s target, 10 s hard cap, 8 MiB per fragment, 8 fragments in the channel.
    pub fn new(source: SourceSpec, pace: Pace) -> Self {
        Self {
            source,
            pace,
            fragment_target_ms: 2_000,
            fragment_duration_ms_max: 10_000,
            fragment_bytes_max: 8 * 1024 * 1024,
            channel_fragments_max: 8,
        }
    }

    pub(crate) fn limits(&self) -> FragmentLimits {
        FragmentLimits {
            target_ms: self.fragment_target_ms,
            duration_ms_max: self.fragment_duration_ms_max,
            bytes_max: self.fragment_bytes_max,
        }
    }
}

/// A cut fragment with the metadata the uplink needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFragment {
    /// Producer time of the first sample.
    pub producer_timestamp: UnixMillis,
    pub duration_ms: u32,
    pub media: MediaFragment,
}

impl CapturedFragment {
    pub(crate) fn new(media: MediaFragment) -> Self {
        let start_ms = u64::try_from(media.start_us().max(0) / 1000).unwrap_or(0);
        let duration_ms = u32::try_from(media.duration_us().div_ceil(1000)).unwrap_or(u32::MAX);
        Self {
            producer_timestamp: UnixMillis(start_ms),
            duration_ms,
            media,
        }
    }
}

/// What a running capture reports.
#[derive(Debug)]
pub enum CaptureEvent {
    Fragment(CapturedFragment),
    EndOfStream,
    Error(CaptureError),
}

/// Why a capture could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("GStreamer could not be initialised: {0}")]
    GstInit(String),
    #[error(
        "source {0:?} is not understood; use \"test\", \"file:PATH\", \"rtsp://...\", \"v4l2:/dev/videoN\", \"libcamera\" or \"jetson\""
    )]
    BadSource(String),
    #[error("source option {key}: {reason}")]
    BadSourceOption { key: String, reason: String },
    #[error("source {0} is not supported here")]
    SourceUnsupported(String),
    #[error(
        "the camera sends {0}, which the agent cannot pass through (H.264 only); set the camera to H.264"
    )]
    CodecUnsupported(String),
    #[error("camera device {0} does not exist")]
    DeviceNotFound(std::path::PathBuf),
    #[error("camera device {device} cannot be opened: {message}")]
    DeviceUnusable {
        device: std::path::PathBuf,
        message: String,
    },
    #[error("no video from the source for {silent_ms} ms")]
    Stalled { silent_ms: u64 },
    #[error("file {0} does not exist")]
    FileNotFound(std::path::PathBuf),
    #[error("GStreamer element {element} is missing: {message}")]
    ElementMissing {
        element: &'static str,
        message: String,
    },
    #[error("pipeline could not be linked: {0}")]
    Link(String),
    #[error("pipeline could not change state: {0}")]
    StateChange(String),
    #[error("pipeline error from {source_element}: {message}")]
    Pipeline {
        source_element: String,
        message: String,
    },
    #[error("capture settings are invalid: {0}")]
    InvalidConfig(&'static str),
}
