//! The agent process assembled from its parts: one capture pipeline per camera feeding one QUIC
//! uplink to the server.
//!
//! Each camera gets a producer session (an epoch) kept in the agent's state directory. A file
//! source keeps its epoch and its timestamp origin across restarts of the agent, so a restarted
//! replay produces the same fragment identities and the server's resume point skips whatever is
//! already stored; a live source starts a new epoch on each start. Fragments flow from capture
//! through a bounded channel into the uplink, which keeps every fragment until the server says it
//! is persisted; when the uplink is full the channel fills and capture waits (backpressure).
//!
//! Fragments of live sources also go through the durable spool (`spool`): each is appended and
//! fsynced before it is handed to the uplink, and released when the server says PERSISTED (or
//! refuses it for good). At start, whatever an earlier run spooled and never saw persisted is
//! sent first, oldest first, by the backlog uplinks (`backlog`), under its original identity,
//! while new capture goes on. File sources are not spooled: the file itself is the durable
//! copy, and a restarted replay yields the same identities.
//! `check` runs `hydrant agent --check`: the TLS files parse and each pipeline plays for about a
//! second, with nothing sent. The agent presents its device certificate (`cert`, `key`) to the
//! server; a server that refuses the device ends the run with an error instead of retrying.
//!
//! Live first, then backfill: live fragments go to the live uplink at the higher priority; a
//! live fragment that waits too long (an outage) is abandoned on the wire and its spooled copy
//! comes back through `backfill`, which feeds the same uplink's low-priority input oldest first
//! within `backfill_bytes_per_s`. Earlier runs' epochs (`backlog`) go first, also as backfill.
//! `status` serves Prometheus metrics and a JSON summary on `status_listen`. On shutdown the
//! cameras stop, the uplinks get `shutdown_flush_ms` to have what they hold persisted, and
//! everything else stays in the spool for the next start.
//! This module holds no protocol logic (that is `wire`) and no media logic (that is `capture`).

mod backfill;
mod backlog;
mod check;
mod session;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::capture::{
    Capture, CaptureConfig, CaptureError, CaptureEvent, CapturedFragment, Pace, SourceSpec,
};
use crate::config::{AgentSettings, CameraSettings};
use crate::fragment::{Fragment, FragmentId, FragmentMeta, StreamName, UnixMillis};
use crate::spool::{Admission, Spool, SpoolConfig, SpoolError, SpoolStats};
use crate::transport::{self, ClientIdentity, Outgoing, ServerTrust, UplinkOptions};
use crate::wire::{Priority, StreamOpen, UplinkConfig, UplinkEvent};

use backfill::{OnWire, lock_wire};
pub use status::AgentCounters;

pub use check::{CHECK_FIRST_VIDEO_TIMEOUT_MS, CHECK_RUN_MS, CheckLine, CheckReport, check};
pub use session::{ProducerSession, SessionError};

/// Fragments waiting between the capture pipelines and the uplink.
const UPLINK_CHANNEL_FRAGMENTS_MAX: usize = 8;
/// Reports waiting for the caller.
const REPORT_CHANNEL_MAX: usize = 256;
/// How long one connection attempt to the server may take.
const CONNECT_TIMEOUT_S: u64 = 5;
/// Restart backoff for a live pipeline that failed.
const PIPELINE_RESTART_BACKOFF_MAX_S: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("camera {stream}: source {source_spec:?}: {error}")]
    Source {
        stream: StreamName,
        source_spec: String,
        error: CaptureError,
    },
    #[error("camera {stream}: capture failed: {error}")]
    Capture {
        stream: StreamName,
        error: CaptureError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
    // Not a `source`: the message already carries it, and error chains would print it twice.
    #[error("uplink failed: {0}")]
    Uplink(transport::TransportError),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("opening the spool did not finish: {0}")]
    SpoolTask(String),
}

impl From<transport::TransportError> for AgentError {
    fn from(e: transport::TransportError) -> Self {
        Self::Uplink(e)
    }
}

/// The spool, shared by the cameras (appends) and the report collector (releases). Each holder
/// keeps the lock for one append (one fsync) or one release at most.
type SharedSpool = Arc<Mutex<Spool>>;

