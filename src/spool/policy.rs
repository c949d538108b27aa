//! The spool's decisions as pure functions: which whole segments to delete to reclaim space,
//! to make room for a new fragment, or because their footage is too old. No I/O and no clock:
//! the caller passes a view of the segments and the time.
//!
//! Every decision deletes a prefix of the segments in id order. Release markers always come
//! after the fragment they release, so deleting a prefix can never remove a marker while
//! keeping its fragment (which would make a released fragment come back after a restart).

use crate::fragment::UnixMillis;
use crate::record_log::retention::{SegmentAge, expired_segments};

/// What to do when a new fragment does not fit within `spool_bytes_max`. In config files:
/// `"drop-oldest"` or `"refuse-new"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the oldest whole segments, even with unreleased footage in them.
    #[default]
    DropOldest,
    /// Keep the old footage and do not spool the new fragment.
    RefuseNew,
}

/// What the decisions need to know about one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentView {
    pub id: u64,
    pub bytes: u64,
    /// Only sealed segments can be deleted; the active one takes the appends.
    pub sealed: bool,
    /// Fragments in it not yet released.
    pub unreleased: u64,
    /// Newest producer timestamp of its fragments (0 when it holds none).
    pub newest_ms: UnixMillis,
}

/// The answer to "may a fragment of this size be spooled now?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomDecision {
    /// Segments to delete first, oldest first.
    pub remove: Vec<u64>,
    /// Whether the fragment is then appended.
    pub admit: bool,
}

/// The prefix of sealed segments whose fragments are all released.
pub fn reclaimable(segments: &[SegmentView]) -> Vec<u64> {
    sorted(segments)
        .take_while(|s| s.sealed && s.unreleased == 0)
        .map(|s| s.id)
        .collect()
}

/// The prefix of sealed segments whose newest footage is older than `now - age_max_ms`.
pub fn expired(segments: &[SegmentView], age_max_ms: u64, now: UnixMillis) -> Vec<u64> {
    let ages: Vec<SegmentAge> = segments
        .iter()
        .map(|s| SegmentAge {
            id: s.id,
            newest_ms: s.newest_ms,
            sealed: s.sealed,
        })
        .collect();
    expired_segments(&ages, age_max_ms, now)
}

/// Makes room for `incoming_bytes` within `bytes_max`: released segments go first; then, under
/// `DropOldest`, the oldest segments whatever they hold, until the fragment fits.
pub fn make_room(
    segments: &[SegmentView],
    incoming_bytes: u64,
    bytes_max: u64,
    policy: FullPolicy,
) -> RoomDecision {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let fits = |total: u64| total.saturating_add(incoming_bytes) <= bytes_max;
    let mut remove = Vec::new();
    for segment in sorted(segments) {
        if fits(total) || !segment.sealed {
            break;
        }
        let released = segment.unreleased == 0;
        if !released && policy == FullPolicy::RefuseNew {
            break;
        }
        remove.push(segment.id);
        total -= segment.bytes;
    }
    RoomDecision {
        admit: fits(total),
        remove,
    }
}

fn sorted(segments: &[SegmentView]) -> impl Iterator<Item = &SegmentView> {
    let mut ordered: Vec<&SegmentView> = segments.iter().collect();
    ordered.sort_unstable_by_key(|s| s.id);
    ordered.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, bytes: u64, unreleased: u64, newest_ms: u64) -> SegmentView {
        SegmentView {
            id,
            bytes,
            sealed: true,
            unreleased,
            newest_ms: UnixMillis(newest_ms),
        }
    }

    fn active(id: u64, bytes: u64) -> SegmentView {
        SegmentView {
            sealed: false,
            ..seg(id, bytes, 1, 0)
        }
    }

    #[test]
    fn only_a_released_prefix_is_reclaimed() {
        let segments = [
            seg(0, 10, 0, 1),
            seg(1, 10, 2, 1),
            seg(2, 10, 0, 1),
            active(3, 5),
        ];
        assert_eq!(reclaimable(&segments), vec![0]);
        let all_released = [seg(1, 10, 0, 1), seg(0, 10, 0, 1), active(2, 5)];
        assert_eq!(
            reclaimable(&all_released),
            vec![0, 1],
            "input order does not matter"
        );
        let mut idle_active = active(0, 100);
        idle_active.unreleased = 0;
        assert_eq!(
            reclaimable(&[idle_active]),
            Vec::<u64>::new(),
            "never the active one"
        );
    }

    #[test]
    fn room_under_each_policy() {
        let segments = [
            seg(0, 40, 1, 1),
            seg(1, 40, 0, 1),
            seg(2, 40, 3, 1),
            active(3, 10),
        ];
        // 130 held; 20 more fits in 150 without touching anything.
        let fits = make_room(&segments, 20, 150, FullPolicy::DropOldest);
        assert_eq!(
            fits,
            RoomDecision {
                remove: vec![],
                admit: true
            }
        );

        // 30 more needs 10 bytes: the oldest segment goes, though it is unreleased.
        let drop = make_room(&segments, 30, 150, FullPolicy::DropOldest);
        assert_eq!(
            drop,
            RoomDecision {
                remove: vec![0],
                admit: true
            }
        );
        let refuse = make_room(&segments, 30, 150, FullPolicy::RefuseNew);
        assert_eq!(
            refuse,
            RoomDecision {
                remove: vec![],
                admit: false
            }
        );

        // Needing 90 bytes: drop-oldest takes three segments and never the active one.
        let deep = make_room(&segments, 110, 150, FullPolicy::DropOldest);
        assert_eq!(
            deep,
            RoomDecision {
                remove: vec![0, 1, 2],
                admit: true
            }
        );
        let too_big = make_room(&segments, 150, 150, FullPolicy::DropOldest);
        assert_eq!(
            too_big,
            RoomDecision {
                remove: vec![0, 1, 2],
                admit: false
            }
        );
    }

    #[test]
    fn refuse_new_still_reclaims_released_segments() {
        let segments = [
            seg(0, 40, 0, 1),
            seg(1, 40, 0, 1),
            seg(2, 40, 1, 1),
            active(3, 10),
        ];
        let decision = make_room(&segments, 30, 100, FullPolicy::RefuseNew);
        assert_eq!(
            decision,
            RoomDecision {
                remove: vec![0, 1],
                admit: true
            }
        );
        let refused = make_room(&segments, 70, 100, FullPolicy::RefuseNew);
        assert_eq!(
            refused,
            RoomDecision {
                remove: vec![0, 1],
                admit: false
            }
        );
    }

    #[test]
    fn footage_expires_by_producer_time_as_time_passes() {
        let segments = [seg(0, 1, 1, 1_000), seg(1, 1, 1, 5_000), active(2, 1)];
        let at = |now: u64| expired(&segments, 2_000, UnixMillis(now));
        assert_eq!(at(2_500), Vec::<u64>::new());
        assert_eq!(at(3_001), vec![0]);
        assert_eq!(at(7_001), vec![0, 1]);
        assert_eq!(at(u64::MAX), vec![0, 1], "the active segment never expires");
    }
}
