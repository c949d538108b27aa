//! The agent's durable store-and-forward buffer: every captured fragment of a live source is
//! appended to an on-disk log and fsynced before it is handed to the uplink, and it is released
//! only after the server says PERSISTED. A killed agent (SIGKILL, power cut) finds its
//! unreleased fragments at the next start and sends them again under their original identity
//! (stream, epoch, sequence), so the server stores each exactly once.
//!
//! Layout: one `record_log` in `<spool-dir>/spool/`. A fragment costs one sequential write
//! and one `fdatasync` (no rewrites: SD cards wear out). Releasing appends a small marker
//! record naming the fragment's position, without a sync of its own: a marker lost in a crash
//! only causes a resend, which the server recognises. At open both kinds of record are
//! replayed to rebuild the unreleased set, oldest first; a torn tail is cut by `record_log`.
//!
//! Space comes back in whole segments: a prefix of sealed segments whose fragments are all
//! released (or dropped) is deleted. The spool is bounded by `bytes_max` (total segment
//! bytes) and `age_max_ms` (producer time of the newest fragment of a segment). When a new
//! fragment does not fit, [`FullPolicy::DropOldest`] deletes the oldest segments even with
//! unreleased footage, counting and logging what was dropped; [`FullPolicy::RefuseNew`] keeps
//! the old footage and does not spool the new fragment (counted as refused). The decisions
//! are pure functions in `policy`, with time as an argument.
//!
//! Not thread-safe by itself: the agent wraps it in a mutex. May import `record_log` and
//! `fragment` only.

mod policy;
mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::fragment::{Fragment, FragmentId, UnixMillis};
use crate::record_log::{
    FRAME_HEADER_BYTES, LogConfig, LogError, LogReader, RecordLog, RecordPos, SEGMENT_HEADER_BYTES,
};

pub use policy::{FullPolicy, RoomDecision, SegmentView, expired, make_room, reclaimable};
pub use record::SpoolRecord;

/// Name of the spool's log directory inside the agent's state directory.
pub const SPOOL_DIR_NAME: &str = "spool";
/// Room for a fragment record's own header (ids, timestamps, stream name) above the payload.
const RECORD_HEAD_BYTES_MAX: u32 = 1024;
/// Segments are this fraction of `bytes_max`, so that dropping one frees a small share.
const SEGMENTS_PER_SPOOL_MIN: u64 = 8;
/// Bounds of the segment size, whatever `bytes_max` is.
const SEGMENT_BYTES_MIN: u64 = 256 * 1024;
const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool log: {0}")]
    Log(#[from] LogError),
    #[error("spool record at segment {segment} offset {offset} is not a fragment")]
    NotAFragment { segment: u64, offset: u64 },
    #[error("invalid spool configuration: {0}")]
    BadConfig(&'static str),
}

/// Limits of a spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The log directory (`<spool-dir>/spool`).
    pub dir: PathBuf,
    /// Most bytes on disk, segment headers and framing included.
    pub bytes_max: u64,
    /// Footage whose producer time is older than this is deleted (whole segments).
    pub age_max_ms: u64,
    pub full_policy: FullPolicy,
    /// Largest fragment payload that will be spooled.
    pub fragment_bytes_max: u32,
}

impl SpoolConfig {
    /// The spool of an agent whose state directory is `state_dir`.
    pub fn in_state_dir(state_dir: &Path) -> PathBuf {
        state_dir.join(SPOOL_DIR_NAME)
    }

    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes_max: (self.bytes_max / SEGMENTS_PER_SPOOL_MIN)
                .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX),
            record_bytes_max: self
                .fragment_bytes_max
                .saturating_add(RECORD_HEAD_BYTES_MAX),
        }
    }
}

/// What happened to a fragment offered to [`Spool::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Durable on disk.
    Spooled(RecordPos),
    /// A fragment with this identity is already spooled and unreleased.
    AlreadySpooled,
    /// Not spooled: no room under `RefuseNew`, or larger than the whole spool.
    Refused,
}

/// An unreleased fragment, as listed by [`Spool::unreleased`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    pub pos: RecordPos,
    pub id: FragmentId,
    pub producer_timestamp: UnixMillis,
    pub payload_bytes: u64,
}

/// Counters since the spool was opened, and its state now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Unreleased fragments found at open.
    pub recovered_fragments: u64,
    /// Bytes cut from a torn tail at open.
    pub recovered_bytes_truncated: u64,
    /// Records at open that were intact but not spool records (skipped).
    pub recovered_records_unreadable: u64,
    pub fragments_spooled: u64,
    pub payload_bytes_spooled: u64,
    /// Everything this process wrote into the spool's files: frames, markers, segment headers.
    pub disk_bytes_written: u64,
    pub fsyncs: u64,
    pub fragments_released: u64,
    /// Unreleased fragments deleted to make room (drop-oldest).
    pub fragments_dropped: u64,
    /// Unreleased fragments deleted for age.
    pub fragments_expired: u64,
    /// Fragments not spooled (refuse-new, or too large).
    pub fragments_refused: u64,
    pub segments_removed: u64,
    pub unreleased_fragments: u64,
    pub unreleased_payload_bytes: u64,
    /// Bytes of the spool's segments on disk now.
    pub disk_bytes: u64,
}

