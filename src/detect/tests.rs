//! Detection tests on real models, images and clips (ONNX Runtime from `ORT_DYLIB_PATH`,
//! assets from `$HYDRANT_ASSETS`; `scripts/setup.sh` provides both).

use std::path::PathBuf;

use super::eval::{EvalOptions, PipelineOptions, evaluate};
use super::*;

fn assets() -> PathBuf {
    model::asset_dirs()
        .into_iter()
        .find(|d| d.join("MANIFEST.md").is_file())
        .expect("no assets directory: run `scripts/setup.sh` or set HYDRANT_ASSETS")
}

fn detector(model: &str, threshold: Option<f32>) -> Detector {
    let options = DetectorOptions {
        score_threshold: threshold,
        ..DetectorOptions::default()
    };
    Detector::load(ModelSpec::load(model).unwrap(), &options)
        .unwrap_or_else(|e| panic!("cannot load {model}: {e}"))
}

fn image(name: &str) -> Frame {
    Frame::from_image_file(&assets().join("images").join(name)).unwrap()
}

fn near(b: &BoxXyxy, want: [f32; 4], px: f32) -> bool {
    let got = [b.x1, b.y1, b.x2, b.y2];
    got.iter().zip(want).all(|(g, w)| (g - w).abs() <= px)
}

#[test]
fn darknet_person_is_found_and_nothing_else() {
    for model in ["yolox_nano_416", "light_person_detector_192"] {
        let mut det = detector(model, None);
        let out = det.detect(&image("darknet_person.jpg")).unwrap();
        assert_eq!(out.detections.len(), 1, "{model}: {:?}", out.detections);
        let b = out.detections[0].bbox;
        assert!(
            near(&b, [188.0, 97.0, 276.0, 371.0], 12.0),
            "{model}: {b:?}"
        );
    }
}

#[test]
fn empty_room_gives_nothing_and_person_frame_gives_the_box() {
    let mut det = detector("yolox_nano_416", None);
    let empty = det
        .detect(&image("intel_one-by-one_frame0020_empty.png"))
        .unwrap();
    assert!(empty.detections.is_empty(), "{:?}", empty.detections);
    let person = det
        .detect(&image("intel_one-by-one_frame0835_person.png"))
        .unwrap();
    assert_eq!(person.detections.len(), 1, "{:?}", person.detections);
    let b = person.detections[0].bbox;
    assert!(near(&b, [361.0, 34.0, 508.0, 380.0], 12.0), "{b:?}");
}

/// One row of `reference_detections/<model>__<clip>.csv`.
struct Reference {
    frame: u64,
    persons: usize,
    max_score: f32,
}

fn reference(model: &str, clip: &str) -> Vec<Reference> {
    let path = assets()
        .join("reference_detections")
        .join(format!("{model}__{clip}.csv"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Reference {
                frame: f[0].parse().unwrap(),
                persons: f[1].parse().unwrap(),
                max_score: f[2].parse().unwrap(),
            }
        })
        .collect()
}

/// Runs the model (threshold 0.3, no gain, no gate: the reference's settings) on the reference's
/// frames; returns (frames compared, persons-count agreements, max-score agreements).
/// `every` keeps one reference row in that many (test time: each inference is slow in debug).
fn compare_with_reference(
    model: &str,
    clip: &str,
    every: usize,
    score_tol: f32,
) -> (usize, usize, usize) {
    let rows: Vec<Reference> = reference(model, clip).into_iter().step_by(every).collect();
    let mut det = detector(model, Some(0.3));
    let path = assets().join("videos").join(format!("{clip}.mp4"));
    let mut source = GstFileSource::open(&path).unwrap();
    let (mut compared, mut count_ok, mut score_ok) = (0, 0, 0);
    let mut rows = rows.iter().peekable();
    while let Some(frame) = source.next_frame().unwrap() {
        let Some(row) = rows.next_if(|r| r.frame == frame.index) else {
            continue;
        };
        let out = det.detect(&frame).unwrap();
        let max = out.detections.first().map_or(0.0, |d| d.score);
        compared += 1;
        count_ok += usize::from(out.detections.len() == row.persons);
        score_ok += usize::from((max - row.max_score).abs() <= score_tol);
    }
    assert!(
        rows.next().is_none(),
        "{clip}: reference frames beyond the clip"
    );
    eprintln!(
        "{model} on {clip}: {compared} frames, person count equal on {count_ok}, max score within {score_tol} on {score_ok}"
    );
    (compared, count_ok, score_ok)
}

