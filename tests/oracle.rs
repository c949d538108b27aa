//! Independent facts about the test clips, read with GStreamer directly (not through Hydrant's
//! capture code): the frame count of every GOP, and the number of frames a file decodes to.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// Runs `description` (which ends in an appsink named `sink`) to end of stream, handing every
/// sample to `on_sample`.
fn run_appsink(description: &str, mut on_sample: impl FnMut(&gst::Sample) + Send + 'static) {
    gst::init().expect("GStreamer");
    let pipeline = gst::parse::launch(description)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                on_sample(&sample);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
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
    let counts = Arc::new(Mutex::new(Vec::<usize>::new()));
    let c = counts.clone();
    run_appsink(
        &format!(
            "filesrc location=\"{}\" ! parsebin ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink sync=false",
            path.display()
        ),
        move |sample| {
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
        },
    );
    counts.lock().expect("lock").clone()
}

/// Frames an MP4 file decodes to with GStreamer's own demuxer and decoder.
pub fn decoded_frames(path: &Path) -> usize {
    let frames = Arc::new(Mutex::new(0usize));
    let f = frames.clone();
    run_appsink(
        &format!(
            "filesrc location=\"{}\" ! qtdemux ! h264parse ! avdec_h264 ! appsink name=sink sync=false",
            path.display()
        ),
        move |_| *f.lock().expect("lock") += 1,
    );
    *frames.lock().expect("lock")
}
