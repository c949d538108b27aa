//! The time index of one stream: sealed segments on disk, the open segment(s) in memory.
//!
//! Sealed segments each have an index file (`segment_index`) and keep only a
//! `SegmentSummary` in memory (number range, time ranges, dedup runs: about 150 bytes per
//! segment, well under 0.1 byte per fragment at a few thousand fragments per segment). The
//! segments not yet sealed keep, per fragment:
//! - number -> entry (position in the log and the fragment's metadata);
//! - (producer ms, number) and (server ms, number) ordered sets, so a time-range listing costs
//!   O(log n + results) and pages resume exactly after the last number returned;
//! - per log segment, the span of numbers it holds and its newest server time, so retention
//!   decides per segment and removes a segment's entries by a number range.
//!
//! A listing binary-searches the sealed summaries by time (running max of range ends and
//! running min of range starts make both searches monotone even when a segment's producer
//! times overlap its neighbours'), reads from each overlapping index file only the entries in
//! range (plus a binary search's probes), and merges them with the in-memory part.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::segment_index::{EntryCounter, IndexFileError, IndexReader, SegmentSummary, timestamp};
use super::{FragmentNumber, FragmentSummary, TimestampKind};
use crate::fragment::UnixMillis;
use crate::record_log::RecordPos;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pos: RecordPos,
    pub producer_ms: u64,
    pub server_ms: u64,
    pub duration_ms: u32,
    pub size_bytes: u32,
    pub epoch: u64,
    pub sequence: u64,
    /// The epoch's dedup watermark when this record was written (0 when read back from an
    /// index file, whose dedup runs carry it instead).
    pub epoch_watermark: u64,
}

/// Numbers and newest server time held by one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    pub first_number: u64,
    pub last_number: u64,
    pub newest_server_ms: u64,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("page token fragment {0} not found")]
    NotFound(FragmentNumber),
    #[error(transparent)]
    File(#[from] IndexFileError),
}

/// Running bounds over the sealed summaries (same order), per timestamp kind:
/// `max_end[i]` = max of range ends of `0..=i`, `min_start[i]` = min of range starts of `i..`.
#[derive(Debug, Default)]
struct Bounds {
    max_end: Vec<u64>,
    min_start: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct FragmentIndex {
    log_dir: PathBuf,
    by_number: BTreeMap<u64, Entry>,
    by_producer: BTreeSet<(u64, u64)>,
    by_server: BTreeSet<(u64, u64)>,
    segments: BTreeMap<u64, SegmentSpan>,
    /// Sealed segments with an index file, by segment id (ascending).
    sealed: Vec<SegmentSummary>,
    producer_bounds: Bounds,
    server_bounds: Bounds,
    counter: EntryCounter,
}

impl FragmentIndex {
    /// An empty index whose sealed segments' files live in `log_dir`.
    pub fn new(log_dir: &Path) -> Self {
        FragmentIndex {
            log_dir: log_dir.to_path_buf(),
            ..FragmentIndex::default()
        }
    }

    /// Fragments held in memory (segments not sealed yet, or not indexable).
    pub fn memory_len(&self) -> usize {
        self.by_number.len()
    }

