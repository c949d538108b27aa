//! One open stream: its description, its log writer and its indexes.
//!
//! Lock order: `submit` (async, held while a record is numbered and queued) may take `state`
//! briefly; `state` may take the log lock (retention); nothing takes them the other way.
//! The log's writer thread takes only the log lock.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use super::dedup::{EpochDedup, Seen};
use super::index::{Entry, FragmentIndex, ListError, ListQuery, summarize};
use super::record::{RECORD_HEADER_BYTES, RecordHeader, patch_assigned};
use super::segment_index::{self, IndexFileError, SegmentSummary};
use super::{Appended, FragmentNumber, FragmentSummary, StoreError, StreamInfo};
use crate::fragment::{Fragment, FragmentId, StreamName, UnixMillis};
use crate::record_log::{
    GroupCommit, GroupCommitConfig, LogConfig, LogReader, RecordLog, RecordPos,
    retention::{self, HeldAge, SegmentAge},
};

const HOUR_MS: u64 = 3_600_000;
/// Times an append waits for a concurrent append of the same id before giving up; each wait
/// ends when that other append finishes, so more than a couple means something is wrong.
const SAME_ID_WAITS_MAX: usize = 8;

type Key = (u64, u64);

#[derive(Debug, Default)]
struct State {
    index: FragmentIndex,
    dedup: HashMap<u64, EpochDedup>,
    /// Ids being written now; a second append of one waits for the first.
    pending: HashMap<Key, watch::Receiver<()>>,
    /// Numbers handed out whose append has not reached the index yet.
    inflight: BTreeSet<u64>,
    /// Segments whose index file is being written now.
    sealing: BTreeSet<u64>,
}

#[derive(Debug)]
struct Submit {
    next_number: u64,
    last_server_ms: u64,
}

#[derive(Debug)]
pub struct Stream {
    name: StreamName,
    dir: PathBuf,
    info: Mutex<StreamInfo>,
    writer: GroupCommit,
    reader: LogReader,
    state: Mutex<State>,
    submit: tokio::sync::Mutex<Submit>,
}

/// Holds an id reserved for one append; dropping it releases the id and wakes waiters.
struct Reservation {
    stream: Arc<Stream>,
    key: Key,
    number: Option<u64>,
    _done: watch::Sender<()>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.stream.lock_state();
        state.pending.remove(&self.key);
        if let Some(number) = self.number {
            state.inflight.remove(&number);
        }
    }
}

enum Reserve {
    Reserved(Reservation),
    Known(FragmentNumber),
}