impl SpoolStats {
    /// Bytes written to disk per byte of fragment payload spooled (1.0 would be no overhead;
    /// file system metadata is not counted).
    pub fn write_amplification(&self) -> f64 {
        if self.payload_bytes_spooled == 0 {
            return 0.0;
        }
        self.disk_bytes_written as f64 / self.payload_bytes_spooled as f64
    }
}

#[derive(Clone, Debug)]
struct Entry {
    id: FragmentId,
    producer_timestamp: UnixMillis,
    payload_bytes: u64,
}

/// The spool. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    log: RecordLog,
    /// Unreleased fragments by position: oldest first.
    unreleased: BTreeMap<RecordPos, Entry>,
    by_id: HashMap<FragmentId, RecordPos>,
    /// Per segment, the newest producer timestamp of its fragments.
    newest: BTreeMap<u64, UnixMillis>,
    stats: SpoolStats,
}

/// What the replay at open collects.
#[derive(Default)]
struct Replay {
    unreleased: BTreeMap<RecordPos, Entry>,
    newest: BTreeMap<u64, UnixMillis>,
    unreadable: u64,
}

impl Replay {
    fn record(&mut self, pos: RecordPos, bytes: &[u8]) {
        match record::decode(bytes) {
            Some(SpoolRecord::Fragment(f)) => {
                let newest = self.newest.entry(pos.segment).or_default();
                *newest = (*newest).max(f.meta.producer_timestamp);
                self.unreleased.insert(pos, Entry::of(&f));
            }
            Some(SpoolRecord::Released(of)) => {
                self.unreleased.remove(&of);
            }
            None => self.unreadable += 1,
        }
    }
}

impl Entry {
    fn of(fragment: &Fragment) -> Self {
        Entry {
            id: fragment.meta.id.clone(),
            producer_timestamp: fragment.meta.producer_timestamp,
            payload_bytes: fragment.payload.len() as u64,
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool, truncating a torn tail and rebuilding the unreleased set.
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        if config.bytes_max < SEGMENT_BYTES_MIN {
            return Err(SpoolError::BadConfig("bytes_max must be at least 256 KiB"));
        }
        let mut replay = Replay::default();
        let (log, recovery) =
            RecordLog::open_scanning(&config.dir, config.log_config(), |pos, b| {
                replay.record(pos, b);
                Ok::<(), LogError>(())
            })?;
        if recovery.bytes_truncated > 0 || replay.unreadable > 0 {
            tracing::warn!(dir = %config.dir.display(), truncated = recovery.bytes_truncated, damage = ?recovery.damage, unreadable = replay.unreadable, "Recovered the spool after damage.");
        }
        let mut by_id = HashMap::with_capacity(replay.unreleased.len());
        // Keep the oldest copy of an identity spooled twice; later copies are never sent.
        replay
            .unreleased
            .retain(|pos, e| match by_id.entry(e.id.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(*pos);
                    true
                }
            });
        let mut spool = Spool {
            config,
            log,
            unreleased: replay.unreleased,
            by_id,
            newest: replay.newest,
            stats: SpoolStats {
                recovered_bytes_truncated: recovery.bytes_truncated,
                recovered_records_unreadable: replay.unreadable,
                ..SpoolStats::default()
            },
        };
        spool.stats.recovered_fragments = spool.unreleased.len() as u64;
        spool.reclaim()?;
        Ok(spool)
    }

    /// Appends `fragment` and fsyncs it, after deleting expired footage and making room as
    /// the full policy says.
    pub fn append(
        &mut self,
        fragment: &Fragment,
        now: UnixMillis,
    ) -> Result<Admission, SpoolError> {
        if self.by_id.contains_key(&fragment.meta.id) {
            return Ok(Admission::AlreadySpooled);
        }
        self.expire(now)?;
        let bytes = record::encode_fragment(fragment);
        let incoming = FRAME_HEADER_BYTES + SEGMENT_HEADER_BYTES + bytes.len() as u64;
        let too_large = bytes.len() > self.log.config().record_bytes_max as usize;
        let decision = make_room(
            &self.views(),
            incoming,
            self.config.bytes_max,
            self.config.full_policy,
        );
        self.remove_segments(&decision.remove, Removal::Dropped)?;
        if too_large || !decision.admit {
            self.stats.fragments_refused += 1;
            tracing::warn!(fragment = %fragment.meta.id, bytes = bytes.len(), policy = ?self.config.full_policy, "The spool is full; the fragment is not spooled.");
            return Ok(Admission::Refused);
        }
        let pos = self.write(&bytes)?;
        self.log.sync()?;
        self.stats.fsyncs += 1;
        let newest = self.newest.entry(pos.segment).or_default();
        *newest = (*newest).max(fragment.meta.producer_timestamp);
        self.unreleased.insert(pos, Entry::of(fragment));
        self.by_id.insert(fragment.meta.id.clone(), pos);
        self.stats.fragments_spooled += 1;
        self.stats.payload_bytes_spooled += fragment.payload.len() as u64;
        Ok(Admission::Spooled(pos))
    }

