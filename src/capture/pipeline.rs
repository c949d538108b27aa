//! The GStreamer shell: builds the pipeline, turns appsink samples into media samples for the
//! [`Fragmenter`], and watches the bus.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use super::chain::{self, Chain, Stage};
use super::source::{LibcameraEncoder, V4l2Format, V4l2Source, VideoCodec};
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
/// A live source that delivers no sample for this long has failed (the agent restarts it).
pub const LIVE_STALL_MS_MAX: u64 = 10_000;

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
        let live = config.source.is_live();
        if let SourceSpec::File(path) = &config.source {
            if !path.is_file() {
                return Err(CaptureError::FileNotFound(path.clone()));
            }
        }
        init()?;
        let (tx, rx) = mpsc::channel(config.channel_fragments_max);
        let stop = Arc::new(AtomicBool::new(false));
        let (pipeline, appsink) = build_pipeline(&config, &tx, &stop)?;
        let state = Arc::new(Mutex::new(SinkState {
            fragmenter: Fragmenter::new(config.limits()),
            caps: None,
            timing: Timing::new(origin, live),
            tx: tx.clone(),
            stop: stop.clone(),
            last_sample: Instant::now(),
        }));
        install_callbacks(&appsink, state.clone());
        let bus = pipeline
            .bus()
            .ok_or(CaptureError::StateChange("pipeline has no bus".into()))?;
        let watch = BusWatch {
            state,
            tx,
            stop: stop.clone(),
            stall_ms_max: live.then_some(LIVE_STALL_MS_MAX),
        };
        let bus_thread = std::thread::spawn(move || watch.run(bus));
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
    tx: &mpsc::Sender<CaptureEvent>,
    stop: &Arc<AtomicBool>,
) -> Result<(gst::Pipeline, gst_app::AppSink), CaptureError> {
    let pipeline = gst::Pipeline::new();
    let appsink = build_appsink(config.pace);
    match &config.source {
        SourceSpec::File(path) => add_file_source(&pipeline, path, appsink.upcast_ref())?,
        source => {
            let chain = resolve_chain(source)?;
            let first = add_chain(&pipeline, &chain, appsink.upcast_ref())?;
            if let SourceSpec::Rtsp(_) = source {
                refuse_non_h264_rtp(&first, tx.clone(), stop.clone());
            }
        }
    }
    Ok((pipeline, appsink))
}

/// Initialises GStreamer (once per process; later calls are cheap).
fn init() -> Result<(), CaptureError> {
    gst::init().map_err(|e| CaptureError::GstInit(e.to_string()))
}

/// The chain for a live source, with auto choices made (V4L2 format, libcamera encoder) and
/// every element checked present. Fails early and typed: missing device, element or codec.
pub(crate) fn resolve_chain(source: &SourceSpec) -> Result<Chain, CaptureError> {
    init()?;
    let chain = match source {
        SourceSpec::Test => chain::test_chain(),
        SourceSpec::Rtsp(rtsp) if rtsp.codec == VideoCodec::H265 => {
            return Err(CaptureError::CodecUnsupported("H.265".into()));
        }
        SourceSpec::Rtsp(rtsp) => chain::rtsp_chain(rtsp),
        SourceSpec::V4l2(v4l2) => {
            if !v4l2.device.exists() {
                return Err(CaptureError::DeviceNotFound(v4l2.device.clone()));
            }
            chain::v4l2_chain(v4l2, v4l2_format(v4l2)?)
        }
        SourceSpec::Libcamera(cam) => chain::libcamera_chain(cam, libcamera_encoder(cam.encoder)),
        SourceSpec::Jetson(jetson) => chain::jetson_chain(jetson),
        SourceSpec::File(_) => return Err(CaptureError::SourceUnsupported(source.to_string())),
    };
    chain.check_elements()?;
    Ok(chain)
}

