//! The live detection consumer: follows a camera stream's new fragments in the store and turns
//! them into events.
//!
//! One consumer per configured camera runs on its own OS thread (decoding and inference block).
//! It polls the store's index every `poll_ms` for fragments newer than the last one it handled
//! (at most [`LIST_FRAGMENTS_MAX`] per poll), decodes each one with GStreamer
//! ([`FragmentFrames`]: the fragment as a small MP4 through `appsrc ! qtdemux ! avdec_h264`,
//! pulled frame by frame, so memory stays at a few frames), and runs the same pieces as
//! `hydrant detect eval` (sampler, gain, motion gate, [`Detector`], [`Tracker`], [`EventRule`])
//! plus the camera's rules ([`TrackFilter`]: classes, score, zones; armed schedule and manual
//! arm/disarm; per-track [`Cooldown`]). Only admitted tracks reach the event rule, so a track
//! outside the zone or while disarmed never opens an event.
//!
//! Backpressure: a consumer further than `backlog_fragments_max` fragments behind skips to the
//! newest ones and logs how many it skipped, instead of queueing. Frame times are producer
//! timestamps (Unix ms); holds on the clip's fragments are placed in the store when an event
//! opens and extended when it closes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::eval::Sampler;
use super::events::{ClipRange, Event, EventHub, POST_ROLL_MS, PRE_ROLL_MS};
use super::gate::{self, GateOptions, MotionGate, Thumb};
use super::rules::{Cooldown, RuleError, Schedule, TrackFilter, is_armed};
use super::track::{EventRule, RuleOptions, Track, Tracker, TrackerOptions};
use super::{DetectError, Detector, DetectorOptions, Frame, FrameSource, ModelSpec};
use crate::config::{DetectCamera, DetectSection};
use crate::fragment::{StreamName, UnixMillis};
use crate::media::{MediaFragment, mp4};
use crate::store::holds::Hold;
use crate::store::{FragmentSummary, LIST_FRAGMENTS_MAX, Store, StoreError, TimestampKind};

/// Frames the appsink holds before the decoder blocks.
const APPSINK_BUFFERS_MAX: u32 = 2;
/// Longest wait for one decoded frame of a stored fragment.
const FRAME_WAIT_MS_MAX: u64 = 10_000;
/// Recent fragments remembered to place the pre-roll of a hold.
const RECENT_FRAGMENTS_MAX: usize = 64;
/// Fragments past the current one a hold covers, for the post-roll (fragments are about 2 s).
const HOLD_AHEAD_FRAGMENTS: u64 = 8;
/// How long a stored fragment waits before detection takes it, so fragments still in flight
/// with earlier producer times are taken first.
const REORDER_MS: u64 = 1_000;
/// A media clock going back further than this is a new clock (a restarted producer).
const CLOCK_JUMP_MS: u64 = 10_000;
/// Frames decoded from one fragment at most.
const FRAGMENT_FRAMES_MAX: u64 = 10_000;

/// Failures of a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("camera {stream}: {source}")]
    Rule { stream: String, source: RuleError },
    #[error("camera {stream}: unknown label {label:?} for this model")]
    Label { stream: String, label: String },
    #[error("camera stream name {0:?} is not valid")]
    Stream(String),
}

/// The rules of one camera, resolved against the model's labels.
#[derive(Debug, Clone)]
pub struct CameraRules {
    pub stream: StreamName,
    pub filter: TrackFilter,
    pub schedule: Schedule,
    pub rule: RuleOptions,
}

