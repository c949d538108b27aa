//! The per-frame pipeline and `hydrant detect eval`.
//!
//! [`Pipeline`] is what a live consumer will run for each decoded frame: sample to the target
//! rate, brighten dark frames, gate on motion, infer, track, apply the dwell rule. [`evaluate`]
//! replays a clip through it and scores the decisions against labelled person intervals.
//!
//! Precision and recall are **frame-level over sampled frames**: a sampled frame is predicted
//! "person" when the pipeline inferred it and found a person at or above the model's threshold
//! (frames the motion gate skipped count as "no person", so the gate's misses are charged to
//! recall); it is labelled "person" when its presentation time falls inside a labelled range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DetectError;
use super::gate::{self, GateDecision, GateOptions, MotionGate, Thumb};
use super::infer::{Detector, DetectorOptions};
use super::model::{DEFAULT_MODEL, ModelSpec};
use super::source::{Frame, FrameSource, GstFileSource};
use super::track::{EventRule, EventSpan, RuleOptions, Tracker, TrackerOptions};

/// Default sampling rate (Frigate's default detection rate).
pub const SAMPLE_FPS_DEFAULT: f64 = 5.0;
/// Frames an evaluation reads at most (over 9 hours at 30 fps).
pub const EVAL_FRAMES_MAX: u64 = 1_000_000;
/// Largest labels file read.
pub const LABELS_BYTES_MAX: u64 = 1024 * 1024;
/// Labelled ranges accepted.
pub const LABEL_RANGES_MAX: usize = 100_000;

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub sample_fps: f64,
    /// Brighten dark frames before inference.
    pub gain: bool,
    pub gate: GateOptions,
    pub tracker: TrackerOptions,
    pub rule: RuleOptions,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            sample_fps: SAMPLE_FPS_DEFAULT,
            gain: true,
            gate: GateOptions::default(),
            tracker: TrackerOptions::default(),
            rule: RuleOptions::default(),
        }
    }
}

/// What the pipeline did with one sampled frame.
#[derive(Debug, Clone, Serialize)]
pub struct FrameDecision {
    pub index: u64,
    pub pts_ms: u64,
    pub gate: GateDecision,
    pub gain: f32,
    /// Persons found (0 when not inferred).
    pub persons: usize,
    pub max_score: f32,
    pub tracks: usize,
    pub event_open: bool,
    /// True when an event opened at this frame (the moment to alert).
    pub event_started: bool,
    /// Pre-processing, model and decoding time, when inferred.
    pub inference_ms: Option<f64>,
}

/// Sampling, gain, gate, inference, tracking and rules for one stream.
#[derive(Debug)]
pub struct Pipeline {
    detector: Detector,
    options: PipelineOptions,
    gate: MotionGate,
    tracker: Tracker,
    rule: EventRule,
    sampler: Sampler,
}

/// Picks frames at a target rate from a stream of presentation times.
#[derive(Debug, Clone)]
pub struct Sampler {
    period_ms: f64,
    next_ms: f64,
}

impl Sampler {
    pub fn new(fps: f64) -> Self {
        Sampler {
            period_ms: 1000.0 / fps.clamp(0.01, 1000.0),
            next_ms: 0.0,
        }
    }

    /// Whether the frame at `pts_ms` is taken (call once per frame, in order).
    pub fn take(&mut self, pts_ms: u64) -> bool {
        let t = pts_ms as f64;
        // Half a millisecond of slack: timestamps are whole milliseconds.
        if t + 0.5 < self.next_ms {
            return false;
        }
        // Stay on the sampling grid; after a gap, restart from this frame instead of bursting.
        self.next_ms += self.period_ms;
        if self.next_ms <= t {
            self.next_ms = t + self.period_ms;
        }
        true
    }
}

