//! Capture against real GStreamer pipelines and the sample clips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::*;
use crate::media::{MediaFragment, mp4};

const ORIGIN: UnixMillis = UnixMillis(1_700_000_000_000);
const FILE_CAPTURE_TIMEOUT_MS: u64 = 120_000;

/// The assets directory: `$HYDRANT_ASSETS`, else `../shared/assets` beside the crate.
fn assets_dir() -> Option<PathBuf> {
    let from_env = std::env::var_os("HYDRANT_ASSETS").map(PathBuf::from);
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/assets");
    from_env.into_iter().chain([beside]).find(|p| p.is_dir())
}

/// A sample clip. Missing assets fail the test: `make test` fetches them.
fn video(name: &str) -> Option<PathBuf> {
    let Some(dir) = assets_dir() else {
        panic!("no assets directory: run `make test` (it fetches them) or set HYDRANT_ASSETS");
    };
    let path = dir.join("videos").join(name);
    assert!(path.is_file(), "asset {} is missing", path.display());
    Some(path)
}

/// Runs a capture until end of stream, an error, `fragments_max` fragments or the timeout.
fn collect(
    config: CaptureConfig,
    fragments_max: usize,
    timeout_ms: u64,
) -> (Vec<CapturedFragment>, Option<CaptureEvent>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (capture, mut rx) = Capture::start(config, ORIGIN).expect("capture starts");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut fragments = Vec::new();
    let end = runtime.block_on(async {
        while fragments.len() < fragments_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(CaptureEvent::Fragment(f))) => fragments.push(f),
                Ok(Some(other)) => return Some(other),
                Ok(None) | Err(_) => return None,
            }
        }
        None
    });
    capture.stop();
    (fragments, end)
}

fn file_capture(path: PathBuf) -> (Vec<CapturedFragment>, Option<CaptureEvent>) {
    let config = CaptureConfig::new(SourceSpec::File(path), Pace::Fast);
    collect(config, usize::MAX, FILE_CAPTURE_TIMEOUT_MS)
}

fn assert_one_fragment_per_gop(name: &str) {
    let Some(path) = video(name) else { return };
    let (fragments, end) = file_capture(path);
    assert!(
        matches!(end, Some(CaptureEvent::EndOfStream)),
        "{name}: ended with {end:?}"
    );
    assert_eq!(fragments.len(), 70, "{name}: one fragment per 2 s GOP");
    let samples: usize = fragments.iter().map(|f| f.media.samples.len()).sum();
    assert_eq!(samples, 1394);
    assert!(fragments.iter().all(|f| f.media.starts_with_keyframe()));
    assert!(
        fragments
            .iter()
            .all(|f| (f.media.width, f.media.height) == (768, 432))
    );
    assert_eq!(fragments[0].producer_timestamp, ORIGIN);
    for pair in fragments.windows(2) {
        let step = pair[1].producer_timestamp.0 - pair[0].producer_timestamp.0;
        assert!(
            (1_990..=2_010).contains(&step),
            "{name}: producer timestamps step {step} ms"
        );
        assert!((1_990..=2_010).contains(&pair[0].duration_ms));
    }
    let payload = fragments[3].media.encode();
    assert_eq!(
        MediaFragment::decode(&payload).as_ref(),
        Ok(&fragments[3].media)
    );
}

#[test]
fn mp4_file_gives_one_fragment_per_gop() {
    assert_one_fragment_per_gop("intel_one-by-one-person-detection.mp4");
}

#[test]
fn matroska_file_gives_one_fragment_per_gop() {
    assert_one_fragment_per_gop("intel_one-by-one-person-detection.mkv");
}

#[test]
fn raw_annexb_file_gets_synthesized_timing() {
    let Some(path) = video("beweging_walking-by.h264") else {
        return;
    };
    let (fragments, end) = file_capture(path);
    assert!(
        matches!(end, Some(CaptureEvent::EndOfStream)),
        "ended with {end:?}"
    );
    let samples: Vec<_> = fragments.iter().flat_map(|f| &f.media.samples).collect();
    assert_eq!(samples.len(), 463);
    assert!(fragments.iter().all(|f| f.media.starts_with_keyframe()));
    let frame_us = 1_000_000 / i64::from(DEFAULT_FRAME_RATE_FPS);
    for (index, sample) in samples.iter().enumerate() {
        assert_eq!(
            sample.pts_us,
            ORIGIN.0 as i64 * 1000 + index as i64 * frame_us
        );
        assert_eq!(sample.duration_us as i64, frame_us);
    }
    assert!(
        fragments
            .windows(2)
            .all(|p| p[0].producer_timestamp < p[1].producer_timestamp)
    );
}

#[test]
fn live_test_source_gives_keyframe_fragments() {
    let config = CaptureConfig::new(SourceSpec::Test, Pace::RealTime);
    let (fragments, end) = collect(config, 2, 10_000);
    assert!(end.is_none(), "live source ended with {end:?}");
    assert_eq!(fragments.len(), 2, "two 2 s fragments within 10 s");
    for fragment in &fragments {
        assert!(fragment.media.starts_with_keyframe());
        assert_eq!((fragment.media.width, fragment.media.height), (640, 360));
        assert!(
            (1_900..=2_100).contains(&fragment.duration_ms),
            "{}",
            fragment.duration_ms
        );
        assert!(fragment.producer_timestamp >= ORIGIN);
    }
    assert!(fragments[0].producer_timestamp < fragments[1].producer_timestamp);
}