impl CameraRules {
    pub fn resolve(c: &DetectCamera, labels: &[String]) -> Result<CameraRules, ConsumerError> {
        let stream = StreamName::new(c.stream.as_str())
            .map_err(|_| ConsumerError::Stream(c.stream.clone()))?;
        let rule_err = |source| ConsumerError::Rule {
            stream: c.stream.clone(),
            source,
        };
        let mut classes = Vec::new();
        for l in &c.labels {
            let i = labels
                .iter()
                .position(|x| x == l)
                .ok_or(ConsumerError::Label {
                    stream: c.stream.clone(),
                    label: l.clone(),
                })?;
            classes.push(i);
        }
        if c.zones.len() > super::rules::ZONES_MAX {
            return Err(rule_err(RuleError::Zones));
        }
        for z in &c.zones {
            z.validate().map_err(rule_err)?;
        }
        let schedule = Schedule::parse(&c.schedule, c.utc_offset_minutes).map_err(rule_err)?;
        Ok(CameraRules {
            stream,
            filter: TrackFilter {
                classes,
                score_min: c.score_min,
                zones: c.zones.clone(),
            },
            schedule,
            rule: RuleOptions {
                min_dwell_ms: c.min_dwell_ms,
                cooldown_ms: c.cooldown_ms,
            },
        })
    }
}

/// Decoded frames of one stored fragment, pulled one at a time.
#[derive(Debug)]
pub struct FragmentFrames {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    base_ms: u64,
    first_pts_ns: Option<u64>,
    index: u64,
}

impl FragmentFrames {
    /// Starts decoding a fragment payload; frame times are the media clock (the fragment's first
    /// presentation time, Unix ms, plus each frame's offset from it). The media clock is used
    /// rather than producer timestamps because a replay faster than real time compresses the
    /// latter.
    pub fn open(payload: &[u8]) -> Result<FragmentFrames, DetectError> {
        let video = |e: &dyn std::fmt::Display| DetectError::Video(e.to_string());
        let media = MediaFragment::decode(payload).map_err(|e| video(&e))?;
        let base_ms = u64::try_from(media.start_us() / 1000).unwrap_or(0);
        let file = mp4::write_mp4(std::slice::from_ref(&media)).map_err(|e| video(&e))?;
        gst::init().map_err(|e| video(&e))?;
        let desc = format!(
            "appsrc name=src ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=BGR ! appsink name=sink sync=false max-buffers={APPSINK_BUFFERS_MAX}"
        );
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| video(&e))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| video(&"not a pipeline"))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| video(&"no appsrc"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| video(&"no appsink"))?;
        let frames = FragmentFrames {
            pipeline,
            sink,
            base_ms,
            first_pts_ns: None,
            index: 0,
        };
        frames
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| video(&e))?;
        src.push_buffer(gst::Buffer::from_mut_slice(file))
            .map_err(|e| video(&e))?;
        src.end_of_stream().map_err(|e| video(&e))?;
        Ok(frames)
    }

    /// The media time of the fragment's first frame, Unix ms.
    pub fn base_ms(&self) -> u64 {
        self.base_ms
    }

    fn frame_of(&mut self, sample: &gst::Sample) -> Result<Frame, DetectError> {
        let bad = |what: &str| DetectError::Video(format!("stored fragment: {what}"));
        let caps = sample.caps().ok_or_else(|| bad("no caps"))?;
        let info = gst_video::VideoInfo::from_caps(caps).map_err(|_| bad("unreadable caps"))?;
        let buffer = sample.buffer().ok_or_else(|| bad("no buffer"))?;
        let map = buffer.map_readable().map_err(|_| bad("unmappable"))?;
        let (w, h) = (info.width(), info.height());
        let stride = usize::try_from(info.stride()[0]).map_err(|_| bad("negative stride"))?;
        let row = w as usize * 3;
        let mut bgr = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            let line = map
                .get(y * stride..y * stride + row)
                .ok_or_else(|| bad("buffer smaller than its caps"))?;
            bgr.extend_from_slice(line);
        }
        let mut frame = Frame::new(w, h, bgr)?;
        let pts = buffer.pts().map_or(0, |p| p.nseconds());
        let first = *self.first_pts_ns.get_or_insert(pts);
        frame.pts_ms = self.base_ms + pts.saturating_sub(first) / 1_000_000;
        frame.index = self.index;
        self.index += 1;
        Ok(frame)
    }
}