impl Pipeline {
    pub fn new(detector: Detector, options: PipelineOptions) -> Self {
        Pipeline {
            gate: MotionGate::new(options.gate),
            tracker: Tracker::new(options.tracker),
            rule: EventRule::new(options.rule),
            sampler: Sampler::new(options.sample_fps),
            detector,
            options,
        }
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Whether the frame at `pts_ms` is taken at the sampling rate (call once per frame).
    pub fn sample(&mut self, pts_ms: u64) -> bool {
        self.sampler.take(pts_ms)
    }

    /// Runs one sampled frame through the gain, the gate, the model, the tracker and the rule.
    pub fn process(&mut self, mut frame: Frame) -> Result<FrameDecision, DetectError> {
        let mut thumb = Thumb::of(&frame);
        let gain = if self.options.gain {
            gate::gain_for(thumb.mean())
        } else {
            1.0
        };
        gate::apply_gain(&mut thumb.luma, gain);
        let now = frame.pts_ms;
        let tracking = !self.tracker.tracks().is_empty();
        let decision = self.gate.check(thumb, now, tracking);
        let (mut persons, mut max_score, mut inference_ms) = (0, 0.0f32, None);
        if decision.infer() {
            gate::apply_gain(&mut frame.bgr, gain);
            let inf = self.detector.detect(&frame)?;
            persons = inf.detections.len();
            max_score = inf.detections.first().map_or(0.0, |d| d.score);
            inference_ms = Some(inf.total_ms);
            self.tracker.update(&inf.detections, now);
        } else {
            self.tracker.update(&[], now);
        }
        let event_started = self.rule.observe(self.tracker.tracks(), now);
        Ok(FrameDecision {
            index: frame.index,
            pts_ms: now,
            gate: decision,
            gain,
            persons,
            max_score,
            tracks: self.tracker.tracks().len(),
            event_open: self.rule.is_open(),
            event_started,
            inference_ms,
        })
    }

    /// Ends the stream: closes any open event and returns the events.
    pub fn finish(self) -> Vec<EventSpan> {
        self.rule.finish()
    }
}

/// Labelled person intervals: `{"fps": N, "person": [[first_frame, last_frame], ...]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Labels {
    pub fps: f64,
    pub person: Vec<[u64; 2]>,
}

impl Labels {
    pub fn read(path: &Path) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Labels {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > LABELS_BYTES_MAX {
            return Err(bad(format!("larger than {LABELS_BYTES_MAX} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let labels: Labels = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if !(labels.fps > 0.0 && labels.fps.is_finite()) {
            return Err(bad("fps must be positive".into()));
        }
        if labels.person.len() > LABEL_RANGES_MAX || labels.person.iter().any(|[a, b]| a > b) {
            return Err(bad(
                "too many ranges, or a range ending before it starts".into()
            ));
        }
        Ok(labels)
    }

    /// Whether a frame presented at `pts_ms` lies inside a labelled range (frame `k` covers
    /// `[k, k+1) / fps` seconds; half a millisecond of slack absorbs timestamp rounding).
    pub fn person_at(&self, pts_ms: u64) -> bool {
        let t = pts_ms as f64 + 0.5;
        let ms = 1000.0 / self.fps;
        self.person
            .iter()
            .any(|&[a, b]| t >= a as f64 * ms && t < (b + 1) as f64 * ms)
    }
}

/// What `hydrant detect eval` replays and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub clip: PathBuf,
    pub model: String,
    pub labels: Option<PathBuf>,
    pub pipeline: PipelineOptions,
    pub detector: DetectorOptions,
}

impl EvalOptions {
    pub fn new(clip: PathBuf) -> Self {
        EvalOptions {
            clip,
            model: DEFAULT_MODEL.into(),
            labels: None,
            pipeline: PipelineOptions::default(),
            detector: DetectorOptions::default(),
        }
    }
}

/// One event in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub start_s: f64,
    pub end_s: f64,
    pub label: String,
    pub score: f32,
}

/// The `--json` object of the command-line contract, exactly.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub events: Vec<EventSummary>,
    pub frames_total: u64,
    pub frames_inferred: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub inference_ms_p50: f64,
    pub inference_ms_p99: f64,
}

/// The summary plus the counts behind it.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub summary: EvalSummary,
    pub frames_sampled: u64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
}