fn lock(spool: &SharedSpool) -> MutexGuard<'_, Spool> {
    // A panic while holding the lock leaves the spool as consistent as the disk: keep using it.
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What happened to one fragment, reported to the caller as it happens.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// The server has the fragment on disk.
    Persisted {
        id: FragmentId,
        fragment_number: Option<String>,
    },
    /// The server refused the fragment for good.
    Refused { id: FragmentId, reason: String },
    /// The server refused a whole stream (unknown, not authorised...).
    StreamRefused { stream: StreamName, reason: String },
}

/// Totals when the agent stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub persisted: u64,
    /// Of the persisted ones, those the server already had before this run (resume).
    pub already_stored: u64,
    pub refused: u64,
    pub streams_refused: u64,
    /// The spool's counters when the agent stopped.
    pub spool: SpoolStats,
}

impl AgentReport {
    pub fn all_persisted(&self) -> bool {
        self.refused == 0 && self.streams_refused == 0
    }
}

/// Runs the agent until every file source has been sent and persisted, or until `shutdown`
/// for live sources (then it flushes what was captured). Events go to `events` when given.
pub async fn run(
    settings: AgentSettings,
    events: Option<mpsc::Sender<AgentEvent>>,
    shutdown: watch::Receiver<bool>,
) -> Result<AgentReport, AgentError> {
    std::fs::create_dir_all(&settings.spool_dir).map_err(|e| SessionError::Io {
        path: settings.spool_dir.clone(),
        source: e,
    })?;
    let mut cameras = Vec::with_capacity(settings.cameras.len());
    for camera in &settings.cameras {
        let source: SourceSpec = camera.source.parse().map_err(|error| AgentError::Source {
            stream: camera.stream.clone(),
            source_spec: camera.source.clone(),
            error,
        })?;
        let session = ProducerSession::load_or_create(
            &settings.spool_dir,
            &camera.stream,
            &source,
            UnixMillis::now(),
        )?;
        tracing::info!(stream = %camera.stream, epoch = session.epoch, source = %camera.source, "camera session ready");
        cameras.push((camera.clone(), source, session));
    }
    let spool = open_spool(&settings).await?;
    let current: Vec<(StreamName, u64)> = cameras
        .iter()
        .map(|(cam, _, s)| (cam.stream.clone(), s.epoch))
        .collect();
    // A file source resumes its epoch, but it is not spooled: its spool copies are from a
    // live source of the same name in an earlier run only if the epoch differs.
    let earlier = lock(&spool)
        .unreleased()
        .into_iter()
        .filter(|s| {
            !current
                .iter()
                .any(|(n, e)| *n == s.id.stream && *e == s.id.epoch)
        })
        .collect();
    let backlog_rounds = backlog::rounds(earlier);
    let spool_reader = lock(&spool).reader();
    let on_wire: OnWire = Arc::default();
    let counters = Arc::new(AgentCounters::default());

    let streams = cameras
        .iter()
        .map(|(cam, _, s)| StreamOpen {
            stream: cam.stream.clone(),
            epoch: s.epoch,
        })
        .collect();
    let (fragment_tx, fragment_rx) = mpsc::channel(UPLINK_CHANNEL_FRAGMENTS_MAX);
    let (backfill_tx, backfill_rx) = mpsc::channel(UPLINK_CHANNEL_FRAGMENTS_MAX);
    let (report_tx, report_rx) = mpsc::channel(REPORT_CHANNEL_MAX);
    let options = uplink_options(&settings);
    if let Some(addr) = settings.status_listen {
        let sources = status::StatusSources {
            spool: spool.clone(),
            uplink: options.metrics.clone(),
            agent: counters.clone(),
        };
        tokio::spawn(status::serve(addr, sources, shutdown.clone()));
    }
    // Oldest first: earlier runs' epochs, then this run's spooled fragments.
    let backlog = {
        let (options, reports, shutdown) = (options.clone(), report_tx.clone(), shutdown.clone());
        let feed = backfill::feed(
            spool.clone(),
            on_wire.clone(),
            current,
            spool_reader.clone(),
            backfill_tx,
            shutdown.clone(),
        );
        // Only live sources are spooled: with none, there is nothing to backfill, and the
        // closed backfill input lets the uplink finish once the files are sent.
        let any_live = cameras
            .iter()
            .any(|(_, source, _)| !matches!(source, SourceSpec::File(_)));
        tokio::spawn(async move {
            let result =
                backlog::run(options, backlog_rounds, spool_reader, reports, shutdown).await;
            if any_live {
                feed.await;
            }
            result
        })
    };
    let uplink = tokio::spawn(transport::run_uplink_with_backfill(
        options,
        streams,
        fragment_rx,
        Some(backfill_rx),
        report_tx,
        shutdown.clone(),
    ));
    let reports = tokio::spawn(collect_reports(
        report_rx,
        events,
        spool.clone(),
        on_wire.clone(),
        counters.clone(),
    ));

    let mut captures = tokio::task::JoinSet::new();
    for (camera, source, session) in cameras {
        let live = !matches!(source, SourceSpec::File(_));
        captures.spawn(run_camera(
            camera,
            source,
            session,
            capture_config_base(&settings),
            Outlet {
                spool: live.then(|| spool.clone()),
                on_wire: on_wire.clone(),
                uplink: fragment_tx.clone(),
            },
            counters.clone(),
            shutdown.clone(),
        ));
    }
    drop(fragment_tx);
    let mut first_error = None;
    while let Some(done) = captures.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "camera stopped");
                first_error.get_or_insert(e);
            }
            Err(e) => tracing::error!(error = %e, "camera task failed"),
        }
    }
    // Every capture has ended and dropped its sender: the uplink drains what is pending (at
    // shutdown: for at most the flush deadline).
    let uplink_result = uplink.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "uplink task failed");
        Ok(())
    });
    if *shutdown.borrow() || uplink_result.is_err() {
        backlog.abort();
    }
    let backlog_result = backlog.await.unwrap_or_else(|e| {
        if e.is_cancelled() {
            return Ok(());
        }
        tracing::error!(error = %e, "backlog task failed");
        Ok(())
    });
    let mut report = reports.await.unwrap_or_default();
    report.spool = lock(&spool).stats();
    if let Some(e) = first_error {
        return Err(e);
    }
    uplink_result?;
    backlog_result?;
    Ok(report)
}