impl FrameSource for FragmentFrames {
    fn next_frame(&mut self) -> Result<Option<Frame>, DetectError> {
        if self.index >= FRAGMENT_FRAMES_MAX {
            return Ok(None);
        }
        let wait = gst::ClockTime::from_mseconds(FRAME_WAIT_MS_MAX);
        if let Some(sample) = self.sink.try_pull_sample(wait) {
            return self.frame_of(&sample).map(Some);
        }
        if let Some(bus) = self.pipeline.bus() {
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                if let gst::MessageView::Error(e) = msg.view() {
                    return Err(DetectError::Video(e.error().to_string()));
                }
            }
        }
        Ok(None)
    }
}

impl Drop for FragmentFrames {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// What one sampled frame changed.
#[derive(Debug)]
pub enum Step {
    Nothing,
    /// An event opened on `track` in `zone` (empty when the camera has no zones).
    Opened {
        track: Track,
        zone: String,
    },
    /// An event closed after being seen until `end_ms`.
    Closed {
        end_ms: u64,
    },
    /// A just-closed event resumed within the cooldown.
    Resumed,
}

/// The per-frame state of one camera: the eval pieces plus the camera's rules.
#[derive(Debug)]
pub struct LiveDetector {
    detector: Detector,
    gain: bool,
    sampler: Sampler,
    gate: MotionGate,
    tracker: Tracker,
    rule: EventRule,
    rules: CameraRules,
    cooldown: Cooldown,
    last_seen_ms: u64,
    closed_at_ms: Option<u64>,
    sample_fps: f64,
    last_pts_ms: u64,
}

impl LiveDetector {
    pub fn new(detector: Detector, rules: CameraRules, sample_fps: f64) -> Self {
        LiveDetector {
            detector,
            gain: true,
            sampler: Sampler::new(sample_fps),
            gate: MotionGate::new(GateOptions::default()),
            tracker: Tracker::new(TrackerOptions::default()),
            rule: EventRule::new(rules.rule),
            rules,
            cooldown: Cooldown::default(),
            last_seen_ms: 0,
            closed_at_ms: None,
            sample_fps,
            last_pts_ms: 0,
        }
    }

    pub fn labels(&self) -> &[String] {
        &self.detector.spec().labels
    }

    /// Whether the frame at `pts_ms` is sampled (call once per frame, in order).
    pub fn sample(&mut self, pts_ms: u64) -> bool {
        // A producer that restarted may begin a new media clock: restart the sampling grid
        // rather than skip frames until the old clock is reached again.
        if pts_ms.saturating_add(CLOCK_JUMP_MS) < self.last_pts_ms {
            tracing::info!(
                from_ms = self.last_pts_ms,
                to_ms = pts_ms,
                "media clock restarted"
            );
            self.sampler = Sampler::new(self.sample_fps);
            self.gate = MotionGate::new(GateOptions::default());
            self.tracker = Tracker::new(TrackerOptions::default());
            self.rule = EventRule::new(self.rules.rule);
            self.closed_at_ms = None;
        } else if pts_ms < self.last_pts_ms {
            // Tracks and rules need time to move forward; a frame from the past is dropped.
            return false;
        }
        self.last_pts_ms = pts_ms;
        self.sampler.take(pts_ms)
    }

    /// Runs one sampled frame (gain applied in place, for the snapshot) with the arming state.
    pub fn step(&mut self, frame: &mut Frame, armed: bool) -> Result<Step, DetectError> {
        if !armed {
            // Nothing may raise an event: spare the model, let tracks age out.
            self.tracker.update(&[], frame.pts_ms);
            return Ok(self.apply_rule(&[], frame.pts_ms));
        }
        let mut thumb = Thumb::of(frame);
        let gain = if self.gain {
            gate::gain_for(thumb.mean())
        } else {
            1.0
        };
        gate::apply_gain(&mut thumb.luma, gain);
        let now = frame.pts_ms;
        let tracking = !self.tracker.tracks().is_empty();
        if self.gate.check(thumb, now, tracking).infer() {
            gate::apply_gain(&mut frame.bgr, gain);
            let inf = self.detector.detect(frame)?;
            self.tracker.update(&inf.detections, now);
        } else {
            self.tracker.update(&[], now);
        }
        let admitted: Vec<(Track, String)> = self
            .tracker
            .tracks()
            .iter()
            .filter_map(|t| {
                let zone = self.rules.filter.admit(t, frame.width, frame.height)?;
                Some((t.clone(), zone))
            })
            .collect();
        Ok(self.apply_rule(&admitted, now))
    }