/// Frame-level confusion counts over sampled frames.
#[derive(Debug, Default, Clone, Copy)]
struct Confusion {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Confusion {
    fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => {}
        }
    }

    /// Precision is 1 when nothing was predicted (no false alarm); recall is 1 when nothing was
    /// there to find.
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Replays a clip through the pipeline, calling `on_frame` for each sampled frame.
pub fn evaluate(
    options: &EvalOptions,
    mut on_frame: impl FnMut(&FrameDecision),
) -> Result<EvalReport, DetectError> {
    let labels = options.labels.as_deref().map(Labels::read).transpose()?;
    let spec = ModelSpec::load(&options.model)?;
    let detector = Detector::load(spec, &options.detector)?;
    let mut source = GstFileSource::open(&options.clip)?;
    let mut pipeline = Pipeline::new(detector, options.pipeline.clone());
    let (mut frames_total, mut frames_sampled) = (0u64, 0u64);
    let mut times_ms = Vec::new();
    let mut confusion = Confusion::default();
    while let Some(frame) = source.next_frame()? {
        frames_total += 1;
        if frames_total > EVAL_FRAMES_MAX {
            return Err(DetectError::Video(format!(
                "more than {EVAL_FRAMES_MAX} frames"
            )));
        }
        if !pipeline.sample(frame.pts_ms) {
            continue;
        }
        frames_sampled += 1;
        let decision = pipeline.process(frame)?;
        times_ms.extend(decision.inference_ms);
        if let Some(l) = &labels {
            confusion.add(decision.persons > 0, l.person_at(decision.pts_ms));
        }
        on_frame(&decision);
    }
    let labels_of = pipeline.detector().spec().labels.clone();
    let events = pipeline
        .finish()
        .into_iter()
        .map(|e| EventSummary {
            start_s: e.start_ms as f64 / 1000.0,
            end_s: e.end_ms as f64 / 1000.0,
            label: labels_of
                .get(e.class)
                .cloned()
                .unwrap_or_else(|| format!("class {}", e.class)),
            score: e.score,
        })
        .collect();
    times_ms.sort_by(f64::total_cmp);
    let summary = EvalSummary {
        events,
        frames_total,
        frames_inferred: times_ms.len() as u64,
        precision: labels.as_ref().map(|_| confusion.precision()),
        recall: labels.as_ref().map(|_| confusion.recall()),
        inference_ms_p50: percentile(&times_ms, 0.50),
        inference_ms_p99: percentile(&times_ms, 0.99),
    };
    Ok(EvalReport {
        summary,
        frames_sampled,
        true_positives: confusion.tp,
        false_positives: confusion.fp,
        false_negatives: confusion.fn_,
    })
}

/// Nearest-rank percentile of sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_takes_every_other_frame_at_half_rate() {
        let mut s = Sampler::new(5.0);
        let taken: Vec<u64> = (0..10u64).map(|i| i * 100).filter(|&t| s.take(t)).collect();
        assert_eq!(taken, vec![0, 200, 400, 600, 800]);
        // 25 fps timestamps (40 ms) at 5 fps: every fifth frame.
        let mut s = Sampler::new(5.0);
        let n = (0..50u64).map(|i| i * 40).filter(|&t| s.take(t)).count();
        assert_eq!(n, 10);
        // A gap restarts the grid instead of bursting.
        assert!(s.take(10_000));
        assert!(!s.take(10_040));
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn labels_cover_frame_times() {
        let l = Labels {
            fps: 10.0,
            person: vec![[65, 190]],
        };
        assert!(!l.person_at(6_400));
        assert!(l.person_at(6_500));
        assert!(l.person_at(19_000));
        assert!(!l.person_at(19_100));
    }

    #[test]
    fn confusion_ratios() {
        let mut c = Confusion::default();
        assert_eq!((c.precision(), c.recall()), (1.0, 1.0));
        c.add(true, true);
        c.add(true, false);
        c.add(false, true);
        c.add(false, true);
        assert_eq!(c.precision(), 0.5);
        assert!((c.recall() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn labels_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json");
        std::fs::write(&path, r#"{"fps": 10, "person": [[5, 2]]}"#).unwrap();
        assert!(Labels::read(&path).is_err());
        std::fs::write(&path, r#"{"fps": 10, "person": [[2, 5]]}"#).unwrap();
        assert_eq!(Labels::read(&path).unwrap().person, vec![[2, 5]]);
    }
}