    /// The server persisted (or refused for good) `id`: it is never sent again. Returns
    /// whether it was spooled. The marker is not synced: losing it only causes a resend.
    pub fn release(&mut self, id: &FragmentId) -> Result<bool, SpoolError> {
        let Some(pos) = self.by_id.remove(id) else {
            return Ok(false);
        };
        self.unreleased.remove(&pos);
        self.write(&record::encode_released(pos))?;
        self.stats.fragments_released += 1;
        self.reclaim()?;
        Ok(true)
    }

    /// Deletes whole segments whose footage is older than `age_max_ms` at `now`.
    pub fn expire(&mut self, now: UnixMillis) -> Result<(), SpoolError> {
        let ids = expired(&self.views(), self.config.age_max_ms, now);
        self.remove_segments(&ids, Removal::Expired)
    }

    /// Unreleased fragments, oldest first.
    pub fn unreleased(&self) -> Vec<Spooled> {
        self.unreleased
            .iter()
            .map(|(pos, e)| Spooled {
                pos: *pos,
                id: e.id.clone(),
                producer_timestamp: e.producer_timestamp,
                payload_bytes: e.payload_bytes,
            })
            .collect()
    }

    /// A reader for spooled fragments that needs no lock on the spool.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader {
            log: self.log.reader(),
        }
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            unreleased_fragments: self.unreleased.len() as u64,
            unreleased_payload_bytes: self.unreleased.values().map(|e| e.payload_bytes).sum(),
            disk_bytes: self.log.segments().iter().map(|s| s.bytes).sum(),
            ..self.stats.clone()
        }
    }

    /// One append to the log, counting the bytes it puts on disk (a new segment's header too).
    fn write(&mut self, bytes: &[u8]) -> Result<RecordPos, SpoolError> {
        let pos = self.log.append(bytes)?;
        self.stats.disk_bytes_written += FRAME_HEADER_BYTES + bytes.len() as u64;
        if pos.offset == SEGMENT_HEADER_BYTES {
            self.stats.disk_bytes_written += SEGMENT_HEADER_BYTES;
        }
        Ok(pos)
    }

    fn reclaim(&mut self) -> Result<(), SpoolError> {
        let ids = reclaimable(&self.views());
        self.remove_segments(&ids, Removal::Released)
    }

    fn views(&self) -> Vec<SegmentView> {
        let mut unreleased: HashMap<u64, u64> = HashMap::new();
        for pos in self.unreleased.keys() {
            *unreleased.entry(pos.segment).or_default() += 1;
        }
        self.log
            .segments()
            .into_iter()
            .map(|s| SegmentView {
                id: s.id,
                bytes: s.bytes,
                sealed: s.sealed,
                unreleased: unreleased.get(&s.id).copied().unwrap_or(0),
                newest_ms: self.newest.get(&s.id).copied().unwrap_or_default(),
            })
            .collect()
    }

    /// Deletes segments and forgets the fragments in them, counting those still unreleased.
    fn remove_segments(&mut self, ids: &[u64], why: Removal) -> Result<(), SpoolError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.log.remove_segments(ids)?;
        let mut lost = 0u64;
        for &id in ids {
            self.newest.remove(&id);
            let start = RecordPos {
                segment: id,
                offset: 0,
            };
            let end = RecordPos {
                segment: id + 1,
                offset: 0,
            };
            let gone: Vec<RecordPos> = self.unreleased.range(start..end).map(|(p, _)| *p).collect();
            for pos in gone {
                if let Some(entry) = self.unreleased.remove(&pos) {
                    self.by_id.remove(&entry.id);
                    lost += 1;
                }
            }
        }
        self.stats.segments_removed += ids.len() as u64;
        match why {
            Removal::Released => {}
            Removal::Dropped => self.stats.fragments_dropped += lost,
            Removal::Expired => self.stats.fragments_expired += lost,
        }
        if lost > 0 {
            tracing::warn!(segments = ids.len(), fragments = lost, reason = ?why, "Deleted unsent footage from the spool.");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Removal {
    Released,
    Dropped,
    Expired,
}

/// Reads spooled fragments by position; cheap to clone, safe to use from other threads.
#[derive(Clone, Debug)]
pub struct SpoolReader {
    log: LogReader,
}

impl SpoolReader {
    /// The fragment at `pos` (checksum verified). A segment deleted meanwhile (dropped or
    /// expired) reads as `LogError::SegmentNotFound`.
    pub fn read(&self, pos: RecordPos) -> Result<Fragment, SpoolError> {
        match record::decode(&self.log.read(pos)?) {
            Some(SpoolRecord::Fragment(f)) => Ok(f),
            _ => Err(SpoolError::NotAFragment {
                segment: pos.segment,
                offset: pos.offset,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