/// The whole capture in `gst-launch-1.0` syntax up to the appsink (which it leaves out), so
/// that the same capture can be run bare, e.g. `... ! fakesink`.
pub fn launch_description(source: &SourceSpec) -> Result<String, CaptureError> {
    let head = match source {
        SourceSpec::File(path) => format!(
            "filesrc location=\"{}\" ! parsebin",
            path.to_string_lossy().replace('"', "\\\"")
        ),
        live => resolve_chain(live)?.to_launch(),
    };
    Ok(format!(
        "{head} ! h264parse config-interval=-1 ! video/x-h264,stream-format=avc,alignment=au"
    ))
}

/// `Auto` probes the device's caps: native H.264 first, then MJPEG, else raw.
fn v4l2_format(v4l2: &V4l2Source) -> Result<V4l2Format, CaptureError> {
    if v4l2.format != V4l2Format::Auto {
        return Ok(v4l2.format);
    }
    let src = make("v4l2src")
        .property("device", v4l2.device.to_string_lossy().as_ref())
        .build()
        .map_err(|_| chain::element_missing("v4l2src"))?;
    // READY opens the device, so its formats can be queried without streaming.
    src.set_state(gst::State::Ready)
        .map_err(|e| CaptureError::DeviceUnusable {
            device: v4l2.device.clone(),
            message: e.to_string(),
        })?;
    let caps = src.static_pad("src").map(|pad| pad.query_caps(None));
    let _ = src.set_state(gst::State::Null);
    let has = |name: &str| {
        caps.as_ref()
            .is_some_and(|caps| caps.iter().any(|s| s.name() == name))
    };
    let format = if has("video/x-h264") {
        V4l2Format::H264
    } else if has("image/jpeg") {
        V4l2Format::Mjpeg
    } else {
        V4l2Format::Raw
    };
    tracing::info!(device = %v4l2.device.display(), ?format, "V4L2 format chosen from the device's caps.");
    Ok(format)
}

/// `Auto`: the hardware encoder where this machine has it (Pi 4), else x264 (Pi 5).
fn libcamera_encoder(choice: LibcameraEncoder) -> LibcameraEncoder {
    match choice {
        LibcameraEncoder::Auto if gst::ElementFactory::find("v4l2h264enc").is_some() => {
            LibcameraEncoder::V4l2H264Enc
        }
        LibcameraEncoder::Auto => LibcameraEncoder::X264Enc,
        chosen => chosen,
    }
}

/// Adds `chain ! h264parse ! avc/au ! sink` to the pipeline; returns the chain's first element.
fn add_chain(
    pipeline: &gst::Pipeline,
    chain: &Chain,
    sink: &gst::Element,
) -> Result<gst::Element, CaptureError> {
    let link = |e: gst::glib::BoolError| CaptureError::Link(e.to_string());
    let mut elements = Vec::with_capacity(chain.stages.len() + 3);
    for stage in &chain.stages {
        elements.push(build_stage(stage)?);
    }
    elements.push(h264parse()?);
    elements.push(avc_caps_filter()?);
    elements.push(sink.clone());
    pipeline.add_many(&elements).map_err(link)?;
    let first = elements[0].clone();
    let rest = if chain.dynamic_source {
        link_when_pad_appears(&first, &elements[1]);
        &elements[1..]
    } else {
        &elements[..]
    };
    gst::Element::link_many(rest).map_err(link)?;
    Ok(first)
}

fn build_stage(stage: &Stage) -> Result<gst::Element, CaptureError> {
    match stage {
        Stage::Caps(text) => {
            let caps = gst::Caps::from_str(text)
                .map_err(|e| CaptureError::Link(format!("caps {text:?}: {e}")))?;
            make("capsfilter")
                .property("caps", caps)
                .build()
                .map_err(missing("capsfilter"))
        }
        Stage::Element(spec) => {
            let mut builder = make(spec.factory);
            for (key, value) in &spec.properties {
                builder = builder.property_from_str(key, value);
            }
            builder
                .build()
                .map_err(|_| chain::element_missing(spec.factory))
        }
    }
}

