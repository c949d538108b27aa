//! The thin shell around ONNX Runtime: one [`Detector`] owns one session.
//!
//! ONNX Runtime is loaded from `ORT_DYLIB_PATH` at the first [`Detector::load`]; a missing
//! library is a typed error rather than the panic `ort` would raise on first use. Execution
//! providers are chosen by name; one that this ONNX Runtime build lacks is logged and CPU is used.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use super::DetectError;
use super::decode::{Decoder, Detection, nms};
use super::model::ModelSpec;
use super::preprocess::fill_input;
use super::source::Frame;

/// Intra-op threads allowed; more than this is a configuration mistake on the machines we target.
pub const THREADS_MAX: usize = 64;

/// How to run a model.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Intra-op threads (1-2 leaves the rest of a small machine to decoding and storage).
    pub threads: usize,
    /// `cpu`, `cuda`, `tensorrt` or `openvino`.
    pub execution_provider: String,
    /// Overrides the sidecar's score threshold.
    pub score_threshold: Option<f32>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            threads: 1,
            execution_provider: "cpu".into(),
            score_threshold: None,
        }
    }
}

/// The output of one inference.
#[derive(Debug, Clone)]
pub struct Inference {
    /// Person detections at or above the threshold, after NMS, in frame pixels, best first.
    pub detections: Vec<Detection>,
    /// Time in `Session::run` only.
    pub run_ms: f64,
    /// Pre-processing, run and decoding together.
    pub total_ms: f64,
}

/// A loaded model.
pub struct Detector {
    spec: ModelSpec,
    session: Session,
    decoder: Decoder,
    threshold: f32,
    input: Vec<f32>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.spec.name)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Loads ONNX Runtime and the model named by the sidecar, after checking its sha256.
    pub fn load(spec: ModelSpec, options: &DetectorOptions) -> Result<Self, DetectError> {
        let path = spec.locate()?;
        let bytes = spec.read_verified(&path)?;
        let env = load_runtime()?;
        let threads = options.threads.clamp(1, THREADS_MAX);
        let runtime = |e: ort::Error<_>| DetectError::Runtime(e.to_string());
        let builder = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(runtime)?
            .with_intra_threads(threads)
            .map_err(runtime)?;
        let mut builder = with_provider(builder, &options.execution_provider)?;
        let session = builder.commit_from_memory(&bytes)?;
        let decoder = Decoder {
            kind: spec.decoder,
            strides: spec.strides.clone(),
            input_width: spec.input_width,
            input_height: spec.input_height,
        };
        let threshold = options.score_threshold.unwrap_or(spec.score_threshold);
        tracing::info!(model = %spec.name, threads, ep = %options.execution_provider, "detector loaded");
        Ok(Detector {
            spec,
            session,
            decoder,
            threshold,
            input: Vec::new(),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Runs the model on a frame; returns person detections in frame pixels.
    pub fn detect(&mut self, frame: &Frame) -> Result<Inference, DetectError> {
        let started = Instant::now();
        let lb = fill_input(frame, &self.spec, &mut self.input);
        let (w, h) = (
            self.spec.input_width as usize,
            self.spec.input_height as usize,
        );
        let tensor = Tensor::from_array(([1usize, 3, h, w], std::mem::take(&mut self.input)))?;
        let run_started = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs![self.spec.input_name.as_str() => tensor])?;
        let run_ms = run_started.elapsed().as_secs_f64() * 1000.0;
        let output = outputs.get(self.spec.output_name.as_str()).ok_or_else(|| {
            DetectError::OutputShape {
                name: self.spec.output_name.clone(),
                shape: vec![],
                expected: "an output of this name".into(),
            }
        })?;
        let (shape, data) = output.try_extract_tensor::<f32>()?;
        let candidates =
            self.decoder
                .decode(shape, data, &[self.spec.person_class], self.threshold)?;
        let mut detections = nms(candidates, self.spec.nms_iou);
        for d in &mut detections {
            d.bbox = lb.unmap(d.bbox, frame.width, frame.height);
        }
        Ok(Inference {
            detections,
            run_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

/// ONNX Runtime allows one environment per process; sessions share it.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads the ONNX Runtime library named by `ORT_DYLIB_PATH` and its environment (once per
/// process).
fn load_runtime() -> Result<Environment, DetectError> {
    let mut slot = ENVIRONMENT
        .lock()
        .map_err(|_| DetectError::Runtime("environment lock poisoned".into()))?;
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or(DetectError::NoRuntime(None))?;
    if !path.is_file() {
        return Err(DetectError::NoRuntime(Some(path)));
    }
    let env = ort::init_from(&path)
        .map_err(|e| DetectError::Runtime(format!("{}: {e}", path.display())))?
        .with_name("hydrant")
        .build()?;
    *slot = Some(env.clone());
    Ok(env)
}

fn with_provider(
    builder: ort::session::builder::SessionBuilder,
    name: &str,
) -> Result<ort::session::builder::SessionBuilder, DetectError> {
    // The build enables no accelerator features of `ort` (they are per-platform builds); any
    // provider other than CPU is reported and CPU is used, so a config written for a Jetson still
    // runs elsewhere.
    if !name.eq_ignore_ascii_case("cpu") && !name.is_empty() {
        tracing::warn!(
            provider = name,
            "execution provider not available in this build; using CPU"
        );
    }
    Ok(builder)
}
