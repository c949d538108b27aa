//! The persistent index of one sealed log segment: `{id:020}.idx` beside `{id:020}.log`.
//!
//! Written once, when the segment seals (or when open finds it missing or damaged); never
//! changed afterwards. Layout, all little endian:
//! - header, `HEADER_BYTES`: magic `HYIX`, version u16, flags u16, entries u64, runs u64,
//!   first number u64, min/max producer ms, min/max server ms;
//! - entries, `ENTRY_BYTES` each, in number (log) order: number - first number u32, record
//!   offset u32, producer ms u64, server ms u64, payload bytes u32, duration ms u32, epoch u64,
//!   sequence u64;
//! - for each timestamp kind whose order differs from number order (flag bit clear), a
//!   permutation: u32 entry positions sorted by (timestamp, number). Server times never go
//!   backwards within a stream and producers send in order, so usually neither is present;
//! - dedup runs, `RUN_BYTES` each: epoch, sequence start, number start, length, watermark;
//! - CRC-32C of everything before it, u32.
//!
//! Open reads the whole file once to check the CRC and keeps only the header and runs in memory
//! (`SegmentSummary`); a lookup then reads with `pread` just the entries it returns, after a
//! binary search whose probes read one entry each. `EntryCounter` counts both.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::TimestampKind;
use super::index::Entry;
use crate::record_log::RecordPos;

pub const INDEX_MAGIC: [u8; 4] = *b"HYIX";
pub const INDEX_VERSION: u16 = 1;
pub const HEADER_BYTES: u64 = 64;
/// Bytes one fragment costs in an index file (plus 4 per permutation, when one is needed).
pub const ENTRY_BYTES: u64 = 48;
pub const RUN_BYTES: u64 = 40;
const CRC_BYTES: u64 = 4;
const PRODUCER_SORTED: u16 = 1;
const SERVER_SORTED: u16 = 2;
/// Largest index file open accepts (a segment of tiny records at the largest segment size).
pub const INDEX_FILE_BYTES_MAX: u64 = 1 << 32;

/// Failures reading or writing an index file; a bad file is rebuilt from its segment.
#[derive(Debug, thiserror::Error)]
pub enum IndexFileError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: &'static str },
    #[error("segment {segment} cannot be indexed compactly: {reason}")]
    Unindexable { segment: u64, reason: &'static str },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexFileError + '_ {
    move |source| IndexFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `{id:020}.idx`.
pub fn index_path(log_dir: &Path, segment: u64) -> PathBuf {
    log_dir.join(format!("{segment:020}.idx"))
}

/// Entries read from index files: binary-search probes and range reads, counted apart.
#[derive(Debug, Default)]
pub struct EntryCounter {
    pub probes: AtomicU64,
    pub ranged: AtomicU64,
}

impl EntryCounter {
    pub fn total(&self) -> u64 {
        self.probes.load(Ordering::Relaxed) + self.ranged.load(Ordering::Relaxed)
    }
}

/// One stored sequence run of a producer epoch, replayed into the dedup state at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupRun {
    pub epoch: u64,
    pub sequence_start: u64,
    pub number_start: u64,
    pub len: u64,
    pub watermark: u64,
}

/// What stays in memory of a sealed segment (about 100 bytes plus its runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub segment: u64,
    pub entries: u64,
    pub first_number: u64,
    pub last_number: u64,
    pub producer_ms: (u64, u64),
    pub server_ms: (u64, u64),
    flags: u16,
    pub runs: Vec<DedupRun>,
}

impl SegmentSummary {
    pub fn range(&self, kind: TimestampKind) -> (u64, u64) {
        match kind {
            TimestampKind::Producer => self.producer_ms,
            TimestampKind::Server => self.server_ms,
        }
    }

    fn sorted(&self, kind: TimestampKind) -> bool {
        let bit = match kind {
            TimestampKind::Producer => PRODUCER_SORTED,
            TimestampKind::Server => SERVER_SORTED,
        };
        self.flags & bit != 0
    }

    fn perm_at(&self, kind: TimestampKind) -> Option<u64> {
        if self.sorted(kind) {
            return None;
        }
        let mut at = HEADER_BYTES + self.entries * ENTRY_BYTES;
        if kind == TimestampKind::Server && !self.sorted(TimestampKind::Producer) {
            at += self.entries * 4;
        }
        Some(at)
    }
}

/// Writes the index of `segment` from its entries (number order), durably: temp file,
/// fdatasync, rename, directory fsync.
pub fn write_index(
    log_dir: &Path,
    segment: u64,
    entries: &[(u64, Entry)],
) -> Result<SegmentSummary, IndexFileError> {
    let (bytes, summary) = encode(segment, entries)?;
    let path = index_path(log_dir, segment);
    let tmp = path.with_extension("idx.tmp");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes).map_err(io_err(&tmp))?;
    file.sync_data().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(log_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(log_dir))?;
    Ok(summary)
}