#[test]
fn start_refuses_what_it_cannot_capture() {
    let refused = |spec: &str| {
        let config = CaptureConfig::new(spec.parse().unwrap(), Pace::RealTime);
        Capture::start(config, ORIGIN).map(|_| ()).unwrap_err()
    };
    assert!(matches!(
        refused("v4l2:/dev/no-such-video9"),
        CaptureError::DeviceNotFound(_)
    ));
    assert!(matches!(
        refused("rtsp://127.0.0.1:1/cam#codec=h265"),
        CaptureError::CodecUnsupported(_)
    ));
    // No Jetson here: the error names the missing element and the package that has it.
    if gst::ElementFactory::find("nvarguscamerasrc").is_none() {
        match refused("jetson") {
            CaptureError::ElementMissing { element, message } => {
                assert_eq!(element, "nvarguscamerasrc");
                assert!(message.contains("nvidia-l4t-gstreamer"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    let missing = CaptureConfig::new(SourceSpec::File("no/such/clip.mp4".into()), Pace::Fast);
    assert!(matches!(
        Capture::start(missing, ORIGIN),
        Err(CaptureError::FileNotFound(_))
    ));
    let mut zero_channel = CaptureConfig::new(SourceSpec::Test, Pace::Fast);
    zero_channel.channel_fragments_max = 0;
    assert!(matches!(
        Capture::start(zero_channel, ORIGIN),
        Err(CaptureError::InvalidConfig(_))
    ));
}

/// Decodes an MP4 file with GStreamer; returns the number of decoded frames.
fn decode_frames(path: &Path) -> Result<usize, String> {
    gst::init().map_err(|e| e.to_string())?;
    let description = format!(
        "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! fakesink name=sink sync=false signal-handoffs=true",
        path.display()
    );
    let pipeline = gst::parse::launch(&description).map_err(|e| e.to_string())?;
    let pipeline = pipeline
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let sink = pipeline.by_name("sink").ok_or("no sink")?;
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = frames.clone();
    sink.connect("handoff", false, move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        None
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let timeout = gst::ClockTime::from_seconds(120);
    let result =
        match bus.timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error]) {
            Some(message) => match message.view() {
                gst::MessageView::Eos(_) => Ok(frames.load(std::sync::atomic::Ordering::SeqCst)),
                gst::MessageView::Error(err) => Err(err.error().to_string()),
                _ => Err("unexpected message".to_owned()),
            },
            None => Err("decoding timed out".to_owned()),
        };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Duration in seconds as ffprobe reads it, or `None` when ffprobe is not installed.
fn ffprobe_duration_s(path: &Path) -> Option<f64> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[test]
fn captured_fragments_mux_into_a_decodable_mp4() {
    let Some(path) = video("intel_one-by-one-person-detection.mp4") else {
        return;
    };
    let (fragments, _) = file_capture(path);
    let media: Vec<MediaFragment> = fragments.into_iter().map(|f| f.media).collect();
    let samples: usize = media.iter().map(|m| m.samples.len()).sum();
    let file = mp4::write_mp4(&media).expect("mux");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    std::fs::write(&out, &file).unwrap();
    assert_eq!(decode_frames(&out), Ok(samples));
    match ffprobe_duration_s(&out) {
        Some(duration) => assert!(
            (duration - 139.4).abs() < 0.05,
            "ffprobe duration {duration}"
        ),
        None => panic!("ffprobe is not installed: `make test` installs it (Debian package ffmpeg)"),
    }
    // A part of the clip muxes on its own too (fragments from the middle).
    let part = mp4::write_mp4(&media[10..13]).expect("mux part");
    std::fs::write(&out, &part).unwrap();
    let part_samples = media[10..13].iter().map(|m| m.samples.len()).sum();
    assert_eq!(decode_frames(&out), Ok(part_samples));
}

#[test]
fn stop_returns_while_the_consumer_is_not_reading() {
    let Some(path) = video("intel_one-by-one-person-detection.mp4") else {
        return;
    };
    let mut config = CaptureConfig::new(SourceSpec::File(path), Pace::Fast);
    config.channel_fragments_max = 1;
    let (capture, mut rx) = Capture::start(config, ORIGIN).expect("capture starts");
    // Let the pipeline fill the channel and block on it.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    capture.stop();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(rx.try_recv(), Ok(CaptureEvent::Fragment(_))),
        "the one queued fragment"
    );
    assert!(
        rx.try_recv().is_err(),
        "nothing more than the channel holds"
    );
}

#[test]
fn a_file_without_video_reports_a_pipeline_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.mp4");
    std::fs::write(&path, b"this is not a video file at all, only some text").unwrap();
    let config = CaptureConfig::new(SourceSpec::File(path), Pace::Fast);
    let (fragments, end) = collect(config, usize::MAX, 10_000);
    assert!(fragments.is_empty());
    assert!(
        matches!(
            end,
            Some(CaptureEvent::Error(CaptureError::Pipeline { .. }))
        ),
        "{end:?}"
    );
}

#[test]
fn every_camera_in_the_board_profiles_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut sources = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("agent") && name.ends_with(".toml")) {
            continue;
        }
        let config: crate::config::AgentConfig = crate::config::load(&path).expect("loads");
        for camera in config.cameras {
            let spec = camera.source.parse::<SourceSpec>();
            assert!(spec.is_ok(), "{name}: {}: {spec:?}", camera.source);
            sources += 1;
        }
    }
    assert!(sources >= 7, "every board profile has a camera ({sources})");
}