#[test]
fn per_frame_outputs_match_the_reference_detections() {
    // Tolerance: max score within 0.05, person count equal, each on at least 90% of the
    // reference's frames (colour conversion and resize kernels differ from the reference's).
    for (clip, every) in [
        ("beweging_walking-by", 1),
        ("intel_one-by-one-person-detection", 3),
    ] {
        let (n, count_ok, score_ok) = compare_with_reference("yolox_nano_416", clip, every, 0.05);
        assert!(n >= 90, "{clip}: only {n} frames compared");
        assert!(
            count_ok * 10 >= n * 9,
            "{clip}: counts agree on {count_ok}/{n}"
        );
        assert!(
            score_ok * 10 >= n * 9,
            "{clip}: scores agree on {score_ok}/{n}"
        );
    }
}

fn eval_options(clip: &str, labels: Option<PathBuf>) -> EvalOptions {
    let mut o = EvalOptions::new(assets().join("videos").join(format!("{clip}.mp4")));
    o.labels = labels;
    o.pipeline = PipelineOptions {
        sample_fps: 2.0,
        ..PipelineOptions::default()
    };
    o
}

#[test]
fn eval_on_one_by_one_finds_each_visit() {
    // The MANIFEST's person ranges for this clip (10 fps).
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.json");
    std::fs::write(
        &labels,
        r#"{"fps": 10, "person": [[65,190],[230,440],[510,690],[745,860],[935,1185],[1240,1355]]}"#,
    )
    .unwrap();
    let opts = eval_options("intel_one-by-one-person-detection", Some(labels));
    let report = evaluate(&opts, |_| {}).unwrap();
    let s = &report.summary;
    eprintln!("{}", serde_json::to_string(s).unwrap());
    assert_eq!(s.frames_total, 1394);
    let (p, r) = (s.precision.unwrap(), s.recall.unwrap());
    assert!(p >= 0.9, "precision {p}");
    assert!(r >= 0.75, "recall {r}");
    assert_eq!(s.events.len(), 6, "{:?}", s.events);
    assert!(
        s.events
            .iter()
            .all(|e| e.label == "person" && e.end_s > e.start_s)
    );
    assert!(
        s.frames_inferred < report.frames_sampled,
        "the gate skipped nothing"
    );
}

#[test]
fn eval_on_cars_raises_nothing() {
    let report = evaluate(&eval_options("intel_car-detection", None), |_| {}).unwrap();
    let s = &report.summary;
    assert!(s.events.is_empty(), "{:?}", s.events);
    assert_eq!((s.precision, s.recall), (None, None));
    assert!(s.frames_inferred > 0);
    let json = serde_json::to_value(s).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "events",
            "frames_inferred",
            "frames_total",
            "inference_ms_p50",
            "inference_ms_p99",
            "precision",
            "recall"
        ]
    );
}

#[test]
fn missing_model_file_is_a_typed_error() {
    let spec = ModelSpec::load("yolox_nano_416").unwrap();
    let path = spec.locate().unwrap();
    assert!(spec.read_verified(&path).is_ok());
    let bogus = ModelSpec {
        file: "no-such-model.onnx".into(),
        ..spec
    };
    assert!(matches!(
        Detector::load(bogus, &DetectorOptions::default()),
        Err(DetectError::NoModelFile { .. })
    ));
}
