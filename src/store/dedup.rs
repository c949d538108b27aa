//! Which (epoch, sequence) pairs a stream holds, and under which fragment number.
//!
//! Per epoch, stored sequences are kept as runs (`sequence start`, `number start`, length):
//! a producer sends its sequences in order and they are numbered in order, so one run usually
//! covers a whole epoch, and memory grows with gaps, not with fragments. The watermark is the
//! lowest sequence not known to be stored: every sequence below it is (or was, before
//! retention) persisted, which is what `open_producer` answers.
//!
//! Runs are not dropped when retention deletes fragments, so a resend of an expired fragment
//! is still recognised while the server runs; after a restart, sequences below the restored
//! watermark whose fragments are gone are reported as expired.

use std::collections::BTreeMap;

/// Most runs (stretches of consecutive sequences) kept per epoch; each gap in a producer's
/// sequence costs one. Appends that would need more are refused.
pub const RUNS_PER_EPOCH_MAX: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    number_start: u64,
    len: u64,
}

/// What is known of one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Stored(u64),
    /// Below the watermark, but its fragment is no longer known (expired before a restart).
    Expired,
    New,
}

#[derive(Clone, Debug, Default)]
pub struct EpochDedup {
    watermark: u64,
    /// Sequence start -> run.
    runs: BTreeMap<u64, Run>,
}

impl EpochDedup {
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    pub fn lookup(&self, sequence: u64) -> Seen {
        if let Some((&start, run)) = self.runs.range(..=sequence).next_back() {
            if sequence - start < run.len {
                return Seen::Stored(run.number_start + (sequence - start));
            }
        }
        if sequence < self.watermark {
            Seen::Expired
        } else {
            Seen::New
        }
    }

    /// Whether recording `sequence` might need a new run beyond the limit.
    pub fn is_full(&self) -> bool {
        self.runs.len() >= RUNS_PER_EPOCH_MAX
    }

    /// Records a stored sequence (not already recorded) and advances the watermark.
    pub fn insert(&mut self, sequence: u64, number: u64) {
        let extends_previous = self
            .runs
            .range(..sequence)
            .next_back()
            .and_then(|(&start, run)| {
                (start + run.len == sequence && run.number_start + run.len == number)
                    .then_some(start)
            });
        let start = match extends_previous {
            Some(start) => {
                if let Some(run) = self.runs.get_mut(&start) {
                    run.len += 1;
                }
                start
            }
            None => {
                self.runs.insert(
                    sequence,
                    Run {
                        number_start: number,
                        len: 1,
                    },
                );
                sequence
            }
        };
        self.merge_next(start);
        self.advance_watermark();
    }

    /// Records a run of `len` consecutive stored sequences (replayed from an index file).
    /// A run that overlaps what is known already is replayed one sequence at a time.
    pub fn insert_run(&mut self, sequence_start: u64, number_start: u64, len: u64) {
        let end = sequence_start.saturating_add(len);
        let overlaps = matches!(self.lookup(sequence_start), Seen::Stored(_))
            || self.runs.range(sequence_start..end).next().is_some();
        if overlaps {
            for i in 0..len {
                if !matches!(self.lookup(sequence_start + i), Seen::Stored(_)) {
                    self.insert(sequence_start + i, number_start + i);
                }
            }
            return;
        }
        let extends_previous =
            self.runs
                .range(..sequence_start)
                .next_back()
                .and_then(|(&start, run)| {
                    (start + run.len == sequence_start
                        && run.number_start + run.len == number_start)
                        .then_some(start)
                });
        let start = match extends_previous {
            Some(start) => {
                if let Some(run) = self.runs.get_mut(&start) {
                    run.len += len;
                }
                start
            }
            None => {
                self.runs.insert(sequence_start, Run { number_start, len });
                sequence_start
            }
        };
        self.merge_next(start);
        self.advance_watermark();
    }

    /// Joins the run at `start` with the one right after it when both sequence and number
    /// continue.
    fn merge_next(&mut self, start: u64) {
        let Some(run) = self.runs.get(&start).copied() else {
            return;
        };
        let next_start = start + run.len;
        if let Some(next) = self.runs.get(&next_start).copied() {
            if next.number_start == run.number_start + run.len {
                self.runs.remove(&next_start);
                if let Some(run) = self.runs.get_mut(&start) {
                    run.len += next.len;
                }
            }
        }
    }

    /// Raises the watermark to at least `watermark` (restored from a stored record).
    pub fn observe_watermark(&mut self, watermark: u64) {
        self.watermark = self.watermark.max(watermark);
        self.advance_watermark();
    }

    fn advance_watermark(&mut self) {
        // Bounded: each step jumps past one run.
        while let Some((&start, run)) = self.runs.range(..=self.watermark).next_back() {
            let end = start + run.len;
            if end <= self.watermark {
                break;
            }
            self.watermark = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_replayed_in_bulk_match_runs_built_one_by_one() {
        let mut one = EpochDedup::default();
        for s in (0..100).chain(150..200) {
            one.insert(s, 1000 + s);
        }
        let mut bulk = EpochDedup::default();
        bulk.insert_run(150, 1150, 50);
        bulk.insert_run(0, 1000, 60);
        bulk.insert_run(60, 1060, 40);
        bulk.insert_run(10, 1010, 5);
        assert_eq!(bulk.runs(), one.runs());
        assert_eq!(bulk.watermark(), one.watermark());
        for s in 0..210 {
            assert_eq!(bulk.lookup(s), one.lookup(s), "sequence {s}");
        }
    }

    #[test]
    fn in_order_sequences_are_one_run() {
        let mut d = EpochDedup::default();
        for s in 0..100 {
            d.insert(s, 1000 + s);
        }
        assert_eq!((d.runs(), d.watermark()), (1, 100));
        assert_eq!(d.lookup(42), Seen::Stored(1042));
        assert_eq!(d.lookup(100), Seen::New);
    }

    #[test]
    fn out_of_order_sequences_fill_the_gap_and_raise_the_watermark() {
        let mut d = EpochDedup::default();
        d.insert(0, 10);
        d.insert(2, 11);
        d.insert(3, 12);
        assert_eq!(d.watermark(), 1);
        assert_eq!(d.lookup(1), Seen::New);
        d.insert(1, 13);
        assert_eq!(d.watermark(), 4);
        assert_eq!(d.lookup(1), Seen::Stored(13));
        assert_eq!(d.lookup(3), Seen::Stored(12));
        assert_eq!(d.runs(), 3);
    }

    #[test]
    fn adjacent_runs_merge_when_numbers_continue() {
        let mut d = EpochDedup::default();
        d.insert(1, 11);
        d.insert(0, 10);
        assert_eq!((d.runs(), d.watermark()), (1, 2));
    }

    #[test]
    fn a_restored_watermark_marks_older_sequences_expired() {
        let mut d = EpochDedup::default();
        d.insert(50, 7);
        d.observe_watermark(50);
        assert_eq!(d.watermark(), 51);
        assert_eq!(d.lookup(3), Seen::Expired);
        assert_eq!(d.lookup(50), Seen::Stored(7));
    }
}
