//! One shard: its record log behind a group commit, the in-memory index of its records
//! (rebuilt by a scan at open), and its throughput buckets.
//!
//! Appends are numbered under `append_lock` in the order they are queued to the writer, so
//! counters, log order and sequence numbers agree. A record becomes visible to readers only
//! once it is durable, and readers stop at the first record still in flight, so nobody reads
//! past a record that could still fail.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::StreamsError;
use super::bucket::TokenBucket;
use super::hash::HashRange;
use super::scaling::{HeatMeter, ScalingPolicy};
use crate::fragment::UnixMillis;
use crate::record_log::retention::{SegmentAge, expired_segments};
use crate::record_log::{
    GroupCommit, GroupCommitConfig, LogConfig, LogError, LogReader, RecordLog, RecordPos,
};

/// Record format version written first in every stored record.
const RECORD_VERSION: u8 = 1;
/// version, counter, arrival ms, partition key length.
const RECORD_HEADER_BYTES: usize = 1 + 8 + 8 + 2;
/// Largest data blob of one record (AWS's default record limit).
pub const RECORD_DATA_BYTES_MAX: usize = 1024 * 1024;
/// Largest partition key in bytes (256 characters of up to 4 bytes).
pub const PARTITION_KEY_BYTES_MAX: usize = 256 * 4;
/// Per-shard limits of a provisioned stream.
pub const WRITE_BYTES_PER_S: u64 = 1024 * 1024;
pub const WRITE_RECORDS_PER_S: u64 = 1000;
pub const READ_BYTES_PER_S: u64 = 2 * 1024 * 1024;
pub const READ_CALLS_PER_S: u64 = 5;

/// A stored record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub counter: u64,
    pub arrival_ms: u64,
    pub partition_key: String,
    pub data: Vec<u8>,
}