/// Opens the spool in `<spool_dir>/spool` (off the runtime's threads: recovery reads it all).
async fn open_spool(settings: &AgentSettings) -> Result<SharedSpool, AgentError> {
    let config = SpoolConfig {
        dir: SpoolConfig::in_state_dir(&settings.spool_dir),
        bytes_max: settings.spool_bytes_max,
        age_max_ms: settings.spool_age_max_s.saturating_mul(1000),
        full_policy: settings.spool_full_policy,
        fragment_bytes_max: u32::try_from(settings.fragment_bytes_max).unwrap_or(u32::MAX),
    };
    let spool = tokio::task::spawn_blocking(move || Spool::open(config))
        .await
        .map_err(|e| AgentError::SpoolTask(e.to_string()))??;
    let stats = spool.stats();
    tracing::info!(
        unreleased = stats.unreleased_fragments,
        bytes = stats.disk_bytes,
        truncated = stats.recovered_bytes_truncated,
        "Spool open."
    );
    Ok(Arc::new(Mutex::new(spool)))
}

/// Where a camera's fragments go: the spool first (live sources only), then the uplink.
#[derive(Debug)]
struct Outlet {
    spool: Option<SharedSpool>,
    on_wire: OnWire,
    uplink: mpsc::Sender<Outgoing>,
}

