//! Detection events: the durable event log, snapshots on disk, and the hub the API, the demo and
//! the consumers share.
//!
//! Layout: `<data-dir>/events/events.jsonl` (one JSON [`Event`] per line, appended and fsynced;
//! a later line with the same id replaces an earlier one, so closing an event is an append) and
//! `<data-dir>/events/<id>.jpg`. At open the log is read back (at most [`EVENTS_MAX`] events are
//! kept in memory, the oldest dropped first; a torn last line is skipped). New events are also
//! broadcast to subscribers (a bounded channel: a slow subscriber misses events, it never blocks
//! a consumer).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::DetectError;
use super::rules::ArmSwitch;
use crate::alerts::{AlertEvent, Alerts};

/// Events kept in memory and listed.
pub const EVENTS_MAX: usize = 10_000;
/// Events one listing returns at most.
pub const LIST_EVENTS_MAX: usize = 1_000;
/// Largest event log read at open.
pub const EVENT_LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Events buffered per subscriber.
const SUBSCRIBER_EVENTS_MAX: usize = 64;
/// Clip time kept before and after an event.
pub const PRE_ROLL_MS: u64 = 5_000;
pub const POST_ROLL_MS: u64 = 5_000;
const LOG_FILE: &str = "events.jsonl";

/// A clip's time range (producer timestamps, Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipRange {
    pub start: u64,
    pub end: u64,
}

/// One detection event. Times are producer timestamps in Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub stream: String,
    pub start: u64,
    /// `None` while the event is still open.
    pub end: Option<u64>,
    pub label: String,
    pub score: f32,
    /// The zone the object stood in; `None` when the camera has no zones.
    pub zone: Option<String>,
    /// Snapshot file name under the events directory.
    pub snapshot: Option<String>,
    pub clip: ClipRange,
    /// Server time the event was raised.
    pub created: u64,
}

impl Event {
    /// The alert form, with URLs relative to `base` (e.g. `http://host:8080`).
    pub fn alert(&self, base: &str) -> AlertEvent {
        AlertEvent {
            id: self.id.clone(),
            stream: self.stream.clone(),
            label: self.label.clone(),
            score: self.score,
            zone: self.zone.clone(),
            start_ms: self.start,
            end_ms: self.end,
            snapshot_url: self
                .snapshot
                .as_ref()
                .map(|_| format!("{base}/events/{}/snapshot.jpg", self.id)),
            clip_url: Some(format!("{base}/events/{}/clip.mp4", self.id)),
        }
    }
}

/// The append-only event log and its in-memory view.
#[derive(Debug)]
struct EventLog {
    file: std::fs::File,
    events: VecDeque<Event>,
}

/// What the consumers, the API and the demo share.
#[derive(Debug)]
pub struct EventHub {
    dir: PathBuf,
    log: Mutex<EventLog>,
    pub arm: ArmSwitch,
    alerts: Arc<Alerts>,
    /// Base URL for alert links.
    pub base_url: String,
    updates: broadcast::Sender<Event>,
    data: Option<DataStream>,
}

/// Where new events also go as JSON records, when data streams exist.
#[derive(Debug, Clone)]
pub struct DataStream {
    pub streams: Arc<crate::streams::Streams>,
    pub runtime: tokio::runtime::Handle,
}

/// The data stream events are written to.
pub const EVENTS_DATA_STREAM: &str = "hydrant-events";

