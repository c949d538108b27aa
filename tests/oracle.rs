//! Independent facts about the test clips, read with GStreamer directly (not through Hydrant's
//! capture code): the frame count of every GOP, and the number of frames a file decodes to.

use std::path::Path;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

fn run_to_eos(pipeline: &gst::Pipeline) {
    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline plays");
    let bus = pipeline.bus().expect("bus");
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(..) => break,
            gst::MessageView::Error(err) => {
                let _ = pipeline.set_state(gst::State::Null);
                panic!("GStreamer error: {} ({:?})", err.error(), err.debug());
            }
            _ => {}
        }
    }
    pipeline
        .set_state(gst::State::Null)
        .expect("pipeline stops");
}

/// Frames per GOP of an H.264 file (MP4, Matroska or Annex-B), in order.
pub fn gop_frame_counts(path: &Path) -> Vec<usize> {
    gst::init().expect("GStreamer");
    let desc = format!(
        "filesrc location=\"{}\" ! parsebin ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&desc)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let c = counts.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let key = sample
                    .buffer()
                    .is_some_and(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT));
                let mut counts = c.lock().expect("lock");
                if key || counts.is_empty() {
                    counts.push(0);
                }
                if let Some(last) = counts.last_mut() {
                    *last += 1;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    run_to_eos(&pipeline);
    counts.lock().expect("lock").clone()
}

/// Frames an MP4 file decodes to with GStreamer's own demuxer and decoder.
pub fn decoded_frames(path: &Path) -> usize {
    gst::init().expect("GStreamer");
    let desc = format!(
        "filesrc location=\"{}\" ! qtdemux ! h264parse ! avdec_h264 ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&desc)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = frames.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    run_to_eos(&pipeline);
    frames.load(std::sync::atomic::Ordering::Relaxed)
}
