//! Server fragment storage per video stream.
//!
//! Owns `<root>/streams/<name>/`: `stream.json` (the stream's description, replaced
//! atomically) and `log/` (a `record_log` of fragment records: a small binary header, then the
//! opaque payload). It may import `record_log` and `fragment`; it never looks inside payloads.
//!
//! Behaviour:
//! - `append` is durable when it returns: each stream has a group-commit writer, so concurrent
//!   appends share fsyncs. The writer's queue is bounded; appenders wait for room.
//! - Dedup by `FragmentId`: an id already stored returns `Appended::Duplicate` with its number
//!   and writes nothing; two concurrent appends of one id are serialised on a reservation, so
//!   only one is stored. `open_producer` answers the epoch's watermark: every lower sequence
//!   is persisted.
//! - Fragment numbers rise with log order; server timestamps come from `now` but never go
//!   backwards within a stream.
//! - Each sealed log segment has an index file (`segment_index`: 48 bytes per fragment,
//!   written when it seals) and keeps only a summary in memory (about 150 bytes per segment);
//!   the open segment is indexed in memory (number, producer time, server time). Open loads
//!   index files and scans only the open segment and any sealed one whose index file is
//!   missing or damaged (rebuilding it). Listing a time range binary-searches the summaries,
//!   then each overlapping index file, and reads only the entries it returns.
//! - Retention deletes whole sealed segments whose newest server timestamp is older than
//!   `now - retention` (the pure policy in `record_log::retention`); a decrease applies at once.
//! - Limits: `STREAMS_MAX` streams, `StoreConfig::fragment_bytes_max` per fragment,
//!   `LIST_FRAGMENTS_MAX` results per listing.

mod dedup;
pub mod holds;
pub mod index;
mod meta;
mod number;
mod record;
pub mod segment_index;
mod stream;
mod types;
mod update;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use rand::Rng;

pub use number::{FRAGMENT_NUMBER_DIGITS, FragmentNumber, FragmentNumberError};
pub use record::RECORD_HEADER_BYTES;
pub use types::{
    Appended, FragmentSummary, NewStream, RETENTION_HOURS_MAX, RetentionChange, StoreConfig,
    StoreError, StreamInfo, StreamStatus, StreamUpdate, TAGS_MAX, TimestampKind,
};

use crate::fragment::{Fragment, StreamName, UnixMillis};
use crate::record_log::LogConfig;
use index::ListQuery;
use stream::Stream;

/// Most streams one store holds.
pub const STREAMS_MAX: usize = 10_000;
/// Most fragments one `list_fragments` call returns (the Kinesis Video page limit).
pub const LIST_FRAGMENTS_MAX: usize = 1_000;
/// Characters of a stream version string.
const VERSION_CHARS: usize = 12;

/// All video streams under one data directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    streams: RwLock<BTreeMap<StreamName, Arc<Stream>>>,
}

