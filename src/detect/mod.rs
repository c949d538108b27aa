//! Person detection on video: the per-frame pipeline and the evaluation tool.
//!
//! Owns: model sidecars ([`model`]), frame sources ([`source`], GStreamer decode behind the
//! [`FrameSource`] trait so stored fragments can feed it later), the pure cores (letterbox
//! pre-processing in [`preprocess`], output decoders and NMS in [`decode`], the motion gate and
//! brightness gain in [`gate`], the IoU tracker and the dwell/cooldown rule in [`track`]), the thin
//! [`Detector`] that owns the ONNX Runtime session ([`infer`]), and `hydrant detect eval`
//! ([`eval`]).
//!
//! May import: `demo` (asset lookup order) and external crates (`ort`, `image`, `gstreamer`).
//! The live side builds on these pieces: [`consumer`] follows a stream's fragments in the store
//! (it may import `store`, `media`, `config` and `alerts`), [`rules`] holds the pure camera rules
//! (zones, schedules, arm/disarm, cooldown), [`events`] the durable event log and [`snapshot`]
//! the JPEG with the box drawn.
//!
//! Behaviour: a frame source is pulled, never pushed: the decoder blocks while the pipeline is
//! busy (the appsink holds at most [`source::APPSINK_BUFFERS_MAX`] frames), so a slow model slows
//! decoding instead of growing a queue. Frames are sampled to a target rate before any work; the
//! motion gate skips inference when nothing moves, except while a track is alive and at a
//! heartbeat. ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH`; a missing library or
//! model file is a typed error that says what to do.

pub mod consumer;
pub mod decode;
pub mod eval;
pub mod events;
pub mod gate;
pub mod infer;
pub mod model;
pub mod preprocess;
pub mod rules;
pub mod snapshot;
pub mod source;
pub mod track;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use decode::{BoxXyxy, Detection};
pub use eval::{EvalOptions, EvalReport, Labels};
pub use infer::{Detector, DetectorOptions};
pub use model::ModelSpec;
pub use source::{Frame, FrameSource, GstFileSource};

/// Everything that can go wrong in detection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "ONNX Runtime library not found{}: run `scripts/setup.sh` (or `make demo`) and `source .hydrant-env`, or set ORT_DYLIB_PATH to libonnxruntime.so",
        .0.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default()
    )]
    NoRuntime(Option<PathBuf>),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error(
        "unknown model {0:?}: use yolox_nano_416, light_person_detector_192 or a sidecar .toml path"
    )]
    UnknownModel(String),
    #[error("model sidecar {path}: {reason}")]
    Sidecar { path: String, reason: String },
    #[error(
        "model file {file} not found in the assets directory: run `make demo` or `scripts/setup.sh` (they fetch the assets), or set HYDRANT_ASSETS"
    )]
    NoModelFile { file: String },
    #[error("model file {path} has sha256 {actual}, expected {expected}: fetch it again")]
    ModelChecksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model output {name} has shape {shape:?}, expected {expected}")]
    OutputShape {
        name: String,
        shape: Vec<i64>,
        expected: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("video decode: {0}")]
    Video(String),
    #[error("frame of {width}x{height} is outside the accepted size")]
    FrameSize { width: u32, height: u32 },
    #[error("labels file {path}: {reason}")]
    Labels { path: PathBuf, reason: String },
}

impl From<ort::Error> for DetectError {
    fn from(e: ort::Error) -> Self {
        DetectError::Runtime(e.to_string())
    }
}