impl Outlet {
    /// Spools the fragment durably, then hands it to the uplink (waiting while the uplink is
    /// full). A fragment the spool refuses or cannot write is still sent, without a durable
    /// copy. Returns false when the uplink has stopped.
    async fn send(&self, fragment: Fragment) -> bool {
        let mut spooled = false;
        if let Some(spool) = &self.spool {
            // Marked before it is spooled, so the backfill never takes it while it is live.
            lock_wire(&self.on_wire).insert(fragment.meta.id.clone());
            let (spool, copy) = (spool.clone(), fragment.clone());
            let id = fragment.meta.id.clone();
            let appended =
                tokio::task::spawn_blocking(move || lock(&spool).append(&copy, UnixMillis::now()))
                    .await;
            match appended {
                Ok(Ok(Admission::Spooled(_) | Admission::AlreadySpooled)) => spooled = true,
                Ok(Ok(Admission::Refused)) => {
                    tracing::debug!(fragment = %id, "sending a fragment the spool refused")
                }
                Ok(Err(error)) => tracing::error!(fragment = %id, %error, "spooling failed"),
                Err(error) => tracing::error!(fragment = %id, %error, "spool task failed"),
            }
        }
        let outgoing = Outgoing {
            fragment,
            priority: Priority::Live,
            spooled,
        };
        self.uplink.send(outgoing).await.is_ok()
    }
}

fn uplink_options(settings: &AgentSettings) -> UplinkOptions {
    let trust = match &settings.ca {
        Some(ca) => ServerTrust::CaFile(ca.clone()),
        None => ServerTrust::TrustFirstSeen {
            pin_file: settings.spool_dir.join("server-certificate.sha256"),
        },
    };
    let client = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    UplinkOptions {
        server: settings.server.clone(),
        trust,
        client,
        uplink: UplinkConfig {
            agent: settings.agent_name.clone(),
            pending_fragments_max: settings.pending_fragments_max as usize,
            pending_bytes_max: settings.pending_bytes_max,
            in_flight_max: settings.in_flight_max as usize,
            ack_timeout: Duration::from_millis(settings.ack_timeout_ms),
            backoff_initial: Duration::from_millis(settings.backoff_initial_ms),
            backoff_max: Duration::from_millis(settings.backoff_max_ms),
            backfill_bytes_per_s: settings.backfill_bytes_per_s,
            live_stale_after: Duration::from_millis(settings.live_stale_after_ms),
            ..UplinkConfig::default()
        },
        connect_timeout: Duration::from_secs(CONNECT_TIMEOUT_S),
        shutdown_flush: Duration::from_millis(settings.shutdown_flush_ms),
        metrics: Arc::default(),
    }
}

fn capture_config_base(settings: &AgentSettings) -> CaptureConfig {
    CaptureConfig {
        source: SourceSpec::Test,
        pace: Pace::RealTime,
        fragment_target_ms: settings.fragment_target_ms,
        fragment_duration_ms_max: settings.fragment_duration_ms_max,
        fragment_bytes_max: usize::try_from(settings.fragment_bytes_max).unwrap_or(usize::MAX),
        channel_fragments_max: 4,
    }
}

/// Runs one camera's pipeline, numbering its fragments and handing them to the uplink. A file
/// source ends at end of stream; a live source is restarted with backoff when it fails and runs
/// until shutdown.
async fn run_camera(
    camera: CameraSettings,
    source: SourceSpec,
    session: ProducerSession,
    base: CaptureConfig,
    outlet: Outlet,
    counters: Arc<AgentCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let live = !matches!(source, SourceSpec::File(_));
    let pace = if camera.fast && !live {
        Pace::Fast
    } else {
        Pace::RealTime
    };
    let mut sequence = 0u64;
    let mut restarts = 0u32;
    loop {
        // A live source starts a fresh timeline at each (re)start; a file keeps its origin so
        // that a restarted replay yields the same timestamps.
        let origin = if live {
            UnixMillis::now()
        } else {
            session.origin
        };
        let config = CaptureConfig {
            source: source.clone(),
            pace,
            ..base.clone()
        };
        let (capture, mut captured) =
            Capture::start(config, origin).map_err(|error| AgentError::Capture {
                stream: camera.stream.clone(),
                error,
            })?;
        let mut uplink_gone = false;
        let outcome = loop {
            tokio::select! {
                event = captured.recv() => match event {
                    Some(CaptureEvent::Fragment(f)) => {
                        let fragment = to_fragment(&camera.stream, session.epoch, sequence, f);
                        sequence += 1;
                        if !outlet.send(fragment).await {
                            // The uplink stopped: shutdown, or the server refused this agent.
                            uplink_gone = true;
                            break Ok(());
                        }
                    }
                    Some(CaptureEvent::EndOfStream) | None => break Ok(()),
                    Some(CaptureEvent::Error(error)) => break Err(error),
                },
                _ = stopped(&mut shutdown) => break Ok(()),
            }
        };
        capture.stop();
        if outcome.is_err() {
            counters
                .capture_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match outcome {
            Ok(()) if uplink_gone || !live || *shutdown.borrow() => return Ok(()),
            Ok(()) => tracing::warn!(stream = %camera.stream, "live source ended; restarting it"),
            Err(error) if !live => {
                return Err(AgentError::Capture {
                    stream: camera.stream.clone(),
                    error,
                });
            }
            Err(error) => {
                tracing::error!(stream = %camera.stream, %error, "live source failed; restarting it")
            }
        }
        restarts = restarts.saturating_add(1);
        let backoff =
            Duration::from_secs((1u64 << restarts.min(5)).min(PIPELINE_RESTART_BACKOFF_MAX_S));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut shutdown) => return Ok(()),
        }
    }
}