    fn apply_rule(&mut self, admitted: &[(Track, String)], now: u64) -> Step {
        // The rule keeps closed spans for merging; start afresh once the cooldown has passed so
        // its history stays bounded.
        if let Some(closed) = self.closed_at_ms {
            if !self.rule.is_open() && now > closed + self.rules.rule.cooldown_ms {
                self.rule = EventRule::new(self.rules.rule);
                self.closed_at_ms = None;
            }
        }
        let tracks: Vec<Track> = admitted.iter().map(|(t, _)| t.clone()).collect();
        let was_open = self.rule.is_open();
        let opened = self.rule.observe(&tracks, now);
        let open = self.rule.is_open();
        if open {
            self.last_seen_ms = now;
        }
        match (was_open, open) {
            (false, true) if opened => {
                let best = admitted
                    .iter()
                    .filter(|(t, _)| t.last_ms == now)
                    .max_by(|a, b| a.0.best_score.total_cmp(&b.0.best_score));
                match best {
                    Some((t, zone))
                        if self.cooldown.allow(t.id, now, self.rules.rule.cooldown_ms) =>
                    {
                        Step::Opened {
                            track: t.clone(),
                            zone: zone.clone(),
                        }
                    }
                    _ => Step::Nothing,
                }
            }
            (false, true) => Step::Resumed,
            (true, false) => {
                self.closed_at_ms = Some(self.last_seen_ms);
                Step::Closed {
                    end_ms: self.last_seen_ms,
                }
            }
            _ => Step::Nothing,
        }
    }
}

/// Settings a consumer runs with.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub model: String,
    pub detector: DetectorOptions,
    pub sample_fps: f64,
    pub poll_ms: u64,
    pub backlog_fragments_max: usize,
}

impl ConsumerOptions {
    pub fn from_config(d: &DetectSection) -> Self {
        ConsumerOptions {
            model: d.model.clone(),
            detector: DetectorOptions {
                threads: d.threads,
                execution_provider: d.execution_provider.clone(),
                score_threshold: None,
            },
            sample_fps: d.sample_fps,
            poll_ms: d.poll_ms.clamp(10, 60_000),
            backlog_fragments_max: d.backlog_fragments_max.clamp(1, LIST_FRAGMENTS_MAX),
        }
    }
}

/// Starts a consumer thread for one camera; it runs until `stop` is set.
pub fn spawn(
    store: Arc<Store>,
    hub: Arc<EventHub>,
    camera: DetectCamera,
    options: ConsumerOptions,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Fragments stored from now on are followed, also those arriving while the model loads.
    let since = UnixMillis::now().0;
    std::thread::Builder::new()
        .name(format!("detect-{}", camera.stream))
        .spawn(move || {
            if let Err(e) = run(&store, &hub, &camera, &options, &stop, since) {
                tracing::error!(stream = %camera.stream, error = %e, "detection consumer stopped");
            }
        })
}

/// The consumer's place in its stream.
#[derive(Debug)]
struct Cursor {
    server_ms: u64,
    last_number: Option<u64>,
    /// (producer ms, number) of recent fragments, for the pre-roll of holds.
    recent: VecDeque<(u64, u64)>,
}

/// The event being built, with the fragment numbers its hold covers.
#[derive(Debug)]
struct OpenEvent {
    event: Event,
    first_number: u64,
}

