//! In-memory indexes of one stream, rebuilt from a scan of its log at open.
//!
//! - number -> entry (position in the log and the fragment's metadata);
//! - (producer ms, number) and (server ms, number) ordered sets, so a time-range listing costs
//!   O(log n + results) and pages resume exactly after the last number returned;
//! - per log segment, the span of numbers it holds and its newest server time, so retention
//!   decides per segment and removes a segment's entries by a number range.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

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
}

/// Numbers and newest server time held by one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    pub first_number: u64,
    pub last_number: u64,
    pub newest_server_ms: u64,
}

#[derive(Debug, Default)]
pub struct FragmentIndex {
    by_number: BTreeMap<u64, Entry>,
    by_producer: BTreeSet<(u64, u64)>,
    by_server: BTreeSet<(u64, u64)>,
    segments: BTreeMap<u64, SegmentSpan>,
}

impl FragmentIndex {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    pub fn get(&self, number: u64) -> Option<&Entry> {
        self.by_number.get(&number)
    }

    pub fn span(&self, segment: u64) -> Option<SegmentSpan> {
        self.segments.get(&segment).copied()
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
    pub fn list(&self, query: &ListQuery) -> Result<Vec<FragmentSummary>, FragmentNumber> {
        let set = match query.kind {
            TimestampKind::Producer => &self.by_producer,
            TimestampKind::Server => &self.by_server,
        };
        let lower = match query.after {
            None => Bound::Included((query.start.0, 0)),
            Some(after) => {
                let entry = self.by_number.get(&after.0).ok_or(after)?;
                let ms = match query.kind {
                    TimestampKind::Producer => entry.producer_ms,
                    TimestampKind::Server => entry.server_ms,
                };
                Bound::Excluded((ms, after.0)).max_start(query.start.0)
            }
        };
        let upper = Bound::Included((query.end.0, u64::MAX));
        if range_is_empty(&lower, &upper) {
            return Ok(Vec::new());
        }
        Ok(set
            .range((lower, upper))
            .take(query.limit)
            .filter_map(|&(_, number)| self.summary(number))
            .collect())
    }

    fn summary(&self, number: u64) -> Option<FragmentSummary> {
        let e = self.by_number.get(&number)?;
        Some(summarize(number, e))
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

trait MaxStart {
    fn max_start(self, start_ms: u64) -> Self;
}

impl MaxStart for Bound<(u64, u64)> {
    /// A page token from before the range start must not widen the range.
    fn max_start(self, start_ms: u64) -> Self {
        match self {
            Bound::Excluded((ms, _)) if ms < start_ms => Bound::Included((start_ms, 0)),
            other => other,
        }
    }
}

/// `BTreeSet::range` panics on an inverted range, so check first.
fn range_is_empty(lower: &Bound<(u64, u64)>, upper: &Bound<(u64, u64)>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
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
        let mut index = FragmentIndex::default();
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
        assert_eq!(
            index.list(&query(0, 1000, Some(77), 10)),
            Err(FragmentNumber(77))
        );
    }

    #[test]
    fn removing_a_segment_drops_its_entries_from_every_index() {
        let mut index = FragmentIndex::default();
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