impl Stream {
    /// Opens the stream in `dir`: sealed segments come back from their index files; the
    /// open segment, and any sealed one whose index file is missing or damaged, are scanned
    /// (and the latter get a fresh index file).
    pub fn open(
        dir: &Path,
        info: StreamInfo,
        log_config: LogConfig,
    ) -> Result<Arc<Stream>, StoreError> {
        let log_dir = dir.join("log");
        let mut state = State {
            index: FragmentIndex::new(&log_dir),
            ..State::default()
        };
        let mut submit = Submit {
            next_number: 0,
            last_server_ms: 0,
        };
        let loaded = std::cell::RefCell::new(Vec::new());
        let indexed = |id| match segment_index::load_summary(&log_dir, id) {
            Ok(summary) => {
                loaded.borrow_mut().push(summary);
                true
            }
            Err(IndexFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                false
            }
            Err(e) => {
                tracing::warn!(stream = %info.name, error = %e, "Rebuilding a segment index from its log.");
                false
            }
        };
        let (log, recovery) =
            RecordLog::open_selective(&log_dir, log_config, indexed, |pos, bytes| {
                rebuild_one(&mut state, &mut submit, &log_dir, pos, bytes)
            })?;
        if recovery.bytes_truncated > 0 {
            tracing::warn!(stream = %info.name, bytes = recovery.bytes_truncated, "Recovered a stream log with a damaged tail.");
        }
        restore_sealed(&mut state, &mut submit, loaded.into_inner());
        let scanned_sealed: Vec<u64> = log
            .segments()
            .iter()
            .filter(|s| s.sealed)
            .map(|s| s.id)
            .collect();
        index_sealed(&mut state, &log_dir, &scanned_sealed);
        let reader = log.reader();
        let writer = GroupCommit::start(log, GroupCommitConfig::default())?;
        Ok(Arc::new(Stream {
            name: info.name.clone(),
            dir: dir.to_path_buf(),
            info: Mutex::new(info),
            writer,
            reader,
            state: Mutex::new(state),
            submit: tokio::sync::Mutex::new(submit),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lock_info(&self) -> MutexGuard<'_, StreamInfo> {
        self.info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every unlock point, so a panic elsewhere leaves it usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn next_sequence(&self, epoch: u64) -> u64 {
        self.lock_state()
            .dedup
            .get(&epoch)
            .map_or(0, EpochDedup::watermark)
    }

    /// Stores `fragment` durably unless its id is already stored.
    pub async fn append(
        self: &Arc<Self>,
        fragment: Fragment,
        now: UnixMillis,
    ) -> Result<Appended, StoreError> {
        let id = fragment.meta.id.clone();
        let mut reservation = match self.reserve(&id).await? {
            Reserve::Known(number) => return Ok(Appended::Duplicate(number)),
            Reserve::Reserved(reservation) => reservation,
        };
        let header = RecordHeader {
            number: 0,
            epoch: id.epoch,
            sequence: id.sequence,
            producer_ms: fragment.meta.producer_timestamp.0,
            server_ms: 0,
            duration_ms: fragment.meta.duration_ms,
            payload_len: u32::try_from(fragment.payload.len()).unwrap_or(u32::MAX),
            payload_crc: fragment.checksum(),
            epoch_watermark: 0,
        };
        let record = header.encode_with(&fragment.payload);
        let (reply, number, server_ms, epoch_watermark) = self
            .submit_record(record, id.epoch, now, &mut reservation)
            .await?;
        // Finish in a task of its own: if the caller stops waiting, a durable record still
        // reaches the index and the dedup state.
        let stream = Arc::clone(self);
        let finish = tokio::spawn(async move {
            let pos = reply
                .await
                .map_err(|_| crate::record_log::LogError::WriterStopped)??;
            let entry = Entry {
                pos,
                producer_ms: header.producer_ms,
                server_ms,
                duration_ms: header.duration_ms,
                size_bytes: header.payload_len,
                epoch: header.epoch,
                sequence: header.sequence,
                epoch_watermark,
            };
            stream.record_stored(number, entry);
            drop(reservation);
            stream.seal_completed();
            Ok::<_, StoreError>(Appended::Stored(FragmentNumber(number)))
        });
        finish
            .await
            .map_err(|_| StoreError::Log(crate::record_log::LogError::WriterStopped))?
    }

    /// Numbers the record, stamps the server time and watermark, and queues it to the log,
    /// all under the submit lock so that log order is number order.
    async fn submit_record(
        &self,
        mut record: Vec<u8>,
        epoch: u64,
        now: UnixMillis,
        reservation: &mut Reservation,
    ) -> Result<
        (
            tokio::sync::oneshot::Receiver<Result<RecordPos, crate::record_log::LogError>>,
            u64,
            u64,
            u64,
        ),
        StoreError,
    > {
        let mut submit = self.submit.lock().await;
        let number = submit.next_number;
        let server_ms = now.0.max(submit.last_server_ms);
        let watermark = {
            let mut state = self.lock_state();
            state.inflight.insert(number);
            reservation.number = Some(number);
            state.dedup.get(&epoch).map_or(0, EpochDedup::watermark)
        };
        patch_assigned(&mut record, number, server_ms, watermark);
        let reply = self.writer.submit(record).await?;
        submit.next_number = number + 1;
        submit.last_server_ms = server_ms;
        Ok((reply, number, server_ms, watermark))
    }

    fn record_stored(&self, number: u64, entry: Entry) {
        let mut state = self.lock_state();
        state
            .dedup
            .entry(entry.epoch)
            .or_default()
            .insert(entry.sequence, number);
        state.index.insert(number, entry);
    }

    /// Reserves `id` for this append, or answers with the number it is stored under. Waits
    /// while another append of the same id is in progress.
    async fn reserve(self: &Arc<Self>, id: &FragmentId) -> Result<Reserve, StoreError> {
        let key = (id.epoch, id.sequence);
        for _ in 0..SAME_ID_WAITS_MAX {
            let mut waiting = {
                let mut state = self.lock_state();
                let dedup = state.dedup.entry(id.epoch).or_default();
                match dedup.lookup(id.sequence) {
                    Seen::Stored(number) => return Ok(Reserve::Known(FragmentNumber(number))),
                    Seen::Expired => return Err(StoreError::FragmentExpired { id: id.clone() }),
                    Seen::New if dedup.is_full() => {
                        return Err(StoreError::SequenceGapsExceeded {
                            stream: self.name.clone(),
                            epoch: id.epoch,
                        });
                    }
                    Seen::New => {}
                }
                match state.pending.get(&key) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (done, receiver) = watch::channel(());
                        state.pending.insert(key, receiver);
                        let stream = Arc::clone(self);
                        return Ok(Reserve::Reserved(Reservation {
                            stream,
                            key,
                            number: None,
                            _done: done,
                        }));
                    }
                }
            };
            // Ends when the other append drops its reservation (its sender).
            let _ = waiting.changed().await;
        }
        Err(StoreError::Log(crate::record_log::LogError::WriterStopped))
    }

    /// Writes the index file of every in-memory segment that has sealed and whose appends
    /// have all reached the index, then serves it from that file.
    fn seal_completed(&self) {
        let (segment, entries) = {
            let mut state = self.lock_state();
            let Some(segment) = completed_segment(&state) else {
                return;
            };
            state.sealing.insert(segment);
            (segment, state.index.memory_entries(segment))
        };
        let log_dir = self.dir.join("log");
        let written = segment_index::write_index(&log_dir, segment, &entries);
        let mut state = self.lock_state();
        state.sealing.remove(&segment);
        match written {
            // Retention may have removed the segment meanwhile: then the file goes too.
            Ok(summary) if state.index.span(segment).is_some() => {
                state.index.attach_sealed(vec![summary]);
            }
            Ok(_) => remove_index_files(&log_dir, &[segment]),
            Err(e) => {
                tracing::warn!(stream = %self.name, segment, error = %e, "Kept a sealed segment indexed in memory.");
            }
        }
    }

    /// Index-file entries read so far: (binary-search probes, entries in listed ranges).
    #[cfg(test)]
    pub fn index_entries_read(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.lock_state();
        let counter = state.index.counter();
        (counter.probes.load(Relaxed), counter.ranged.load(Relaxed))
    }

    pub fn list(&self, query: &ListQuery) -> Result<Vec<FragmentSummary>, StoreError> {
        self.lock_state().index.list(query).map_err(|e| match e {
            ListError::NotFound(number) => StoreError::FragmentNotFound {
                stream: self.name.clone(),
                number,
            },
            ListError::File(e) => e.into(),
        })
    }

    /// The fragment's summary from the in-memory index, without reading its payload.
    pub fn summary(&self, number: FragmentNumber) -> Result<FragmentSummary, StoreError> {
        let entry =
            self.lock_state()
                .index
                .get(number.0)?
                .ok_or_else(|| StoreError::FragmentNotFound {
                    stream: self.name.clone(),
                    number,
                })?;
        Ok(summarize(number.0, &entry))
    }

    pub fn read(&self, number: FragmentNumber) -> Result<(FragmentSummary, Bytes), StoreError> {
        let not_found = || StoreError::FragmentNotFound {
            stream: self.name.clone(),
            number,
        };
        let entry = self
            .lock_state()
            .index
            .get(number.0)?
            .ok_or_else(not_found)?;
        let record = match self.reader.read(entry.pos) {
            Err(crate::record_log::LogError::SegmentNotFound { .. }) => return Err(not_found()),
            other => other?,
        };
        let path = self.dir.join("log");
        let corrupt = |reason: &str| StoreError::Corrupt {
            path: path.clone(),
            reason: format!("fragment {number}: {reason}"),
        };
        let (header, payload) = RecordHeader::decode(&record).map_err(corrupt)?;
        if header.number != number.0 {
            return Err(corrupt("record holds another fragment number"));
        }
        if crate::fragment::checksum(payload) != header.payload_crc {
            return Err(corrupt("payload checksum mismatch"));
        }
        let payload = Bytes::from(record).slice(RECORD_HEADER_BYTES..);
        Ok((summarize(number.0, &entry), payload))
    }

    /// Deletes the sealed segments whose fragments are all older than the retention.
    pub fn enforce_retention(&self, now: UnixMillis) -> Result<usize, StoreError> {
        let retention_ms = u64::from(self.lock_info().data_retention_hours) * HOUR_MS;
        let mut state = self.lock_state();
        let mut log = self.writer.lock_log()?;
        // Segments under a clip hold are kept until the hold is released.
        let holds = super::holds::read_holds(&self.dir);
        let ages: Vec<HeldAge> = segment_ages(&state, &log.segments())
            .into_iter()
            .map(|age| {
                let held = state
                    .index
                    .span(age.id)
                    .is_some_and(|s| super::holds::is_held(&holds, s.first_number, s.last_number));
                HeldAge { age, held }
            })
            .collect();
        let expired = retention::expired_unheld_segments(&ages, retention_ms, now);
        if expired.is_empty() {
            return Ok(0);
        }
        log.remove_segments(&expired)?;
        drop(log);
        remove_index_files(&self.dir.join("log"), &expired);
        let fragments: usize = expired
            .iter()
            .map(|&id| state.index.remove_segment(id))
            .sum();
        tracing::info!(stream = %self.name, segments = expired.len(), fragments, "Retention deleted old segments.");
        Ok(expired.len())
    }
}

/// Ages for the retention policy. A segment whose index entries may be incomplete (an append
/// in it has not reached the index yet) or unknown counts as newest possible, so it is kept.
fn segment_ages(state: &State, segments: &[crate::record_log::SegmentInfo]) -> Vec<SegmentAge> {
    let min_inflight = state.inflight.first().copied();
    let spans: Vec<_> = segments.iter().map(|s| state.index.span(s.id)).collect();
    segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            // Log order is number order: if a later segment holds an indexed number below
            // every in-flight one, this segment holds no in-flight record.
            let complete = match min_inflight {
                None => true,
                Some(min) => spans[i + 1..]
                    .iter()
                    .flatten()
                    .next()
                    .is_some_and(|s| s.first_number < min),
            };
            let newest_ms = match spans[i] {
                Some(span) if complete => span.newest_server_ms,
                _ => u64::MAX,
            };
            SegmentAge {
                id: segment.id,
                newest_ms: UnixMillis(newest_ms),
                sealed: segment.sealed,
            }
        })
        .collect()
}

