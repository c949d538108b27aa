//! Model sidecars: how to feed a model and decode its output, and where its file is.
//!
//! The two sidecars of `models/` are built into the binary so `--model NAME` works from any
//! directory; `--model path/to/x.toml` reads another one. The `.onnx` file is looked up in the
//! assets directory (`$HYDRANT_ASSETS`, `.assets`, `../shared/assets`, the order of
//! [`crate::demo::find_assets`]) under `models/`, and its sha256 is checked before loading.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::DetectError;

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "yolox_nano_416";
/// A model input side larger than this is refused (a typo in a sidecar, not a real model).
pub const INPUT_SIDE_MAX: u32 = 2048;
/// Model files larger than this are refused before hashing.
pub const MODEL_BYTES_MAX: u64 = 512 * 1024 * 1024;

const BUILTIN: [(&str, &str); 2] = [
    (
        "yolox_nano_416",
        include_str!("../../models/yolox_nano_416.toml"),
    ),
    (
        "light_person_detector_192",
        include_str!("../../models/light_person_detector_192.toml"),
    ),
];

/// Output decoder family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// `[1, N, 5 + classes]`: grid offsets, log sizes, sigmoided objectness and class scores.
    Yolox,
    /// `[1, 4 + classes, N]`: centre and size in input pixels, class scores, no objectness.
    Yolov8,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "BGR")]
    Bgr,
    #[serde(rename = "RGB")]
    Rgb,
}

/// Where the resized image goes on the input canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LetterboxRule {
    /// Paste at (0, 0); boxes map back by dividing by the scale.
    TopLeft,
    /// Paste centred; boxes map back by removing the padding, then dividing.
    Centre,
}

/// One model sidecar (`models/<name>.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub source_url: String,
    pub licence: String,
    pub decoder: DecoderKind,
    pub input_name: String,
    pub input_width: u32,
    pub input_height: u32,
    pub layout: String,
    pub channel_order: ChannelOrder,
    /// Multiplies the 0..255 pixel value (1.0 for raw, 1/255 for 0..1).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (in the model's channel order); none if absent.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation divided by after the mean; none if absent.
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    pub letterbox: LetterboxRule,
    pub letterbox_fill: u8,
    pub output_name: String,
    #[serde(default)]
    pub strides: Vec<u32>,
    pub labels: Vec<String>,
    /// Index of the "person" class among the model's classes.
    pub person_class: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl ModelSpec {
    /// A built-in sidecar by name, or a sidecar file when `name` ends in `.toml`.
    pub fn load(name: &str) -> Result<Self, DetectError> {
        if name.ends_with(".toml") {
            let path = Path::new(name);
            let text = std::fs::read_to_string(path).map_err(|source| DetectError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            return Self::parse(name, &text);
        }
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| DetectError::UnknownModel(name.to_string()))?;
        Self::parse(name, text)
    }

    /// Parses and checks a sidecar.
    pub fn parse(origin: &str, text: &str) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Sidecar {
            path: origin.to_string(),
            reason,
        };
        let spec: ModelSpec = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if spec.layout != "NCHW" {
            return Err(bad(format!(
                "layout {} is not supported (NCHW only)",
                spec.layout
            )));
        }
        let side_ok = |s: u32| (1..=INPUT_SIDE_MAX).contains(&s);
        if !side_ok(spec.input_width) || !side_ok(spec.input_height) {
            return Err(bad("input size out of range".into()));
        }
        if spec.decoder == DecoderKind::Yolox && spec.strides.is_empty() {
            return Err(bad("a yolox decoder needs strides".into()));
        }
        if spec.strides.contains(&0) {
            return Err(bad("a stride of 0".into()));
        }
        Ok(spec)
    }

    /// Finds the model file in the assets directory.
    pub fn locate(&self) -> Result<PathBuf, DetectError> {
        let rel = Path::new("models").join(&self.file);
        asset_dirs()
            .into_iter()
            .map(|dir| dir.join(&rel))
            .find(|p| p.is_file())
            .ok_or_else(|| DetectError::NoModelFile {
                file: rel.display().to_string(),
            })
    }

    /// Reads the model file and checks its sha256 against the sidecar.
    pub fn read_verified(&self, path: &Path) -> Result<Vec<u8>, DetectError> {
        let io = |source| DetectError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MODEL_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let actual = hex(&Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(DetectError::ModelChecksum {
                path: path.to_path_buf(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Candidate assets directories, in the order `demo::find_assets` uses.
pub fn asset_dirs() -> Vec<PathBuf> {
    std::env::var_os("HYDRANT_ASSETS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(".assets"), PathBuf::from("../shared/assets")])
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sidecars_parse() {
        let yolox = ModelSpec::load("yolox_nano_416").unwrap();
        assert_eq!(
            (yolox.input_width, yolox.decoder),
            (416, DecoderKind::Yolox)
        );
        assert_eq!(yolox.channel_order, ChannelOrder::Bgr);
        let light = ModelSpec::load("light_person_detector_192").unwrap();
        assert_eq!(light.input_height, 192);
        assert!(matches!(
            ModelSpec::load("nope"),
            Err(DetectError::UnknownModel(_))
        ));
    }

    #[test]
    fn sidecar_checks() {
        let text = include_str!("../../models/yolox_nano_416.toml").replace("NCHW", "NHWC");
        assert!(ModelSpec::parse("x", &text).is_err());
        let text = include_str!("../../models/yolox_nano_416.toml")
            .replace("input_width = 416", "input_width = 0");
        assert!(ModelSpec::parse("x", &text).is_err());
    }

    #[test]
    fn checksum_mismatch_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"not a model").unwrap();
        let spec = ModelSpec::load(DEFAULT_MODEL).unwrap();
        assert!(matches!(
            spec.read_verified(&path),
            Err(DetectError::ModelChecksum { .. })
        ));
    }
}