    /// Fragments in all segments.
    pub fn len(&self) -> u64 {
        self.by_number.len() as u64 + self.sealed.iter().map(|s| s.entries).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index-file entries read so far (probes and ranges).
    pub fn counter(&self) -> &EntryCounter {
        &self.counter
    }

    /// Bytes of memory the sealed summaries take (approximate: struct, runs and bounds).
    pub fn sealed_memory_bytes(&self) -> usize {
        let per = std::mem::size_of::<SegmentSummary>() + 4 * 8;
        self.sealed
            .iter()
            .map(|s| per + s.runs.len() * std::mem::size_of::<super::segment_index::DedupRun>())
            .sum()
    }

    pub fn sealed(&self) -> &[SegmentSummary] {
        &self.sealed
    }

    pub fn get(&self, number: u64) -> Result<Option<Entry>, IndexFileError> {
        if let Some(entry) = self.by_number.get(&number) {
            return Ok(Some(*entry));
        }
        let i = self.sealed.partition_point(|s| s.last_number < number);
        match self.sealed.get(i) {
            Some(s) if s.first_number <= number => {
                IndexReader::open(&self.log_dir, s, &self.counter)?.find(number)
            }
            _ => Ok(None),
        }
    }

    pub fn span(&self, segment: u64) -> Option<SegmentSpan> {
        if let Some(span) = self.segments.get(&segment) {
            return Some(*span);
        }
        let i = self
            .sealed
            .binary_search_by_key(&segment, |s| s.segment)
            .ok()?;
        let s = &self.sealed[i];
        Some(SegmentSpan {
            first_number: s.first_number,
            last_number: s.last_number,
            newest_server_ms: s.server_ms.1,
        })
    }

    /// Segments indexed in memory only, ascending.
    pub fn memory_segments(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    /// The in-memory entries of `segment`, in number order (to write its index file).
    pub fn memory_entries(&self, segment: u64) -> Vec<(u64, Entry)> {
        let Some(span) = self.segments.get(&segment) else {
            return Vec::new();
        };
        self.by_number
            .range(span.first_number..=span.last_number)
            .filter(|(_, e)| e.pos.segment == segment)
            .map(|(&n, e)| (n, *e))
            .collect()
    }

    /// Adds sealed segments whose index files were written or loaded; their in-memory entries
    /// (if any) are dropped. Keeps the summaries sorted and the bounds current.
    pub fn attach_sealed(&mut self, summaries: Vec<SegmentSummary>) {
        for summary in summaries {
            self.remove_memory_segment(summary.segment);
            let i = self.sealed.partition_point(|s| s.segment < summary.segment);
            self.sealed.insert(i, summary);
        }
        self.rebuild_bounds();
    }

    fn rebuild_bounds(&mut self) {
        for kind in [TimestampKind::Producer, TimestampKind::Server] {
            let ranges: Vec<(u64, u64)> = self.sealed.iter().map(|s| s.range(kind)).collect();
            let mut max_end = Vec::with_capacity(ranges.len());
            let mut running = 0;
            for r in &ranges {
                running = running.max(r.1);
                max_end.push(running);
            }
            let mut min_start = vec![0; ranges.len()];
            let mut running = u64::MAX;
            for (i, r) in ranges.iter().enumerate().rev() {
                running = running.min(r.0);
                min_start[i] = running;
            }
            let bounds = Bounds { max_end, min_start };
            match kind {
                TimestampKind::Producer => self.producer_bounds = bounds,
                TimestampKind::Server => self.server_bounds = bounds,
            }
        }
    }

    /// Sealed summaries (positions) whose `kind` range may overlap `[start, end]`.
    fn candidates(&self, kind: TimestampKind, start: u64, end: u64) -> std::ops::Range<usize> {
        let bounds = match kind {
            TimestampKind::Producer => &self.producer_bounds,
            TimestampKind::Server => &self.server_bounds,
        };
        let from = bounds.max_end.partition_point(|&m| m < start);
        let to = bounds.min_start.partition_point(|&m| m <= end);
        from..to.max(from)
    }

    pub fn insert(&mut self, number: u64, entry: Entry) {
        self.by_producer.insert((entry.producer_ms, number));
        self.by_server.insert((entry.server_ms, number));
        let span = self
            .segments
            .entry(entry.pos.segment)
            .or_insert(SegmentSpan {
                first_number: number,
                last_number: number,
                newest_server_ms: entry.server_ms,
            });
        span.first_number = span.first_number.min(number);
        span.last_number = span.last_number.max(number);
        span.newest_server_ms = span.newest_server_ms.max(entry.server_ms);
        self.by_number.insert(number, entry);
    }

    /// Drops every entry stored in `segment`; returns how many.
    pub fn remove_segment(&mut self, segment: u64) -> usize {
        if let Ok(i) = self.sealed.binary_search_by_key(&segment, |s| s.segment) {
            let removed = self.sealed.remove(i);
            self.rebuild_bounds();
            return removed.entries as usize;
        }
        self.remove_memory_segment(segment)
    }

    fn remove_memory_segment(&mut self, segment: u64) -> usize {
        let Some(span) = self.segments.remove(&segment) else {
            return 0;
        };
        let numbers: Vec<u64> = self
            .by_number
            .range(span.first_number..=span.last_number)
            .filter(|(_, e)| e.pos.segment == segment)
            .map(|(&n, _)| n)
            .collect();
        for number in &numbers {
            if let Some(entry) = self.by_number.remove(number) {
                self.by_producer.remove(&(entry.producer_ms, *number));
                self.by_server.remove(&(entry.server_ms, *number));
            }
        }
        numbers.len()
    }

    /// Fragments whose chosen timestamp lies in `[start, end]`, ordered by (timestamp, number),
    /// resuming after `after` when given; at most `limit`.
    pub fn list(&self, query: &ListQuery) -> Result<Vec<FragmentSummary>, ListError> {
        let kind = query.kind;
        let (lower, after) = match query.after {
            None => ((query.start.0, 0), false),
            Some(after) => {
                let entry = self.get(after.0)?.ok_or(ListError::NotFound(after))?;
                let ms = timestamp(kind, &entry);
                // A page token from before the range start must not widen the range.
                if ms < query.start.0 {
                    ((query.start.0, 0), false)
                } else {
                    ((ms, after.0), true)
                }
            }
        };
        let upper = (query.end.0, u64::MAX);
        if lower > upper || (after && lower == upper) || query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut found = self.list_sealed(kind, lower, after, upper, query.limit)?;
        found.extend(self.list_memory(kind, lower, after, upper, query.limit));
        found.sort_unstable_by_key(|(n, e)| (timestamp(kind, e), *n));
        found.truncate(query.limit);
        Ok(found.iter().map(|(n, e)| summarize(*n, e)).collect())
    }

    fn list_sealed(
        &self,
        kind: TimestampKind,
        lower: (u64, u64),
        after: bool,
        upper: (u64, u64),
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>, ListError> {
        let bounds = match kind {
            TimestampKind::Producer => &self.producer_bounds,
            TimestampKind::Server => &self.server_bounds,
        };
        let mut found: Vec<(u64, Entry)> = Vec::new();
        for i in self.candidates(kind, lower.0, upper.0) {
            // Enough found, and every later segment starts after the last one kept: done.
            if found.len() >= limit {
                found.sort_unstable_by_key(|(n, e)| (timestamp(kind, e), *n));
                found.truncate(limit);
                let worst = found.last().map_or(0, |(_, e)| timestamp(kind, e));
                if bounds.min_start[i] > worst {
                    break;
                }
            }
            let summary = &self.sealed[i];
            let (first, last) = summary.range(kind);
            if last < lower.0 || first > upper.0 {
                continue;
            }
            let reader = IndexReader::open(&self.log_dir, summary, &self.counter)?;
            found.extend(reader.range(kind, lower, after, upper, limit)?);
        }
        Ok(found)
    }

    fn list_memory(
        &self,
        kind: TimestampKind,
        lower: (u64, u64),
        after: bool,
        upper: (u64, u64),
        limit: usize,
    ) -> Vec<(u64, Entry)> {
        let set = match kind {
            TimestampKind::Producer => &self.by_producer,
            TimestampKind::Server => &self.by_server,
        };
        let lower = if after {
            Bound::Excluded(lower)
        } else {
            Bound::Included(lower)
        };
        set.range((lower, Bound::Included(upper)))
            .take(limit)
            .filter_map(|&(_, n)| self.by_number.get(&n).map(|e| (n, *e)))
            .collect()
    }
}

pub fn summarize(number: u64, e: &Entry) -> FragmentSummary {
    FragmentSummary {
        number: FragmentNumber(number),
        size_bytes: u64::from(e.size_bytes),
        producer_timestamp: UnixMillis(e.producer_ms),
        server_timestamp: UnixMillis(e.server_ms),
        duration_ms: e.duration_ms,
        epoch: e.epoch,
        sequence: e.sequence,
    }
}

/// A listing request against one index.
#[derive(Clone, Copy, Debug)]
pub struct ListQuery {
    pub kind: TimestampKind,
    pub start: UnixMillis,
    pub end: UnixMillis,
    pub after: Option<FragmentNumber>,
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(segment: u64, producer_ms: u64, server_ms: u64) -> Entry {
        Entry {
            pos: RecordPos { segment, offset: 8 },
            producer_ms,
            server_ms,
            duration_ms: 1000,
            size_bytes: 10,
            epoch: 1,
            sequence: 0,
            epoch_watermark: 0,
        }
    }

    fn query(start: u64, end: u64, after: Option<u64>, limit: usize) -> ListQuery {
        ListQuery {
            kind: TimestampKind::Producer,
            start: UnixMillis(start),
            end: UnixMillis(end),
            after: after.map(FragmentNumber),
            limit,
        }
    }

    fn numbers(list: Vec<FragmentSummary>) -> Vec<u64> {
        list.into_iter().map(|s| s.number.0).collect()
    }

    #[test]
    fn listing_orders_by_time_then_number_and_pages() {
        let mut index = FragmentIndex::new(Path::new("."));
        for (n, ms) in [(0, 300), (1, 100), (2, 200), (3, 200), (4, 500)] {
            index.insert(n, entry(0, ms, 1000 + n));
        }
        assert_eq!(
            numbers(index.list(&query(0, 1000, None, 10)).unwrap()),
            vec![1, 2, 3, 0, 4]
        );
        assert_eq!(
            numbers(index.list(&query(200, 300, None, 10)).unwrap()),
            vec![2, 3, 0]
        );
        assert_eq!(
            numbers(index.list(&query(0, 1000, None, 2)).unwrap()),
            vec![1, 2]
        );
        assert_eq!(
            numbers(index.list(&query(0, 1000, Some(2), 2)).unwrap()),
            vec![3, 0]
        );
        assert_eq!(
            numbers(index.list(&query(250, 1000, Some(1), 10)).unwrap()),
            vec![0, 4]
        );
        assert_eq!(
            numbers(index.list(&query(900, 100, None, 10)).unwrap()),
            Vec::<u64>::new()
        );
        assert!(matches!(
            index.list(&query(0, 1000, Some(77), 10)),
            Err(ListError::NotFound(FragmentNumber(77)))
        ));
    }

    #[test]
    fn removing_a_segment_drops_its_entries_from_every_index() {
        let mut index = FragmentIndex::new(Path::new("."));
        index.insert(0, entry(0, 10, 10));
        index.insert(1, entry(0, 20, 20));
        index.insert(2, entry(1, 30, 30));
        assert_eq!(index.span(0).unwrap().newest_server_ms, 20);
        assert_eq!(index.remove_segment(0), 2);
        assert_eq!(index.len(), 1);
        assert_eq!(
            numbers(index.list(&query(0, 100, None, 10)).unwrap()),
            vec![2]
        );
        assert_eq!(index.remove_segment(0), 0);
    }
}