impl Store {
    /// Opens the store under `root`, reopening (and recovering) every stream found there.
    pub fn open(root: &Path, config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        validate_retention(config.default_retention_hours)?;
        let streams_dir = root.join("streams");
        fs::create_dir_all(&streams_dir).map_err(|e| StoreError::io(&streams_dir, e))?;
        let trash = root.join("trash");
        if trash.exists() {
            fs::remove_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
        }
        let store = Store {
            root: root.to_path_buf(),
            config,
            streams: RwLock::new(BTreeMap::new()),
        };
        let mut streams = BTreeMap::new();
        for entry in fs::read_dir(&streams_dir).map_err(|e| StoreError::io(&streams_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&streams_dir, e))?;
            if let Some(stream) = store.open_existing(&entry.path())? {
                let name = stream.lock_info().name.clone();
                streams.insert(name, stream);
            }
        }
        tracing::info!(root = %root.display(), streams = streams.len(), "Opened the fragment store.");
        *store.write_streams() = streams;
        Ok(Arc::new(store))
    }

    /// The data directory the store lives in (other server state, such as keys, sits beside it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens one stream directory; `None` for one left half-created by a crash.
    fn open_existing(&self, dir: &Path) -> Result<Option<Arc<Stream>>, StoreError> {
        let Some(name) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| StreamName::new(n).ok())
        else {
            return Ok(None);
        };
        if !dir.join(meta::STREAM_FILE).exists() {
            tracing::warn!(dir = %dir.display(), "Skipped a stream directory without stream.json.");
            return Ok(None);
        }
        let info = meta::read_stream_info(dir)?;
        if info.name != name {
            let reason = format!(
                "describes stream {} but lives in directory {name}",
                info.name
            );
            return Err(StoreError::Corrupt {
                path: dir.join(meta::STREAM_FILE),
                reason,
            });
        }
        Stream::open(dir, info, self.log_config()).map(Some)
    }

    fn log_config(&self) -> LogConfig {
        let record_bytes_max = self
            .config
            .fragment_bytes_max
            .saturating_add(RECORD_HEADER_BYTES as u32);
        LogConfig {
            segment_bytes_max: self.config.segment_bytes_max,
            record_bytes_max,
        }
    }

    fn read_streams(&self) -> RwLockReadGuard<'_, BTreeMap<StreamName, Arc<Stream>>> {
        // The map is only swapped whole or edited by single inserts/removes: never torn.
        self.streams
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_streams(&self) -> RwLockWriteGuard<'_, BTreeMap<StreamName, Arc<Stream>>> {
        self.streams
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stream(&self, name: &StreamName) -> Result<Arc<Stream>, StoreError> {
        self.read_streams()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::StreamNotFound(name.clone()))
    }

    pub fn create_stream(&self, new: NewStream, now: UnixMillis) -> Result<StreamInfo, StoreError> {
        let retention = new
            .data_retention_hours
            .unwrap_or(self.config.default_retention_hours);
        validate_retention(retention)?;
        update::check_tag_count(&new.name, new.tags.len())?;
        let mut streams = self.write_streams();
        if streams.contains_key(&new.name) {
            return Err(StoreError::StreamExists(new.name));
        }
        if streams.len() >= STREAMS_MAX {
            return Err(StoreError::StreamLimitExceeded { limit: STREAMS_MAX });
        }
        let info = StreamInfo {
            arn: self.arn(&new.name, now),
            name: new.name,
            device_name: new.device_name,
            media_type: new.media_type,
            kms_key_id: new.kms_key_id,
            version: new_version(),
            status: StreamStatus::Active,
            creation_time: now,
            data_retention_hours: retention,
            tags: new.tags,
        };
        let stream = self.create_on_disk(&info)?;
        streams.insert(info.name.clone(), stream);
        tracing::info!(stream = %info.name, retention_hours = retention, "Created a stream.");
        Ok(info)
    }

    /// Directory, empty log, then `stream.json` last: a directory without it is incomplete.
    fn create_on_disk(&self, info: &StreamInfo) -> Result<Arc<Stream>, StoreError> {
        let streams_dir = self.root.join("streams");
        let dir = streams_dir.join(info.name.as_str());
        if dir.exists() {
            // Left half-created by a crash (open skipped it): start again.
            fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        fs::create_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        meta::sync_dir(&streams_dir)?;
        let stream = Stream::open(&dir, info.clone(), self.log_config())?;
        meta::write_stream_info(&dir, info)?;
        Ok(stream)
    }

    fn arn(&self, name: &StreamName, now: UnixMillis) -> String {
        let StoreConfig {
            region, account_id, ..
        } = &self.config;
        format!(
            "arn:aws:kinesisvideo:{region}:{account_id}:stream/{name}/{}",
            now.0
        )
    }

    pub fn describe_stream(&self, name: &StreamName) -> Result<StreamInfo, StoreError> {
        Ok(self.stream(name)?.lock_info().clone())
    }

    /// Every stream, sorted by name.
    pub fn list_streams(&self) -> Vec<StreamInfo> {
        self.read_streams()
            .values()
            .map(|s| s.lock_info().clone())
            .collect()
    }

    /// Removes the stream and its data; it is gone from listings when this returns.
    pub fn delete_stream(
        &self,
        name: &StreamName,
        current_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut streams = self.write_streams();
        let stream = streams
            .get(name)
            .ok_or_else(|| StoreError::StreamNotFound(name.clone()))?;
        if let Some(given) = current_version {
            check_version(&stream.lock_info(), given)?;
        }
        let dir = stream.dir().to_path_buf();
        streams.remove(name);
        drop(streams);
        // Rename first (atomic and durable), then delete at leisure: a crash mid-delete leaves
        // only the trash, which the next open clears.
        let trash = self.root.join("trash");
        fs::create_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
        let doomed = trash.join(format!("{name}-{}", new_version()));
        fs::rename(&dir, &doomed).map_err(|e| StoreError::io(&dir, e))?;
        meta::sync_dir(&self.root.join("streams"))?;
        if let Err(e) = fs::remove_dir_all(&doomed) {
            tracing::warn!(dir = %doomed.display(), error = %e, "Could not remove a deleted stream's files yet.");
        }
        tracing::info!(stream = %name, "Deleted a stream.");
        Ok(())
    }

    /// Applies a retention change if `current_version` matches; a decrease deletes expired
    /// segments at once.
    pub fn update_retention(
        &self,
        name: &StreamName,
        current_version: &str,
        change: RetentionChange,
        now: UnixMillis,
    ) -> Result<StreamInfo, StoreError> {
        let stream = self.stream(name)?;
        let info = {
            let mut info = stream.lock_info();
            check_version(&info, current_version)?;
            let mut updated = info.clone();
            updated.data_retention_hours = apply_change(info.data_retention_hours, change)?;
            updated.version = new_version();
            meta::write_stream_info(stream.dir(), &updated)?;
            *info = updated.clone();
            updated
        };
        if matches!(change, RetentionChange::Decrease(_)) {
            stream.enforce_retention(now)?;
        }
        Ok(info)
    }

    /// Registers a producer session; returns the sequence it should continue from.
    pub fn open_producer(
        &self,
        name: &StreamName,
        epoch: u64,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        Ok(self.stream_for_producer(name, now)?.next_sequence(epoch))
    }

    fn stream_for_producer(
        &self,
        name: &StreamName,
        now: UnixMillis,
    ) -> Result<Arc<Stream>, StoreError> {
        match self.stream(name) {
            Err(StoreError::StreamNotFound(_)) if self.config.create_on_first_use => {
                match self.create_stream(NewStream::named(name.clone()), now) {
                    Ok(_) | Err(StoreError::StreamExists(_)) => self.stream(name),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Stores a fragment; durable when it returns. Safe to call from many tasks at once.
    pub async fn append(
        &self,
        fragment: Fragment,
        now: UnixMillis,
    ) -> Result<Appended, StoreError> {
        let limit = self.config.fragment_bytes_max;
        if fragment.payload.len() > limit as usize {
            return Err(StoreError::FragmentTooLarge {
                bytes: fragment.payload.len(),
                limit,
            });
        }
        let stream = self.stream_for_producer(&fragment.meta.id.stream, now)?;
        stream.append(fragment, now).await
    }

    /// Fragments with the chosen timestamp in `[start, end]`, ordered by that timestamp then
    /// number, after the fragment `after` (paging), at most `limit` (capped at
    /// `LIST_FRAGMENTS_MAX`).
    pub fn list_fragments(
        &self,
        name: &StreamName,
        kind: TimestampKind,
        start: UnixMillis,
        end: UnixMillis,
        after: Option<FragmentNumber>,
        limit: usize,
    ) -> Result<Vec<FragmentSummary>, StoreError> {
        let limit = limit.min(LIST_FRAGMENTS_MAX);
        self.stream(name)?.list(&ListQuery {
            kind,
            start,
            end,
            after,
            limit,
        })
    }

    /// The fragment's summary, from memory (no payload read).
    pub fn fragment_summary(
        &self,
        name: &StreamName,
        number: FragmentNumber,
    ) -> Result<FragmentSummary, StoreError> {
        self.stream(name)?.summary(number)
    }

    /// The fragment's summary and exact payload (checksum verified).
    pub fn read_fragment(
        &self,
        name: &StreamName,
        number: FragmentNumber,
    ) -> Result<(FragmentSummary, Bytes), StoreError> {
        self.stream(name)?.read(number)
    }

    /// Applies every stream's retention at `now`; returns the segments deleted.
    pub fn enforce_retention(&self, now: UnixMillis) -> Result<usize, StoreError> {
        let streams: Vec<Arc<Stream>> = self.read_streams().values().cloned().collect();
        let mut deleted = 0;
        for stream in streams {
            deleted += stream.enforce_retention(now)?;
        }
        Ok(deleted)
    }
}

fn validate_retention(hours: u32) -> Result<(), StoreError> {
    if hours > RETENTION_HOURS_MAX {
        return Err(StoreError::InvalidRetention {
            reason: format!("{hours} hours is above the limit of {RETENTION_HOURS_MAX}"),
        });
    }
    Ok(())
}

fn apply_change(current: u32, change: RetentionChange) -> Result<u32, StoreError> {
    let invalid = |reason: String| StoreError::InvalidRetention { reason };
    let hours = match change {
        RetentionChange::Increase(0) | RetentionChange::Decrease(0) => {
            return Err(invalid("a retention change must be at least 1 hour".into()));
        }
        RetentionChange::Increase(delta) => current.saturating_add(delta),
        RetentionChange::Decrease(delta) => current
            .checked_sub(delta)
            .ok_or_else(|| invalid(format!("cannot decrease {current} hours by {delta}")))?,
    };
    validate_retention(hours)?;
    Ok(hours)
}

fn check_version(info: &StreamInfo, given: &str) -> Result<(), StoreError> {
    if info.version != given {
        return Err(StoreError::VersionMismatch {
            name: info.name.clone(),
            given: given.chars().take(64).collect(),
            actual: info.version.clone(),
        });
    }
    Ok(())
}

/// A fresh version string: random, so two updates never share one.
fn new_version() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(VERSION_CHARS)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests;
