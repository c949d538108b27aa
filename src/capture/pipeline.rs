//! The GStreamer shell: builds the pipeline, turns appsink samples into media samples for the
//! [`Fragmenter`], and watches the bus.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use super::{
    CaptureConfig, CaptureError, CaptureEvent, CapturedFragment, Fragmenter, Pace, SourceSpec,
    StreamFormat,
};
use crate::fragment::UnixMillis;
use crate::media::{Codec, PAYLOAD_HEADER_BYTES, Sample, h264};

/// Buffers the appsink may hold before it blocks the streaming thread.
pub const APPSINK_BUFFERS_MAX: u32 = 8;
/// Frame rate assumed for streams without timestamps or frame rate (raw Annex-B files).
pub const DEFAULT_FRAME_RATE_FPS: u32 = 25;
/// How often the bus thread looks at the stop flag.
const BUS_POLL_MS: u64 = 100;
/// How long a sender sleeps between attempts while the event channel is full.
const SEND_RETRY_MS: u64 = 5;

/// A running capture. Dropping it (or [`Capture::stop`]) sets the pipeline to `Null`.
#[derive(Debug)]
pub struct Capture {
    pipeline: gst::Pipeline,
    stop: Arc<AtomicBool>,
    bus_thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Builds and starts the pipeline. For a file source, producer timestamps are `origin + pts`.
    /// For a live source (test), `origin` is the wall clock at start and pts is running time.
    pub fn start(
        config: CaptureConfig,
        origin: UnixMillis,
    ) -> Result<(Capture, mpsc::Receiver<CaptureEvent>), CaptureError> {
        validate(&config)?;
        let live = match &config.source {
            SourceSpec::Test => true,
            SourceSpec::File(path) if path.is_file() => false,
            SourceSpec::File(path) => return Err(CaptureError::FileNotFound(path.clone())),
            other => return Err(CaptureError::SourceUnsupported(other.to_string())),
        };
        gst::init().map_err(|e| CaptureError::GstInit(e.to_string()))?;
        let (pipeline, appsink) = build_pipeline(&config)?;
        let (tx, rx) = mpsc::channel(config.channel_fragments_max);
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(SinkState {
            fragmenter: Fragmenter::new(config.limits()),
            caps: None,
            timing: Timing::new(origin, live),
            tx: tx.clone(),
            stop: stop.clone(),
        }));
        install_callbacks(&appsink, state.clone());
        let bus = pipeline
            .bus()
            .ok_or(CaptureError::StateChange("pipeline has no bus".into()))?;
        let bus_stop = stop.clone();
        let bus_thread = std::thread::spawn(move || watch_bus(bus, state, tx, bus_stop));
        // From here on, dropping `capture` stops the bus thread and tears the pipeline down.
        let capture = Capture {
            pipeline,
            stop,
            bus_thread: Some(bus_thread),
        };
        capture
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| CaptureError::StateChange(e.to_string()))?;
        tracing::info!(source = %config.source, pace = ?config.pace, "Capture started.");
        Ok((capture, rx))
    }

    /// Stops the pipeline; no further events are sent.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The streaming thread gives up waiting for channel room once `stop` is set, so this
        // state change cannot deadlock on a consumer that stopped reading.
        if let Err(error) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!(%error, "Capture pipeline did not stop cleanly.");
        }
        if let Some(thread) = self.bus_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The whole pipeline for the configured source, ending in the returned appsink.
fn build_pipeline(
    config: &CaptureConfig,
) -> Result<(gst::Pipeline, gst_app::AppSink), CaptureError> {
    let pipeline = gst::Pipeline::new();
    let appsink = build_appsink(config.pace);
    match &config.source {
        SourceSpec::File(path) => add_file_source(&pipeline, path, appsink.upcast_ref())?,
        _ => add_test_source(&pipeline, appsink.upcast_ref())?,
    }
    Ok((pipeline, appsink))
}