impl EventHub {
    /// Opens (or creates) `<data_dir>/events`.
    pub fn open(
        data_dir: &Path,
        alerts: Arc<Alerts>,
        base_url: String,
        data: Option<DataStream>,
    ) -> Result<EventHub, DetectError> {
        let dir = data_dir.join("events");
        let io = |path: &Path, source| DetectError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join(LOG_FILE);
        let events = read_log(&path).map_err(|e| io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(EventHub {
            dir,
            log: Mutex::new(EventLog { file, events }),
            arm: ArmSwitch::default(),
            alerts,
            base_url,
            updates: broadcast::channel(SUBSCRIBER_EVENTS_MAX).0,
            data,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events as they are raised and closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.updates.subscribe()
    }

    /// Writes a snapshot; returns its file name.
    pub fn write_snapshot(&self, id: &str, jpeg: &[u8]) -> Result<String, DetectError> {
        let name = format!("{id}.jpg");
        let path = self.dir.join(&name);
        std::fs::write(&path, jpeg).map_err(|source| DetectError::Io { path, source })?;
        Ok(name)
    }

    /// Records an event (new or updated) durably, then announces it.
    pub fn record(&self, event: &Event) -> Result<(), DetectError> {
        let mut line = serde_json::to_vec(event).map_err(|e| DetectError::Video(e.to_string()))?;
        line.push(b'\n');
        {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let path = self.dir.join(LOG_FILE);
            let io = |source| DetectError::Io {
                path: path.clone(),
                source,
            };
            log.file.write_all(&line).map_err(io)?;
            log.file.sync_data().map_err(io)?;
            upsert(&mut log.events, event.clone());
        }
        self.alerts.publish(&event.alert(&self.base_url));
        if let Some(data) = &self.data {
            put_data_record(data, event);
        }
        let _ = self.updates.send(event.clone());
        Ok(())
    }

    /// Newest first, optionally of one stream, at most `limit` (capped at [`LIST_EVENTS_MAX`]).
    pub fn list(&self, stream: Option<&str>, limit: usize) -> Vec<Event> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.events
            .iter()
            .rev()
            .filter(|e| stream.is_none_or(|s| e.stream == s))
            .take(limit.min(LIST_EVENTS_MAX))
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Event> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.events.iter().find(|e| e.id == id).cloned()
    }
}

/// Writes the event to [`EVENTS_DATA_STREAM`] in the background (creating it with one shard
/// when missing); a failure is logged, the event is already durable in the log.
fn put_data_record(data: &DataStream, event: &Event) {
    let Ok(bytes) = serde_json::to_vec(event) else {
        return;
    };
    let streams = data.streams.clone();
    let key = event.stream.clone();
    data.runtime.spawn(async move {
        let now = crate::fragment::UnixMillis::now();
        if streams.describe(EVENTS_DATA_STREAM).is_err() {
            if let Err(e) = streams.create_stream(EVENTS_DATA_STREAM, 1, now) {
                tracing::debug!(error = %e, "events data stream not created (it may exist)");
            }
        }
        let entry = crate::streams::PutEntry {
            partition_key: key,
            explicit_hash_key: None,
            data: bytes,
        };
        if let Err(e) = streams
            .put_records(EVENTS_DATA_STREAM, vec![entry], now)
            .await
        {
            tracing::warn!(error = %e, "cannot write an event to the data stream");
        }
    });
}

fn upsert(events: &mut VecDeque<Event>, event: Event) {
    if let Some(slot) = events.iter_mut().rev().find(|e| e.id == event.id) {
        *slot = event;
        return;
    }
    if events.len() >= EVENTS_MAX {
        events.pop_front();
    }
    events.push_back(event);
}

fn read_log(path: &Path) -> std::io::Result<VecDeque<Event>> {
    let mut events = VecDeque::new();
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(events);
    };
    if meta.len() > EVENT_LOG_BYTES_MAX {
        tracing::warn!(path = %path.display(), "event log larger than the read limit; starting empty");
        return Ok(events);
    }
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        // A torn last line (crash mid-append) is skipped rather than failing the server.
        if let Ok(event) = serde_json::from_str::<Event>(line) {
            upsert(&mut events, event);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, end: Option<u64>) -> Event {
        Event {
            id: id.into(),
            stream: "cam".into(),
            start: 1_000,
            end,
            label: "person".into(),
            score: 0.9,
            zone: None,
            snapshot: None,
            clip: ClipRange {
                start: 0,
                end: 10_000,
            },
            created: 5,
        }
    }

    #[test]
    fn log_survives_reopen_and_updates_replace() {
        let dir = tempfile::tempdir().unwrap();
        let hub = EventHub::open(
            dir.path(),
            Arc::new(Alerts::disabled()),
            String::new(),
            None,
        )
        .unwrap();
        hub.record(&event("a", None)).unwrap();
        hub.record(&event("b", None)).unwrap();
        hub.record(&event("a", Some(3_000))).unwrap();
        drop(hub);
        // A torn line at the end is skipped.
        let log = dir.path().join("events").join(LOG_FILE);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"{\"id\":")
            .unwrap();
        let hub = EventHub::open(
            dir.path(),
            Arc::new(Alerts::disabled()),
            String::new(),
            None,
        )
        .unwrap();
        let listed = hub.list(None, 10);
        assert_eq!(listed.len(), 2);
        assert_eq!(hub.get("a").unwrap().end, Some(3_000));
        assert_eq!(hub.list(Some("other"), 10).len(), 0);
        assert_eq!(hub.list(Some("cam"), 1).len(), 1);
    }
}
