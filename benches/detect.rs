//! Detection benchmark: raw model time against the pipeline's end-to-end frame rate.
//!
//! Prints, for each model: ONNX Runtime `Session::run` ms (p50) on a real frame, the whole
//! `Detector::detect` ms (pre/post-processing included), and for a sample clip replayed through
//! the pipeline at 5 fps the decoded frames per second end to end and the share of sampled frames
//! the motion gate skipped. Needs `ORT_DYLIB_PATH` and the assets (`source .hydrant-env`).

use std::time::Instant;

use hydrant::detect::eval::{EvalOptions, evaluate, percentile};
use hydrant::detect::model::asset_dirs;
use hydrant::detect::{Detector, DetectorOptions, Frame, ModelSpec};

const RUNS: usize = 50;

fn main() {
    let Some(assets) = asset_dirs()
        .into_iter()
        .find(|d| d.join("MANIFEST.md").is_file())
    else {
        eprintln!("no assets: run scripts/setup.sh and `source .hydrant-env`");
        std::process::exit(1);
    };
    let frame =
        Frame::from_image_file(&assets.join("images/intel_one-by-one_frame0835_person.png"))
            .expect("person frame");
    let clip = assets.join("videos/intel_one-by-one-person-detection.mp4");
    for model in ["yolox_nano_416", "light_person_detector_192"] {
        for threads in [1, 2] {
            let options = DetectorOptions {
                threads,
                ..DetectorOptions::default()
            };
            let mut det = Detector::load(ModelSpec::load(model).expect("sidecar"), &options)
                .expect("detector");
            let _ = det.detect(&frame).expect("warm-up");
            let (mut run, mut total) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let out = det.detect(&frame).expect("detect");
                run.push(out.run_ms);
                total.push(out.total_ms);
            }
            run.sort_by(f64::total_cmp);
            total.sort_by(f64::total_cmp);
            println!(
                "{model} threads={threads}: onnxruntime run p50 {:.2} ms, detect (pre/post included) p50 {:.2} ms, overhead {:.2} ms",
                percentile(&run, 0.5),
                percentile(&total, 0.5),
                percentile(&total, 0.5) - percentile(&run, 0.5)
            );
        }
        let mut opts = EvalOptions::new(clip.clone());
        opts.model = model.into();
        let started = Instant::now();
        let mut sampled = 0u64;
        let report = evaluate(&opts, |_| sampled += 1).expect("eval");
        let secs = started.elapsed().as_secs_f64();
        let s = &report.summary;
        println!(
            "{model} pipeline on {}: {} frames decoded in {secs:.2} s = {:.0} frames/s end to end; {sampled} sampled at 5 fps, {} inferred, {:.0}% skipped by the motion gate; inference p50 {:.1} ms p99 {:.1} ms",
            clip.file_name().unwrap_or_default().to_string_lossy(),
            s.frames_total,
            s.frames_total as f64 / secs,
            s.frames_inferred,
            100.0 * (sampled - s.frames_inferred) as f64 / sampled.max(1) as f64,
            s.inference_ms_p50,
            s.inference_ms_p99
        );
    }
}