fn encode(
    segment: u64,
    entries: &[(u64, Entry)],
) -> Result<(Vec<u8>, SegmentSummary), IndexFileError> {
    let unindexable = |reason| IndexFileError::Unindexable { segment, reason };
    let (first, last) = match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => return Err(unindexable("no entries")),
    };
    let by_producer = permutation(entries, |e| e.producer_ms);
    let by_server = permutation(entries, |e| e.server_ms);
    let mut flags = 0;
    if is_identity(&by_producer) {
        flags |= PRODUCER_SORTED;
    }
    if is_identity(&by_server) {
        flags |= SERVER_SORTED;
    }
    let runs = dedup_runs(entries);
    let mut out = Vec::with_capacity(
        HEADER_BYTES as usize + entries.len() * (ENTRY_BYTES as usize + 8) + runs.len() * 40 + 4,
    );
    let range = |f: fn(&Entry) -> u64| {
        let values = entries.iter().map(|(_, e)| f(e));
        (values.clone().min().unwrap_or(0), values.max().unwrap_or(0))
    };
    let summary = SegmentSummary {
        segment,
        entries: entries.len() as u64,
        first_number: first,
        last_number: last,
        producer_ms: range(|e| e.producer_ms),
        server_ms: range(|e| e.server_ms),
        flags,
        runs,
    };
    encode_header(&summary, &mut out);
    for (number, e) in entries {
        let delta = u32::try_from(number - first).map_err(|_| unindexable("number span"))?;
        let offset = u32::try_from(e.pos.offset).map_err(|_| unindexable("offset above 4 GiB"))?;
        out.extend_from_slice(&delta.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        for v in [e.producer_ms, e.server_ms] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&e.size_bytes.to_le_bytes());
        out.extend_from_slice(&e.duration_ms.to_le_bytes());
        out.extend_from_slice(&e.epoch.to_le_bytes());
        out.extend_from_slice(&e.sequence.to_le_bytes());
    }
    for (perm, bit) in [(&by_producer, PRODUCER_SORTED), (&by_server, SERVER_SORTED)] {
        if flags & bit == 0 {
            for &i in perm {
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
    }
    for run in &summary.runs {
        for v in [
            run.epoch,
            run.sequence_start,
            run.number_start,
            run.len,
            run.watermark,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok((out, summary))
}

fn encode_header(s: &SegmentSummary, out: &mut Vec<u8>) {
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&s.flags.to_le_bytes());
    for v in [
        s.entries,
        s.runs.len() as u64,
        s.first_number,
        s.producer_ms.0,
        s.producer_ms.1,
        s.server_ms.0,
        s.server_ms.1,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn permutation(entries: &[(u64, Entry)], ts: fn(&Entry) -> u64) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..entries.len() as u32).collect();
    perm.sort_by_key(|&i| {
        let (n, e) = &entries[i as usize];
        (ts(e), *n)
    });
    perm
}

fn is_identity(perm: &[u32]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i as u32 == p)
}

/// Consecutive (sequence, number) stretches of one epoch, in number order.
fn dedup_runs(entries: &[(u64, Entry)]) -> Vec<DedupRun> {
    let mut runs: Vec<DedupRun> = Vec::new();
    for &(number, e) in entries {
        if let Some(run) = runs.last_mut() {
            if run.epoch == e.epoch
                && run.sequence_start + run.len == e.sequence
                && run.number_start + run.len == number
            {
                run.len += 1;
                run.watermark = run.watermark.max(e.epoch_watermark);
                continue;
            }
        }
        runs.push(DedupRun {
            epoch: e.epoch,
            sequence_start: e.sequence,
            number_start: number,
            len: 1,
            watermark: e.epoch_watermark,
        });
    }
    runs
}

/// Reads and checks an index file; `Damaged` when it must be rebuilt.
pub fn load_summary(log_dir: &Path, segment: u64) -> Result<SegmentSummary, IndexFileError> {
    let path = index_path(log_dir, segment);
    let damaged = |reason| IndexFileError::Damaged {
        path: path.clone(),
        reason,
    };
    let len = fs::metadata(&path).map_err(io_err(&path))?.len();
    if !(HEADER_BYTES + CRC_BYTES..=INDEX_FILE_BYTES_MAX).contains(&len) {
        return Err(damaged("size out of bounds"));
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES as usize);
    if crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err(damaged("checksum mismatch"));
    }
    if body[..4] != INDEX_MAGIC || u16_at(body, 4) != INDEX_VERSION {
        return Err(damaged("unknown magic or version"));
    }
    let flags = u16_at(body, 6);
    let entries = u64_at(body, 8);
    let runs = u64_at(body, 16);
    let first_number = u64_at(body, 24);
    let perms = u64::from(flags & PRODUCER_SORTED == 0) + u64::from(flags & SERVER_SORTED == 0);
    let expected = entries
        .checked_mul(ENTRY_BYTES + 4 * perms)
        .and_then(|b| b.checked_add(runs.checked_mul(RUN_BYTES)?))
        .and_then(|b| b.checked_add(HEADER_BYTES));
    if entries == 0 || expected != Some(body.len() as u64) {
        return Err(damaged("section sizes do not match the file"));
    }
    let runs_at = (body.len() as u64 - runs * RUN_BYTES) as usize;
    let runs = body[runs_at..]
        .chunks_exact(RUN_BYTES as usize)
        .map(|c| DedupRun {
            epoch: u64_at(c, 0),
            sequence_start: u64_at(c, 8),
            number_start: u64_at(c, 16),
            len: u64_at(c, 24),
            watermark: u64_at(c, 32),
        })
        .collect();
    let last_at = (HEADER_BYTES + (entries - 1) * ENTRY_BYTES) as usize;
    let last_number = first_number + u64::from(u32_at(body, last_at));
    Ok(SegmentSummary {
        segment,
        entries,
        first_number,
        last_number,
        producer_ms: (u64_at(body, 32), u64_at(body, 40)),
        server_ms: (u64_at(body, 48), u64_at(body, 56)),
        flags,
        runs,
    })
}