fn run(
    store: &Store,
    hub: &EventHub,
    camera: &DetectCamera,
    options: &ConsumerOptions,
    stop: &AtomicBool,
    since_ms: u64,
) -> Result<(), ConsumerError> {
    let spec = ModelSpec::load(&options.model)?;
    let rules = CameraRules::resolve(camera, &spec.labels)?;
    let detector = Detector::load(spec, &options.detector)?;
    let mut live = LiveDetector::new(detector, rules.clone(), options.sample_fps);
    let mut cursor = Cursor {
        server_ms: since_ms,
        last_number: None,
        recent: VecDeque::new(),
    };
    let mut current: Option<OpenEvent> = None;
    let mut last_closed: Option<OpenEvent> = None;
    // Fragments handled (skipped ones included), reported when the consumer catches up.
    let (mut handled, mut reported) = (0u64, 0u64);
    tracing::info!(stream = %rules.stream, "detection consumer following the stream");
    // Seen but not yet handled, in producer-time order: an agent with several fragments in
    // flight stores them out of order, and detection needs time to move forward.
    let mut pending: BTreeMap<(u64, u64), FragmentSummary> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let fresh = match next_fragments(store, &rules.stream, &cursor) {
            Ok(f) => f,
            Err(StoreError::StreamNotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for summary in fresh {
            cursor.server_ms = summary.server_timestamp.0;
            cursor.last_number = Some(summary.number.0);
            pending.insert((summary.producer_timestamp.0, summary.number.0), summary);
        }
        let skipped = pending.len().saturating_sub(options.backlog_fragments_max);
        if skipped > 0 {
            for _ in 0..skipped {
                pending.pop_first();
            }
            handled += skipped as u64;
            tracing::warn!(stream = %rules.stream, skipped, "detection is behind; skipping to the newest fragments");
        }
        let now = UnixMillis::now().0;
        let ready = pending
            .first_key_value()
            .is_some_and(|(_, f)| f.server_timestamp.0 + REORDER_MS <= now);
        if !ready {
            if pending.is_empty() && handled != reported {
                tracing::info!(stream = %rules.stream, handled, "detection caught up");
                reported = handled;
            }
            std::thread::sleep(Duration::from_millis(options.poll_ms));
            continue;
        }
        let Some((_, summary)) = pending.pop_first() else {
            continue;
        };
        handled += 1;
        if cursor.recent.len() >= RECENT_FRAGMENTS_MAX {
            cursor.recent.pop_front();
        }
        cursor
            .recent
            .push_back((summary.producer_timestamp.0, summary.number.0));
        let ctx = FragmentCtx {
            store,
            hub,
            rules: &rules,
            summary: &summary,
            recent: &cursor.recent,
        };
        if let Err(e) = ctx.process(&mut live, &mut current, &mut last_closed) {
            tracing::warn!(stream = %rules.stream, fragment = %summary.number, error = %e, "fragment skipped by detection");
        }
    }
    Ok(())
}

fn next_fragments(
    store: &Store,
    stream: &StreamName,
    cursor: &Cursor,
) -> Result<Vec<FragmentSummary>, StoreError> {
    let listed = store.list_fragments(
        stream,
        TimestampKind::Server,
        UnixMillis(cursor.server_ms),
        UnixMillis(u64::MAX / 2),
        None,
        LIST_FRAGMENTS_MAX,
    )?;
    Ok(listed
        .into_iter()
        .filter(|f| cursor.last_number.is_none_or(|n| f.number.0 > n))
        .collect())
}

/// What handling one fragment needs.
struct FragmentCtx<'a> {
    store: &'a Store,
    hub: &'a EventHub,
    rules: &'a CameraRules,
    summary: &'a FragmentSummary,
    recent: &'a VecDeque<(u64, u64)>,
}