fn validate(config: &CaptureConfig) -> Result<(), CaptureError> {
    if config.fragment_target_ms == 0 {
        return Err(CaptureError::InvalidConfig(
            "fragment_target_ms must be above 0",
        ));
    }
    if config.fragment_duration_ms_max < config.fragment_target_ms {
        return Err(CaptureError::InvalidConfig(
            "fragment_duration_ms_max must be at least fragment_target_ms",
        ));
    }
    if config.fragment_bytes_max <= PAYLOAD_HEADER_BYTES {
        return Err(CaptureError::InvalidConfig(
            "fragment_bytes_max is too small for any sample",
        ));
    }
    if config.channel_fragments_max == 0 {
        return Err(CaptureError::InvalidConfig(
            "channel_fragments_max must be above 0",
        ));
    }
    Ok(())
}

fn missing(element: &'static str) -> impl FnOnce(gst::glib::BoolError) -> CaptureError {
    move |e| CaptureError::ElementMissing {
        element,
        message: e.to_string(),
    }
}

fn make<'a>(factory: &'static str) -> gst::element_factory::ElementBuilder<'a> {
    gst::ElementFactory::make(factory)
}

/// The end of every pipeline: AVC access units, one buffer per frame.
fn avc_caps_filter() -> Result<gst::Element, CaptureError> {
    let caps = gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .build();
    make("capsfilter")
        .property("caps", caps)
        .build()
        .map_err(missing("capsfilter"))
}

/// `sync=true` replays at the clip's pace; `max-buffers` bounds what waits in the sink.
fn build_appsink(pace: Pace) -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .sync(pace == Pace::RealTime)
        .max_buffers(APPSINK_BUFFERS_MAX)
        .drop(false)
        .build()
}

/// `videotestsrc ! video/x-raw,640x360@25 ! x264enc ! h264parse ! avc/au ! appsink`.
fn add_test_source(pipeline: &gst::Pipeline, sink: &gst::Element) -> Result<(), CaptureError> {
    let src = make("videotestsrc")
        .property("is-live", true)
        .property_from_str("pattern", "ball")
        .build()
        .map_err(missing("videotestsrc"))?;
    let raw_caps = gst::Caps::builder("video/x-raw")
        .field("width", 640i32)
        .field("height", 360i32)
        .field("framerate", gst::Fraction::new(25, 1))
        .build();
    let raw_filter = make("capsfilter")
        .property("caps", raw_caps)
        .build()
        .map_err(missing("capsfilter"))?;
    let encoder = make("x264enc")
        .property_from_str("tune", "zerolatency")
        .property("key-int-max", 50u32)
        .property("bitrate", 1000u32)
        .property_from_str("speed-preset", "ultrafast")
        .build()
        .map_err(missing("x264enc"))?;
    let parse = h264parse()?;
    let elements = [
        &src,
        &raw_filter,
        &encoder,
        &parse,
        &avc_caps_filter()?,
        sink,
    ];
    pipeline
        .add_many(elements)
        .map_err(|e| CaptureError::Link(e.to_string()))?;
    gst::Element::link_many(elements).map_err(|e| CaptureError::Link(e.to_string()))
}

/// `h264parse config-interval=-1`: SPS/PPS repeated at every IDR.
fn h264parse() -> Result<gst::Element, CaptureError> {
    make("h264parse")
        .property("config-interval", -1i32)
        .build()
        .map_err(missing("h264parse"))
}

/// `filesrc ! parsebin ! h264parse ! avc/au ! appsink`: parsebin finds the container (MP4,
/// Matroska) or the raw Annex-B stream; its video pad is linked when it appears.
fn add_file_source(
    pipeline: &gst::Pipeline,
    path: &Path,
    sink: &gst::Element,
) -> Result<(), CaptureError> {
    let src = make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(missing("filesrc"))?;
    let parsebin = make("parsebin").build().map_err(missing("parsebin"))?;
    let parse = h264parse()?;
    let caps_filter = avc_caps_filter()?;
    let link = |e: gst::glib::BoolError| CaptureError::Link(e.to_string());
    pipeline
        .add_many([&src, &parsebin, &parse, &caps_filter, sink])
        .map_err(link)?;
    src.link(&parsebin)
        .map_err(|e| CaptureError::Link(e.to_string()))?;
    gst::Element::link_many([&parse, &caps_filter, sink]).map_err(link)?;
    let parse_weak = parse.downgrade();
    parsebin.connect_pad_added(move |_, pad| {
        if let Some(parse) = parse_weak.upgrade() {
            link_h264_pad(pad, &parse);
        }
    });
    Ok(())
}