/// Ranged reads of one index file, counting every entry read.
pub struct IndexReader<'a> {
    pub summary: &'a SegmentSummary,
    file: File,
    path: PathBuf,
    counter: &'a EntryCounter,
}

impl std::fmt::Debug for IndexReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexReader")
            .field("path", &self.path)
            .finish()
    }
}

impl<'a> IndexReader<'a> {
    pub fn open(
        log_dir: &Path,
        summary: &'a SegmentSummary,
        counter: &'a EntryCounter,
    ) -> Result<Self, IndexFileError> {
        let path = index_path(log_dir, summary.segment);
        let file = File::open(&path).map_err(io_err(&path))?;
        Ok(IndexReader {
            summary,
            file,
            path,
            counter,
        })
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<(), IndexFileError> {
        self.file.read_exact_at(buf, at).map_err(io_err(&self.path))
    }

    fn decode(&self, raw: &[u8]) -> (u64, Entry) {
        let number = self.summary.first_number + u64::from(u32_at(raw, 0));
        let entry = Entry {
            pos: RecordPos {
                segment: self.summary.segment,
                offset: u64::from(u32_at(raw, 4)),
            },
            producer_ms: u64_at(raw, 8),
            server_ms: u64_at(raw, 16),
            size_bytes: u32_at(raw, 24),
            duration_ms: u32_at(raw, 28),
            epoch: u64_at(raw, 32),
            sequence: u64_at(raw, 40),
            epoch_watermark: 0,
        };
        (number, entry)
    }

    /// Entries at positions `[from, to)` in number order, in one read.
    fn entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Entry)>, IndexFileError> {
        let mut raw = vec![0u8; ((to - from) * ENTRY_BYTES) as usize];
        self.read_at(&mut raw, HEADER_BYTES + from * ENTRY_BYTES)?;
        Ok(raw
            .chunks_exact(ENTRY_BYTES as usize)
            .map(|c| self.decode(c))
            .collect())
    }