/// Links a source's sometimes-pad (rtspsrc: one per announced stream) to `next` when it
/// appears; streams other than the first video one stay unlinked.
fn link_when_pad_appears(source: &gst::Element, next: &gst::Element) {
    let next = next.downgrade();
    source.connect_pad_added(move |_, pad| {
        let Some(next) = next.upgrade() else { return };
        let Some(sink_pad) = next.static_pad("sink") else {
            return;
        };
        if sink_pad.is_linked() {
            return;
        }
        if let Err(error) = pad.link(&sink_pad) {
            tracing::debug!(%error, caps = %pad.query_caps(None), "Capture ignores a stream it cannot carry.");
        }
    });
}

/// An RTSP camera that announces H.265 (or any video but H.264) ends the capture with a typed
/// error rather than a generic "not linked" from the depayloader.
fn refuse_non_h264_rtp(
    rtspsrc: &gst::Element,
    tx: mpsc::Sender<CaptureEvent>,
    stop: Arc<AtomicBool>,
) {
    rtspsrc.connect_pad_added(move |_, pad| {
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let Some(s) = caps.structure(0) else { return };
        let media = s.get::<&str>("media").unwrap_or("video");
        let encoding = s.get::<&str>("encoding-name").unwrap_or("");
        if media == "video" && encoding != "H264" {
            let codec = if encoding == "H265" {
                "H.265"
            } else {
                encoding
            };
            let error = CaptureError::CodecUnsupported(codec.to_owned());
            tracing::error!(%error, "RTSP camera sends a codec the agent cannot pass through.");
            send_event(&tx, CaptureEvent::Error(error), &stop);
        }
    });
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
    /// When the appsink last received a sample, for the stall watchdog.
    last_sample: Instant,
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
    state.last_sample = Instant::now();
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

/// What the bus thread needs.
struct BusWatch {
    state: Arc<Mutex<SinkState>>,
    tx: mpsc::Sender<CaptureEvent>,
    stop: Arc<AtomicBool>,
    /// Live sources only: no sample for this long is an error (a camera that went silent
    /// without closing its connection, RTP over UDP from a vanished server).
    stall_ms_max: Option<u64>,
}

impl BusWatch {
    /// Watches errors and end of stream apart from the data path, and the stall watchdog. At
    /// end of stream every sample has passed the appsink, so the last partial fragment is
    /// flushed before `EndOfStream`. Sends one final event, then returns.
    fn run(self, bus: gst::Bus) {
        let types = [gst::MessageType::Eos, gst::MessageType::Error];
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = gst::ClockTime::from_mseconds(BUS_POLL_MS);
            let event = match bus.timed_pop_filtered(timeout, &types) {
                Some(message) => match self.on_message(&message) {
                    Some(event) => event,
                    None => continue,
                },
                None => match self.stalled() {
                    Some(error) => CaptureEvent::Error(error),
                    None => continue,
                },
            };
            send_event(&self.tx, event, &self.stop);
            return;
        }
    }

    fn stalled(&self) -> Option<CaptureError> {
        let limit_ms = self.stall_ms_max?;
        let silent_ms = lock(&self.state).last_sample.elapsed().as_millis();
        (silent_ms > u128::from(limit_ms)).then(|| {
            tracing::error!(silent_ms, "Capture received no video for too long.");
            CaptureError::Stalled {
                silent_ms: limit_ms,
            }
        })
    }

    fn on_message(&self, message: &gst::Message) -> Option<CaptureEvent> {
        match message.view() {
            gst::MessageView::Eos(_) => {
                let last = lock(&self.state).fragmenter.finish();
                if let Some(media) = last {
                    let fragment = CaptureEvent::Fragment(CapturedFragment::new(media));
                    send_event(&self.tx, fragment, &self.stop);
                }
                let stats = lock(&self.state).fragmenter.stats();
                tracing::info!(?stats, "Capture reached the end of the stream.");
                Some(CaptureEvent::EndOfStream)
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
                Some(CaptureEvent::Error(CaptureError::Pipeline {
                    source_element,
                    message,
                }))
            }
            _ => None,
        }
    }
}