impl FragmentCtx<'_> {
    fn process(
        &self,
        live: &mut LiveDetector,
        current: &mut Option<OpenEvent>,
        last_closed: &mut Option<OpenEvent>,
    ) -> Result<(), ConsumerError> {
        let (_, payload) = self
            .store
            .read_fragment(&self.rules.stream, self.summary.number)?;
        let started = std::time::Instant::now();
        let mut frames = FragmentFrames::open(&payload)?;
        let frames_base = frames.base_ms();
        // Event times are producer timestamps (what clips and ListFragments select on).
        let to_producer = |media_ms: u64| {
            (self.summary.producer_timestamp.0 + media_ms).saturating_sub(frames_base)
        };
        let (mut decoded, mut sampled) = (0u32, 0u32);
        while let Some(mut frame) = frames.next_frame()? {
            decoded += 1;
            if !live.sample(frame.pts_ms) {
                continue;
            }
            sampled += 1;
            let armed = is_armed(
                self.hub.arm.get(self.rules.stream.as_str()),
                &self.rules.schedule,
                UnixMillis::now().0,
            );
            match live.step(&mut frame, armed)? {
                Step::Nothing => {}
                Step::Opened { track, zone } => {
                    let event = self.open_event(live, &frame, &track, zone, &to_producer)?;
                    *current = Some(event);
                }
                Step::Closed { end_ms } => {
                    if let Some(mut open) = current.take() {
                        open.event.end = Some(to_producer(end_ms));
                        open.event.clip.end = to_producer(end_ms) + POST_ROLL_MS;
                        self.hold(&open);
                        self.hub.record(&open.event)?;
                        *last_closed = Some(open);
                    }
                }
                Step::Resumed => {
                    if let Some(mut open) = last_closed.take() {
                        open.event.end = None;
                        self.hub.record(&open.event)?;
                        *current = Some(open);
                    }
                }
            }
        }
        tracing::debug!(stream = %self.rules.stream, fragment = %self.summary.number, base_ms = frames_base, decoded, sampled, elapsed_ms = started.elapsed().as_millis() as u64, "detection handled a fragment");
        Ok(())
    }

    fn open_event(
        &self,
        live: &LiveDetector,
        frame: &Frame,
        track: &Track,
        zone: String,
        to_producer: &dyn Fn(u64) -> u64,
    ) -> Result<OpenEvent, ConsumerError> {
        let id = uuid::Uuid::new_v4().to_string();
        let jpeg = super::snapshot::jpeg_with_box(frame, &track.bbox)?;
        let snapshot = Some(self.hub.write_snapshot(&id, &jpeg)?);
        let start = to_producer(track.first_ms);
        let pre = start.saturating_sub(PRE_ROLL_MS);
        let first_number = self
            .recent
            .iter()
            .rev()
            .find(|(p, _)| *p <= pre)
            .or(self.recent.front())
            .map_or(self.summary.number.0, |(_, n)| *n);
        let open = OpenEvent {
            event: Event {
                id,
                stream: self.rules.stream.to_string(),
                start,
                end: None,
                label: live
                    .labels()
                    .get(track.class)
                    .cloned()
                    .unwrap_or_else(|| format!("class {}", track.class)),
                score: track.best_score,
                zone: (!zone.is_empty()).then_some(zone),
                snapshot,
                clip: ClipRange {
                    start: pre,
                    end: to_producer(frame.pts_ms) + POST_ROLL_MS,
                },
                created: UnixMillis::now().0,
            },
            first_number,
        };
        self.hold(&open);
        self.hub.record(&open.event)?;
        Ok(open)
    }

    /// Holds the event's fragments; a failure is logged (the event itself still counts).
    fn hold(&self, open: &OpenEvent) {
        let hold = Hold {
            id: open.event.id.clone(),
            first_number: open.first_number,
            last_number: self.summary.number.0 + HOLD_AHEAD_FRAGMENTS,
        };
        if let Err(e) = self.store.place_hold(&self.rules.stream, hold) {
            tracing::warn!(stream = %self.rules.stream, error = %e, "cannot place a clip hold");
        }
    }
}