    /// Entry positions (number order) of ranks `[from, to)` in `kind` order.
    fn positions(
        &self,
        kind: TimestampKind,
        from: u64,
        to: u64,
    ) -> Result<Vec<u64>, IndexFileError> {
        let Some(perm_at) = self.summary.perm_at(kind) else {
            return Ok((from..to).collect());
        };
        let mut raw = vec![0u8; ((to - from) * 4) as usize];
        self.read_at(&mut raw, perm_at + from * 4)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u64::from(u32_at(c, 0)))
            .collect())
    }

    fn probe(&self, kind: TimestampKind, rank: u64) -> Result<(u64, u64), IndexFileError> {
        self.counter.probes.fetch_add(1, Ordering::Relaxed);
        let position = self.positions(kind, rank, rank + 1)?[0];
        let (number, e) = self.entries(position, position + 1)?[0];
        Ok((timestamp(kind, &e), number))
    }

    /// First rank whose (timestamp, number) is not below `key` (or above it, if `after`).
    fn lower_bound(
        &self,
        kind: TimestampKind,
        key: (u64, u64),
        after: bool,
    ) -> Result<u64, IndexFileError> {
        let (mut lo, mut hi) = (0, self.summary.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = self.probe(kind, mid)?;
            if k < key || (after && k == key) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Entries with `lower < (timestamp, number) <= upper` (`lower` included unless `after`),
    /// in (timestamp, number) order, at most `limit`.
    pub fn range(
        &self,
        kind: TimestampKind,
        lower: (u64, u64),
        after: bool,
        upper: (u64, u64),
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, IndexFileError> {
        let from = self.lower_bound(kind, lower, after)?;
        let to = self.lower_bound(kind, upper, true)?;
        let to = to.min(from.saturating_add(limit as u64)).max(from);
        if from == to {
            return Ok(Vec::new());
        }
        self.counter.ranged.fetch_add(to - from, Ordering::Relaxed);
        if self.summary.perm_at(kind).is_none() {
            return self.entries(from, to);
        }
        let positions = self.positions(kind, from, to)?;
        positions
            .into_iter()
            .map(|p| Ok(self.entries(p, p + 1)?[0]))
            .collect()
    }

    /// The entry of `number`, by binary search over number order.
    pub fn find(&self, number: u64) -> Result<Option<Entry>, IndexFileError> {
        let (mut lo, mut hi) = (0, self.summary.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            self.counter.probes.fetch_add(1, Ordering::Relaxed);
            let (n, e) = self.entries(mid, mid + 1)?[0];
            match n.cmp(&number) {
                std::cmp::Ordering::Equal => return Ok(Some(e)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

pub fn timestamp(kind: TimestampKind, e: &Entry) -> u64 {
    match kind {
        TimestampKind::Producer => e.producer_ms,
        TimestampKind::Server => e.server_ms,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64, producer: impl Fn(u64) -> u64) -> Vec<(u64, Entry)> {
        (0..n)
            .map(|i| {
                let entry = Entry {
                    pos: RecordPos {
                        segment: 3,
                        offset: 8 + i * 100,
                    },
                    producer_ms: producer(i),
                    server_ms: 1_000 + i * 2_000,
                    duration_ms: 2_000,
                    size_bytes: 92,
                    epoch: 5,
                    sequence: i,
                    epoch_watermark: i,
                };
                (100 + i, entry)
            })
            .collect()
    }

    fn strip(mut list: Vec<(u64, Entry)>) -> Vec<(u64, Entry)> {
        for (_, e) in &mut list {
            e.epoch_watermark = 0;
        }
        list
    }

    #[test]
    fn index_file_round_trips_and_ranges_read_only_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let written = entries(1000, |i| 1_000 + i * 2_000);
        let summary = write_index(dir.path(), 3, &written).unwrap();
        let loaded = load_summary(dir.path(), 3).unwrap();
        assert_eq!(loaded, summary);
        assert_eq!(loaded.runs.len(), 1);
        assert_eq!((loaded.first_number, loaded.last_number), (100, 1099));
        let size = fs::metadata(index_path(dir.path(), 3)).unwrap().len();
        assert_eq!(
            size,
            HEADER_BYTES + 1000 * ENTRY_BYTES + RUN_BYTES + CRC_BYTES
        );
        let counter = EntryCounter::default();
        let reader = IndexReader::open(dir.path(), &loaded, &counter).unwrap();
        let got = reader
            .range(
                TimestampKind::Producer,
                (201_000, 0),
                false,
                (219_000, u64::MAX),
                1000,
            )
            .unwrap();
        assert_eq!(got, strip(written[100..=109].to_vec()));
        assert_eq!(counter.ranged.load(Ordering::Relaxed), 10);
        assert!(counter.probes.load(Ordering::Relaxed) <= 2 * 11);
        let paged = reader
            .range(
                TimestampKind::Server,
                (201_000, 200),
                true,
                (219_000, u64::MAX),
                3,
            )
            .unwrap();
        assert_eq!(paged, strip(written[101..=103].to_vec()));
        assert_eq!(
            reader.find(150).unwrap(),
            Some(strip(written[50..51].to_vec())[0].1)
        );
        assert_eq!(reader.find(5000).unwrap(), None);
    }

    #[test]
    fn out_of_order_producer_times_use_a_permutation() {
        let dir = tempfile::tempdir().unwrap();
        let written = entries(50, |i| 1_000_000 - i * 10);
        let summary = write_index(dir.path(), 3, &written).unwrap();
        let counter = EntryCounter::default();
        let reader = IndexReader::open(dir.path(), &summary, &counter).unwrap();
        let got = reader
            .range(
                TimestampKind::Producer,
                (0, 0),
                false,
                (u64::MAX, u64::MAX),
                3,
            )
            .unwrap();
        let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![149, 148, 147]);
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        write_index(dir.path(), 3, &entries(10, |i| i)).unwrap();
        let path = index_path(dir.path(), 3);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize + 5] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_summary(dir.path(), 3),
            Err(IndexFileError::Damaged { .. })
        ));
    }
}