/// Links the first H.264 pad of parsebin; other streams (audio, a second video) stay unlinked.
fn link_h264_pad(pad: &gst::Pad, parse: &gst::Element) {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    let is_h264 = caps
        .structure(0)
        .is_some_and(|s| s.name() == "video/x-h264");
    let Some(sink_pad) = parse.static_pad("sink") else {
        return;
    };
    if !is_h264 || sink_pad.is_linked() {
        tracing::debug!(caps = %caps, "Capture ignores a stream it does not carry.");
        return;
    }
    if let Err(error) = pad.link(&sink_pad) {
        tracing::warn!(%error, "Capture could not link the H.264 stream.");
    }
}

/// What the appsink callback and the bus thread share.
struct SinkState {
    fragmenter: Fragmenter,
    caps: Option<gst::Caps>,
    timing: Timing,
    tx: mpsc::Sender<CaptureEvent>,
    stop: Arc<AtomicBool>,
}

fn lock(state: &Mutex<SinkState>) -> MutexGuard<'_, SinkState> {
    // A panic elsewhere never leaves the fragmenter half-updated in a way that matters more
    // than losing the stream, so a poisoned lock is used as is.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn install_callbacks(appsink: &gst_app::AppSink, state: Arc<Mutex<SinkState>>) {
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| handle_sample(sink, &state))
            .build(),
    );
}

fn handle_sample(
    sink: &gst_app::AppSink,
    state: &Mutex<SinkState>,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
    let mut state = lock(state);
    if let Some(caps) = sample.caps() {
        if state.caps.as_ref().map(|c| c.as_ref()) != Some(caps) {
            let flushed = state.apply_caps(caps)?;
            state.send_fragment(flushed)?;
        }
    }
    let media_sample = state.timing.sample(&sample)?;
    let closed = state.fragmenter.push(media_sample);
    state.send_fragment(closed)?;
    Ok(gst::FlowSuccess::Ok)
}

impl SinkState {
    fn apply_caps(
        &mut self,
        caps: &gst::CapsRef,
    ) -> Result<Option<crate::media::MediaFragment>, gst::FlowError> {
        let (format, frame_rate) = format_from_caps(caps).map_err(|error| {
            tracing::error!(%error, %caps, "Capture cannot use the stream's caps.");
            gst::FlowError::NotNegotiated
        })?;
        if let Some((num, den)) = frame_rate {
            self.timing.frame_duration_ns = 1_000_000_000u64 * den / num;
        }
        self.caps = Some(caps.to_owned());
        Ok(self.fragmenter.set_format(format))
    }

    fn send_fragment(
        &self,
        fragment: Option<crate::media::MediaFragment>,
    ) -> Result<(), gst::FlowError> {
        let Some(media) = fragment else { return Ok(()) };
        let event = CaptureEvent::Fragment(CapturedFragment::new(media));
        if send_event(&self.tx, event, &self.stop) {
            Ok(())
        } else {
            Err(gst::FlowError::Flushing)
        }
    }
}

/// The stream format and frame rate (numerator, denominator) from `video/x-h264` caps.
fn format_from_caps(caps: &gst::CapsRef) -> Result<(StreamFormat, Option<(u64, u64)>), String> {
    let s = caps.structure(0).ok_or("caps are empty")?;
    let config = s
        .get::<gst::Buffer>("codec_data")
        .map_err(|e| e.to_string())?;
    let config = config.map_readable().map_err(|e| e.to_string())?;
    let codec_config = Bytes::copy_from_slice(config.as_slice());
    let (width, height) = match (s.get::<i32>("width"), s.get::<i32>("height")) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w as u32, h as u32),
        _ => {
            let size = h264::picture_size_from_avcc(&codec_config).map_err(|e| e.to_string())?;
            (size.width, size.height)
        }
    };
    let frame_rate = s
        .get::<gst::Fraction>("framerate")
        .ok()
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map(|f| (f.numer() as u64, f.denom() as u64));
    let format = StreamFormat {
        codec: Codec::H264,
        width,
        height,
        codec_config,
    };
    Ok((format, frame_rate))
}