/// Adds one scanned record to the indexes being rebuilt.
fn rebuild_one(
    state: &mut State,
    submit: &mut Submit,
    log_dir: &Path,
    pos: RecordPos,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let (header, _) = RecordHeader::decode(bytes).map_err(|reason| StoreError::Corrupt {
        path: log_dir.join(crate::record_log::segment_file_name(pos.segment)),
        reason: format!("record at offset {}: {reason}", pos.offset),
    })?;
    let dedup = state.dedup.entry(header.epoch).or_default();
    if !matches!(dedup.lookup(header.sequence), Seen::Stored(_)) {
        dedup.insert(header.sequence, header.number);
    }
    dedup.observe_watermark(header.epoch_watermark);
    state.index.insert(
        header.number,
        Entry {
            pos,
            producer_ms: header.producer_ms,
            server_ms: header.server_ms,
            duration_ms: header.duration_ms,
            size_bytes: header.payload_len,
            epoch: header.epoch,
            sequence: header.sequence,
            epoch_watermark: header.epoch_watermark,
        },
    );
    submit.next_number = submit.next_number.max(header.number + 1);
    submit.last_server_ms = submit.last_server_ms.max(header.server_ms);
    Ok(())
}

/// Replays what the loaded index files know: dedup runs, numbering and server time.
fn restore_sealed(state: &mut State, submit: &mut Submit, summaries: Vec<SegmentSummary>) {
    for summary in &summaries {
        for run in &summary.runs {
            let dedup = state.dedup.entry(run.epoch).or_default();
            dedup.insert_run(run.sequence_start, run.number_start, run.len);
            dedup.observe_watermark(run.watermark);
        }
        submit.next_number = submit.next_number.max(summary.last_number + 1);
        submit.last_server_ms = submit.last_server_ms.max(summary.server_ms.1);
    }
    state.index.attach_sealed(summaries);
}

