//! Retention as a pure function: which whole segments may be deleted at time `now`.
//!
//! No I/O and no clock: the caller passes each segment's newest timestamp and the time, so
//! tests drive it with virtual time. Rules:
//! - the active (unsealed) segment is never deleted;
//! - a segment is deleted only if its newest record is strictly older than `now - retention`;
//! - deletion takes a prefix of the segments in id order, so the log never gets a hole in the
//!   middle (a segment older than its predecessor's newest would otherwise be skipped over);
//! - a held segment (an event clip on hold lives in it) is kept, but does not stop the prefix:
//!   the expired segments around it still go.

use crate::fragment::UnixMillis;

/// What the policy needs to know about one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentAge {
    pub id: u64,
    /// Newest timestamp of any record in the segment (0 for an empty segment).
    pub newest_ms: UnixMillis,
    pub sealed: bool,
}

/// A segment's age and whether something holds it (an event clip on hold lives in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldAge {
    pub age: SegmentAge,
    /// Kept whatever its age.
    pub held: bool,
}

/// Ids of the segments to delete, oldest first.
pub fn expired_segments(segments: &[SegmentAge], retention_ms: u64, now: UnixMillis) -> Vec<u64> {
    let unheld: Vec<HeldAge> = segments
        .iter()
        .map(|&age| HeldAge { age, held: false })
        .collect();
    expired_unheld_segments(&unheld, retention_ms, now)
}

/// Like `expired_segments`, keeping held segments (which do not stop the prefix).
pub fn expired_unheld_segments(
    segments: &[HeldAge],
    retention_ms: u64,
    now: UnixMillis,
) -> Vec<u64> {
    let cutoff = now.0.saturating_sub(retention_ms);
    let mut ordered: Vec<&HeldAge> = segments.iter().collect();
    ordered.sort_unstable_by_key(|s| s.age.id);
    ordered
        .into_iter()
        .take_while(|s| s.age.sealed && s.age.newest_ms.0 < cutoff)
        .filter(|s| !s.held)
        .map(|s| s.age.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn seg(id: u64, newest_hours: u64, sealed: bool) -> SegmentAge {
        SegmentAge {
            id,
            newest_ms: UnixMillis(newest_hours * HOUR_MS),
            sealed,
        }
    }

    #[test]
    fn policy_table() {
        struct Case {
            name: &'static str,
            segments: Vec<SegmentAge>,
            retention_hours: u64,
            now_hours: u64,
            expected: Vec<u64>,
        }
        let cases = vec![
            Case {
                name: "nothing old enough",
                segments: vec![seg(0, 90, true), seg(1, 95, false)],
                retention_hours: 24,
                now_hours: 100,
                expected: vec![],
            },
            Case {
                name: "old sealed segments go, newer stay",
                segments: vec![
                    seg(0, 10, true),
                    seg(1, 50, true),
                    seg(2, 80, true),
                    seg(3, 99, false),
                ],
                retention_hours: 24,
                now_hours: 100,
                expected: vec![0, 1],
            },
            Case {
                name: "exactly at the cutoff stays",
                segments: vec![seg(0, 76, true), seg(1, 99, false)],
                retention_hours: 24,
                now_hours: 100,
                expected: vec![],
            },
            Case {
                name: "active never, however old",
                segments: vec![seg(0, 1, true), seg(1, 2, false)],
                retention_hours: 1,
                now_hours: 1000,
                expected: vec![0],
            },
            Case {
                name: "zero retention removes every sealed segment older than now",
                segments: vec![seg(0, 5, true), seg(1, 6, true), seg(2, 7, false)],
                retention_hours: 0,
                now_hours: 7,
                expected: vec![0, 1],
            },
            Case {
                name: "a prefix only: a newer segment stops the deletion",
                segments: vec![
                    seg(0, 10, true),
                    seg(1, 90, true),
                    seg(2, 20, true),
                    seg(3, 99, false),
                ],
                retention_hours: 24,
                now_hours: 100,
                expected: vec![0],
            },
            Case {
                name: "input order does not matter",
                segments: vec![
                    seg(2, 80, true),
                    seg(0, 10, true),
                    seg(3, 99, false),
                    seg(1, 20, true),
                ],
                retention_hours: 24,
                now_hours: 100,
                expected: vec![0, 1],
            },
            Case {
                name: "retention longer than time itself",
                segments: vec![seg(0, 1, true)],
                retention_hours: 87_600,
                now_hours: 2,
                expected: vec![],
            },
        ];
        for case in cases {
            let got = expired_segments(
                &case.segments,
                case.retention_hours * HOUR_MS,
                UnixMillis(case.now_hours * HOUR_MS),
            );
            assert_eq!(got, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn held_segments_stay_without_stopping_the_others() {
        let ages = [
            seg(0, 10, true),
            seg(1, 20, true),
            seg(2, 30, true),
            seg(3, 99, false),
        ];
        let segments: Vec<HeldAge> = ages
            .iter()
            .map(|&age| HeldAge {
                age,
                held: age.id == 1,
            })
            .collect();
        let got = expired_unheld_segments(&segments, 5 * HOUR_MS, UnixMillis(100 * HOUR_MS));
        assert_eq!(got, vec![0, 2]);
    }

    #[test]
    fn time_passing_expires_segments_one_by_one() {
        let segments = vec![seg(0, 10, true), seg(1, 20, true), seg(2, 30, false)];
        let retention_ms = 5 * HOUR_MS;
        let at =
            |hours: u64| expired_segments(&segments, retention_ms, UnixMillis(hours * HOUR_MS));
        assert_eq!(at(15), Vec::<u64>::new());
        assert_eq!(at(16), vec![0]);
        assert_eq!(at(26), vec![0, 1]);
        assert_eq!(at(10_000), vec![0, 1]);
    }
}