fn to_fragment(
    stream: &StreamName,
    epoch: u64,
    sequence: u64,
    captured: CapturedFragment,
) -> Fragment {
    Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream: stream.clone(),
                epoch,
                sequence,
            },
            producer_timestamp: captured.producer_timestamp,
            duration_ms: captured.duration_ms,
        },
        payload: captured.media.encode(),
    }
}

/// Counts what the uplinks report and releases from the spool every fragment the server has
/// persisted or refused for good (a refused one would be refused again at every resend).
async fn collect_reports(
    mut reports: mpsc::Receiver<UplinkEvent>,
    events: Option<mpsc::Sender<AgentEvent>>,
    spool: SharedSpool,
    on_wire: OnWire,
    counters: Arc<AgentCounters>,
) -> AgentReport {
    use std::sync::atomic::Ordering::Relaxed;
    let mut totals = AgentReport::default();
    while let Some(report) = reports.recv().await {
        match &report {
            UplinkEvent::Persisted { id, .. } | UplinkEvent::Refused { id, .. } => {
                let mut wire = lock_wire(&on_wire);
                if let Err(error) = lock(&spool).release(id) {
                    tracing::error!(fragment = %id, %error, "releasing a fragment from the spool failed");
                }
                wire.remove(id);
            }
            // Off the wire, still in the spool: the backfill sends it later.
            UplinkEvent::Abandoned(id) => {
                lock_wire(&on_wire).remove(id);
            }
            _ => {}
        }
        match &report {
            UplinkEvent::Persisted { .. } => counters.persisted.fetch_add(1, Relaxed),
            UplinkEvent::Refused { .. } => counters.refused.fetch_add(1, Relaxed),
            _ => 0,
        };
        let event = match report {
            UplinkEvent::Persisted {
                id,
                fragment_number,
            } => {
                totals.persisted += 1;
                totals.already_stored += u64::from(fragment_number.is_none());
                tracing::debug!(fragment = %id, number = ?fragment_number, "fragment persisted");
                AgentEvent::Persisted {
                    id,
                    fragment_number,
                }
            }
            UplinkEvent::Refused { id, code, message } => {
                totals.refused += 1;
                tracing::error!(fragment = %id, ?code, %message, "server refused a fragment");
                AgentEvent::Refused {
                    id,
                    reason: format!("{code:?}: {message}"),
                }
            }
            UplinkEvent::StreamRefused {
                stream,
                code,
                message,
            } => {
                totals.streams_refused += 1;
                tracing::error!(%stream, ?code, %message, "server refused the stream");
                AgentEvent::StreamRefused {
                    stream,
                    reason: format!("{code:?}: {message}"),
                }
            }
            _ => continue,
        };
        if let Some(events) = &events {
            // A caller that asked for events reads them; if it has gone, keep counting.
            let _ = events.send(event).await;
        }
    }
    totals
}

/// The state directory of an agent, for tests and tools.
pub fn session_path(spool_dir: &std::path::Path, stream: &StreamName) -> PathBuf {
    session::path(spool_dir, stream)
}

/// Resolves once shutdown is asked for (or its sender is gone). Holds no borrow of the channel
/// across an await, so the futures that select on it stay `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