/// Writes index files for sealed segments that open had to scan.
fn index_sealed(state: &mut State, log_dir: &Path, sealed: &[u64]) {
    let scanned: BTreeSet<u64> = state.index.memory_segments().into_iter().collect();
    let mut written = Vec::new();
    for &segment in sealed.iter().filter(|s| scanned.contains(s)) {
        let entries = state.index.memory_entries(segment);
        match segment_index::write_index(log_dir, segment, &entries) {
            Ok(summary) => written.push(summary),
            Err(e) => {
                tracing::warn!(segment, error = %e, "Kept a sealed segment indexed in memory.");
            }
        }
    }
    state.index.attach_sealed(written);
}

/// The oldest in-memory segment that has sealed (a later segment holds records) and has no
/// append in flight (every in-flight number is above the next segment's first number).
fn completed_segment(state: &State) -> Option<u64> {
    let segments = state.index.memory_segments();
    let (&oldest, later) = segments.split_first()?;
    let next_first = state.index.span(*later.first()?)?.first_number;
    let min_inflight = state.inflight.first().copied().unwrap_or(u64::MAX);
    (min_inflight > next_first && !state.sealing.contains(&oldest)).then_some(oldest)
}

/// Removes the index files of deleted segments; a failure only leaves a stray file that the
/// next open ignores (no segment file matches it).
fn remove_index_files(log_dir: &Path, segments: &[u64]) {
    for &segment in segments {
        let path = segment_index::index_path(log_dir, segment);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not remove an index file.")
            }
        }
    }
    if let Err(e) = crate::record_log::sync_dir(log_dir) {
        tracing::warn!(error = %e, "Could not sync a log directory after removing index files.");
    }
}