/// Turns buffer times into producer-clock microseconds.
struct Timing {
    origin_us: i64,
    live: bool,
    /// Frames seen so far, for streams without timestamps.
    frame_index: u64,
    frame_duration_ns: u64,
}

impl Timing {
    fn new(origin: UnixMillis, live: bool) -> Self {
        Self {
            origin_us: i64::try_from(origin.0).unwrap_or(i64::MAX / 1000) * 1000,
            live,
            frame_index: 0,
            frame_duration_ns: 1_000_000_000 / u64::from(DEFAULT_FRAME_RATE_FPS),
        }
    }

    fn sample(&mut self, sample: &gst::Sample) -> Result<Sample, gst::FlowError> {
        let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
        let (pts_ns, dts_ns) = self.times_ns(sample, buffer);
        let duration_ns = buffer
            .duration()
            .map_or(self.frame_duration_ns, |d| d.nseconds());
        self.frame_index += 1;
        let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
        Ok(Sample {
            pts_us: self.origin_us.saturating_add((pts_ns / 1000) as i64),
            dts_us: self.origin_us.saturating_add((dts_ns / 1000) as i64),
            duration_us: u32::try_from(duration_ns / 1000).unwrap_or(u32::MAX),
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            data: Bytes::copy_from_slice(map.as_slice()),
        })
    }

    /// (pts, dts) in nanoseconds: buffer times for a file, running time for a live source, and
    /// `frame_index * frame duration` when the buffer has no presentation time (raw Annex-B).
    fn times_ns(&self, sample: &gst::Sample, buffer: &gst::BufferRef) -> (u64, u64) {
        let Some(pts) = buffer.pts() else {
            let t = self.frame_index.saturating_mul(self.frame_duration_ns);
            return (t, t);
        };
        let dts = buffer.dts().unwrap_or(pts);
        if !self.live {
            return (pts.nseconds(), dts.nseconds());
        }
        let segment = sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>());
        let running = |t: gst::ClockTime| {
            segment
                .and_then(|s| s.to_running_time(t))
                .unwrap_or(t)
                .nseconds()
        };
        (running(pts), running(dts))
    }
}

/// Sends `event`, waiting while the channel is full; gives up (false) when the receiver is
/// gone or the capture is stopping. Polling rather than `blocking_send` keeps stop reliable.
fn send_event(tx: &mpsc::Sender<CaptureEvent>, event: CaptureEvent, stop: &AtomicBool) -> bool {
    let mut event = event;
    loop {
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => event = back,
        }
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(SEND_RETRY_MS));
    }
}

/// Watches errors and end of stream apart from the data path. At end of stream every sample
/// has passed the appsink, so the last partial fragment is flushed before `EndOfStream`.
fn watch_bus(
    bus: gst::Bus,
    state: Arc<Mutex<SinkState>>,
    tx: mpsc::Sender<CaptureEvent>,
    stop: Arc<AtomicBool>,
) {
    let types = [gst::MessageType::Eos, gst::MessageType::Error];
    while !stop.load(Ordering::SeqCst) {
        let timeout = gst::ClockTime::from_mseconds(BUS_POLL_MS);
        let Some(message) = bus.timed_pop_filtered(timeout, &types) else {
            continue;
        };
        let event = match message.view() {
            gst::MessageView::Eos(_) => {
                let last = lock(&state).fragmenter.finish();
                if let Some(media) = last {
                    let fragment = CaptureEvent::Fragment(CapturedFragment::new(media));
                    if !send_event(&tx, fragment, &stop) {
                        return;
                    }
                }
                let stats = lock(&state).fragmenter.stats();
                tracing::info!(?stats, "Capture reached the end of the stream.");
                CaptureEvent::EndOfStream
            }
            gst::MessageView::Error(err) => {
                let source_element = err
                    .src()
                    .map_or_else(|| "pipeline".to_owned(), |s| s.path_string().to_string());
                let message = match err.debug() {
                    Some(debug) => format!("{} ({debug})", err.error()),
                    None => err.error().to_string(),
                };
                tracing::error!(source = %source_element, %message, "Capture pipeline failed.");
                CaptureEvent::Error(CaptureError::Pipeline {
                    source_element,
                    message,
                })
            }
            _ => continue,
        };
        send_event(&tx, event, &stop);
        return;
    }
}