impl StoredRecord {
    fn encode(&self) -> Vec<u8> {
        let key = self.partition_key.as_bytes();
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + key.len() + self.data.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.arrival_ms.to_be_bytes());
        out.extend_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&self.data);
        out
    }

    fn decode(bytes: &[u8]) -> Option<StoredRecord> {
        let (&version, rest) = bytes.split_first()?;
        if version != RECORD_VERSION {
            return None;
        }
        let (counter, rest) = rest.split_first_chunk::<8>()?;
        let (arrival, rest) = rest.split_first_chunk::<8>()?;
        let (key_len, rest) = rest.split_first_chunk::<2>()?;
        let (key, data) = rest.split_at_checked(usize::from(u16::from_be_bytes(*key_len)))?;
        Some(StoredRecord {
            counter: u64::from_be_bytes(*counter),
            arrival_ms: u64::from_be_bytes(*arrival),
            partition_key: String::from_utf8(key.to_vec()).ok()?,
            data: data.to_vec(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    InFlight,
    Durable(RecordPos),
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    counter: u64,
    arrival_ms: u64,
    slot: Slot,
}

#[derive(Debug)]
struct Index {
    next_counter: u64,
    last_arrival_ms: u64,
    /// Records in counter order; counters are consecutive from the front one.
    entries: VecDeque<Entry>,
    /// Newest arrival per segment, for retention.
    segment_newest_ms: BTreeMap<u64, u64>,
    /// Set when the shard is closed: no record at or above this counter will ever exist.
    end_counter: Option<u64>,
}

impl Index {
    fn position_of(&self, counter: u64) -> usize {
        self.entries.partition_point(|e| e.counter < counter)
    }

    fn set_slot(&mut self, counter: u64, slot: Slot) {
        let i = self.position_of(counter);
        if let Some(entry) = self.entries.get_mut(i).filter(|e| e.counter == counter) {
            entry.slot = slot;
            if let Slot::Durable(pos) = slot {
                let newest = self.segment_newest_ms.entry(pos.segment).or_default();
                *newest = (*newest).max(entry.arrival_ms);
            }
        }
    }
}

#[derive(Debug)]
struct Buckets {
    write_bytes: TokenBucket,
    write_records: TokenBucket,
    read_bytes: TokenBucket,
    read_calls: TokenBucket,
}

/// A record waiting for its sync.
#[derive(Debug)]
pub struct Pending {
    pub counter: u64,
    pub arrival_ms: u64,
    reply: oneshot::Receiver<Result<RecordPos, LogError>>,
}

/// What a read returns.
#[derive(Debug)]
pub struct ReadBatch {
    pub records: Vec<StoredRecord>,
    /// Counter the next read starts at.
    pub next_counter: u64,
    /// Arrival of the newest durable record not returned yet, if any.
    pub behind_arrival_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Shard {
    pub index: u32,
    pub range: HashRange,
    pub created_s: u64,
    writer: GroupCommit,
    reader: LogReader,
    state: Mutex<Index>,
    append_lock: tokio::sync::Mutex<()>,
    buckets: Mutex<Buckets>,
    heat: Mutex<HeatMeter>,
}

/// What `submit` did: queued the records, or handed them back because the shard is closed
/// (the caller routes them again with the current shard map).
#[derive(Debug)]
pub enum Submission {
    Queued(Vec<Pending>),
    Closed(Vec<(String, Vec<u8>)>),
}

impl Shard {
    /// Opens the shard's log in `dir`, rebuilding its index from a scan.
    pub fn open(
        dir: &Path,
        index: u32,
        range: HashRange,
        created_s: u64,
        segment_bytes_max: u64,
        now: UnixMillis,
    ) -> Result<Shard, StreamsError> {
        let config = LogConfig {
            segment_bytes_max,
            record_bytes_max: u32::try_from(
                RECORD_HEADER_BYTES + PARTITION_KEY_BYTES_MAX + RECORD_DATA_BYTES_MAX,
            )
            .unwrap_or(u32::MAX),
        };
        let mut state = Index {
            next_counter: 0,
            last_arrival_ms: 0,
            entries: VecDeque::new(),
            segment_newest_ms: BTreeMap::new(),
            end_counter: None,
        };
        let (log, _recovery) = RecordLog::open_scanning(dir, config, |pos, bytes| {
            let record = StoredRecord::decode(bytes).ok_or_else(|| {
                StreamsError::Corrupt(format!(
                    "undecodable record at {pos:?} in {}",
                    dir.display()
                ))
            })?;
            recover_entry(&mut state, pos, &record);
            Ok::<(), StreamsError>(())
        })?;
        let reader = log.reader();
        let writer = GroupCommit::start(log, GroupCommitConfig::default())?;
        Ok(Shard {
            index,
            range,
            created_s,
            writer,
            reader,
            state: Mutex::new(state),
            append_lock: tokio::sync::Mutex::new(()),
            buckets: Mutex::new(new_buckets(now)),
            heat: Mutex::new(HeatMeter::default()),
        })
    }

    /// Closes the shard to writes and returns its end counter. Waits for a put that is
    /// numbering records here to finish, so every counter below the end is assigned. Blocking:
    /// call it off the async workers.
    pub fn close(&self) -> Result<u64, StreamsError> {
        let _order = self.append_lock.blocking_lock();
        let mut index = self.index()?;
        let next = index.next_counter;
        let end = *index.end_counter.get_or_insert(next);
        Ok(end)
    }

    /// Marks a shard closed at `end_counter` (recovery from the stream's metadata).
    pub fn set_closed(&self, end_counter: u64) -> Result<(), StreamsError> {
        self.index()?.end_counter = Some(end_counter);
        Ok(())
    }

    /// Undoes `close` when the reshard that closed the shard could not be recorded.
    pub fn reopen(&self) -> Result<(), StreamsError> {
        self.index()?.end_counter = None;
        Ok(())
    }

    pub fn end_counter(&self) -> Result<Option<u64>, StreamsError> {
        Ok(self.index()?.end_counter)
    }

    /// Meters offered writes for on-demand scaling.
    pub fn record_heat(
        &self,
        policy: &ScalingPolicy,
        bytes: u64,
        records: u64,
        now: UnixMillis,
    ) -> Result<(), StreamsError> {
        let mut heat = self.heat.lock().map_err(|_| StreamsError::Poisoned)?;
        heat.record(policy, bytes, records, now);
        Ok(())
    }

    pub fn should_split(
        &self,
        policy: &ScalingPolicy,
        open_shards: u32,
        now: UnixMillis,
    ) -> Result<bool, StreamsError> {
        let heat = self.heat.lock().map_err(|_| StreamsError::Poisoned)?;
        Ok(policy.should_split(&heat, open_shards, now))
    }

    fn index(&self) -> Result<MutexGuard<'_, Index>, StreamsError> {
        self.state.lock().map_err(|_| StreamsError::Poisoned)
    }

    /// Whether a write of `bytes` may go in now; takes the tokens when it may.
    pub fn admit_write(&self, bytes: u64, now: UnixMillis) -> Result<bool, StreamsError> {
        let mut b = self.buckets.lock().map_err(|_| StreamsError::Poisoned)?;
        let ok = b.write_bytes.can_take(bytes, now) && b.write_records.can_take(1, now);
        if ok {
            b.write_bytes.charge(bytes, now);
            b.write_records.charge(1, now);
        }
        Ok(ok)
    }

    /// Whether a read call may start now; counts the call.
    pub fn admit_read(&self, now: UnixMillis) -> Result<bool, StreamsError> {
        let mut b = self.buckets.lock().map_err(|_| StreamsError::Poisoned)?;
        Ok(b.read_bytes.has_tokens(now) && b.read_calls.try_take(1, now))
    }

    pub fn charge_read(&self, bytes: u64, now: UnixMillis) -> Result<(), StreamsError> {
        let mut b = self.buckets.lock().map_err(|_| StreamsError::Poisoned)?;
        b.read_bytes.charge(bytes, now);
        Ok(())
    }

    /// Numbers and queues records in order; the caller awaits each with `finish`.
    pub async fn submit(
        &self,
        records: Vec<(String, Vec<u8>)>,
        now: UnixMillis,
    ) -> Result<Submission, StreamsError> {
        let _order = self.append_lock.lock().await;
        if self.index()?.end_counter.is_some() {
            return Ok(Submission::Closed(records));
        }
        let mut pending = Vec::with_capacity(records.len());
        for (partition_key, data) in records {
            let (counter, arrival_ms) = {
                let mut index = self.index()?;
                let counter = index.next_counter;
                let arrival_ms = index.last_arrival_ms.max(now.0);
                index.next_counter += 1;
                index.last_arrival_ms = arrival_ms;
                index.entries.push_back(Entry {
                    counter,
                    arrival_ms,
                    slot: Slot::InFlight,
                });
                (counter, arrival_ms)
            };
            let record = StoredRecord {
                counter,
                arrival_ms,
                partition_key,
                data,
            };
            match self.writer.submit(record.encode()).await {
                Ok(reply) => pending.push(Pending {
                    counter,
                    arrival_ms,
                    reply,
                }),
                Err(e) => {
                    self.index()?.set_slot(counter, Slot::Failed);
                    return Err(e.into());
                }
            }
        }
        Ok(Submission::Queued(pending))
    }

    /// Waits until a queued record is durable (or failed) and publishes it to readers.
    pub async fn finish(&self, pending: Pending) -> Result<(), StreamsError> {
        let result = match pending.reply.await {
            Ok(result) => result,
            Err(_) => Err(LogError::WriterStopped),
        };
        let slot = match &result {
            Ok(pos) => Slot::Durable(*pos),
            Err(_) => Slot::Failed,
        };
        self.index()?.set_slot(pending.counter, slot);
        result.map(|_| ()).map_err(StreamsError::from)
    }

    pub fn next_counter(&self) -> Result<u64, StreamsError> {
        Ok(self.index()?.next_counter)
    }

    /// Counter of the first record that arrived at or after `at_ms`.
    pub fn counter_at_time(&self, at_ms: u64) -> Result<u64, StreamsError> {
        let index = self.index()?;
        let i = index.entries.partition_point(|e| e.arrival_ms < at_ms);
        Ok(index
            .entries
            .get(i)
            .map_or(index.next_counter, |e| e.counter))
    }

    /// Reads durable records from `from_counter`: at most `limit` records and about
    /// `bytes_max` bytes (always at least one record when one is there).
    pub fn read(
        &self,
        from_counter: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<ReadBatch, StreamsError> {
        let (wanted, mut next_counter) = self.plan_read(from_counter, limit)?;
        let mut records = Vec::with_capacity(wanted.len());
        let mut bytes = 0usize;
        for (counter, pos) in wanted {
            let raw = match self.reader.read(pos) {
                Ok(raw) => raw,
                // Retention removed the segment since the plan: those records are gone.
                Err(LogError::SegmentNotFound { .. }) => {
                    next_counter = counter + 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let record = StoredRecord::decode(&raw)
                .ok_or_else(|| StreamsError::Corrupt(format!("undecodable record at {pos:?}")))?;
            if !records.is_empty() && bytes + record.data.len() > bytes_max {
                break;
            }
            bytes += record.data.len() + record.partition_key.len();
            next_counter = counter + 1;
            records.push(record);
        }
        let behind_arrival_ms = self.first_durable_arrival(next_counter)?;
        Ok(ReadBatch {
            records,
            next_counter,
            behind_arrival_ms,
        })
    }

    /// The positions to read and the counter after them.
    fn plan_read(
        &self,
        from_counter: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, RecordPos)>, u64), StreamsError> {
        let index = self.index()?;
        let mut next = from_counter;
        let mut wanted = Vec::with_capacity(limit.min(1024));
        let start = index.position_of(from_counter);
        for entry in index.entries.iter().skip(start) {
            match entry.slot {
                Slot::InFlight => break,
                Slot::Failed => next = entry.counter + 1,
                Slot::Durable(pos) => {
                    if wanted.len() == limit {
                        break;
                    }
                    wanted.push((entry.counter, pos));
                    next = entry.counter + 1;
                }
            }
        }
        Ok((wanted, next))
    }

    fn first_durable_arrival(&self, from_counter: u64) -> Result<Option<u64>, StreamsError> {
        let index = self.index()?;
        let start = index.position_of(from_counter);
        Ok(index
            .entries
            .iter()
            .skip(start)
            .take_while(|e| e.slot != Slot::InFlight)
            .find(|e| matches!(e.slot, Slot::Durable(_)))
            .map(|e| e.arrival_ms))
    }

    /// Deletes whole segments older than the retention; returns how many.
    pub fn enforce_retention(
        &self,
        retention_ms: u64,
        now: UnixMillis,
    ) -> Result<usize, StreamsError> {
        let mut log = self.writer.lock_log()?;
        let mut index = self.index()?;
        let ages: Vec<SegmentAge> = log
            .segments()
            .into_iter()
            .map(|s| SegmentAge {
                id: s.id,
                newest_ms: UnixMillis(index.segment_newest_ms.get(&s.id).copied().unwrap_or(0)),
                sealed: s.sealed,
            })
            .collect();
        let expired = expired_segments(&ages, retention_ms, now);
        if expired.is_empty() {
            return Ok(0);
        }
        log.remove_segments(&expired)?;
        let last = expired.iter().copied().max().unwrap_or(0);
        while let Some(front) = index.entries.front() {
            match front.slot {
                Slot::Durable(pos) if pos.segment <= last => {}
                Slot::Failed => {}
                _ => break,
            }
            index.entries.pop_front();
        }
        for id in &expired {
            index.segment_newest_ms.remove(id);
        }
        Ok(expired.len())
    }
}

fn recover_entry(state: &mut Index, pos: RecordPos, record: &StoredRecord) {
    // Counters were assigned in log order, so the scan sees them rising; a gap is a record
    // that failed before it was written, which never reached a client.
    state.next_counter = state.next_counter.max(record.counter + 1);
    state.last_arrival_ms = state.last_arrival_ms.max(record.arrival_ms);
    state.entries.push_back(Entry {
        counter: record.counter,
        arrival_ms: record.arrival_ms,
        slot: Slot::Durable(pos),
    });
    let newest = state.segment_newest_ms.entry(pos.segment).or_default();
    *newest = (*newest).max(record.arrival_ms);
}

fn new_buckets(now: UnixMillis) -> Buckets {
    Buckets {
        write_bytes: TokenBucket::new(WRITE_BYTES_PER_S, WRITE_BYTES_PER_S, now),
        write_records: TokenBucket::new(WRITE_RECORDS_PER_S, WRITE_RECORDS_PER_S, now),
        read_bytes: TokenBucket::new(READ_BYTES_PER_S, READ_BYTES_PER_S, now),
        read_calls: TokenBucket::new(READ_CALLS_PER_S, READ_CALLS_PER_S, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encoding_round_trips_and_rejects_junk() {
        let record = StoredRecord {
            counter: 9,
            arrival_ms: 1234,
            partition_key: "ключ".into(),
            data: vec![0, 1, 2, 255],
        };
        assert_eq!(StoredRecord::decode(&record.encode()), Some(record));
        assert_eq!(StoredRecord::decode(&[]), None);
        assert_eq!(StoredRecord::decode(&[2, 0, 0]), None);
        assert_eq!(StoredRecord::decode(&[1; 10]), None);
    }
}
