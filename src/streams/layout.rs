//! Resharding layout, pure: where a split puts its children, whether two shards may merge,
//! and the uniform layout UpdateShardCount moves to. No I/O; the registry applies the plans.

use super::StreamsError;
use super::hash::{HashRange, initial_ranges};

/// A child shard to create: its range and the closing shards it descends from (at most two:
/// `ParentShardId` and `AdjacentParentShardId`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildPlan {
    pub range: HashRange,
    pub parents: Vec<u32>,
}

/// The two children of splitting `parent` at `new_start`. AWS requires
/// `start + 1 < new_start < end`, so each child keeps at least two hash keys.
pub fn split(parent: HashRange, new_start: u128) -> Option<(HashRange, HashRange)> {
    let valid =
        parent.start.checked_add(1).is_some_and(|s| s < new_start) && new_start < parent.end;
    valid.then(|| {
        (
            HashRange {
                start: parent.start,
                end: new_start - 1,
            },
            HashRange {
                start: new_start,
                end: parent.end,
            },
        )
    })
}

/// The middle of a range as a split point, when the range is wide enough to split.
pub fn midpoint(range: HashRange) -> Option<u128> {
    let middle = range.start + (range.end - range.start) / 2 + 1;
    split(range, middle).map(|_| middle)
}

/// The union of two ranges when they touch (in either order).
pub fn merge(a: HashRange, b: HashRange) -> Option<HashRange> {
    let (low, high) = if a.start <= b.start { (a, b) } else { (b, a) };
    (low.end.checked_add(1) == Some(high.start)).then_some(HashRange {
        start: low.start,
        end: high.end,
    })
}

/// UpdateShardCount's bounds: at most double, at least half, within the shard limit.
pub fn check_target(current: u32, target: u32, shards_max: u32) -> Result<(), StreamsError> {
    if target == 0 || target > shards_max {
        return Err(StreamsError::LimitExceeded(format!(
            "TargetShardCount {target} must be between 1 and {shards_max}."
        )));
    }
    if u64::from(target) > 2 * u64::from(current) {
        return Err(StreamsError::InvalidArgument(format!(
            "UpdateShardCount cannot scale up beyond double the current open shard count of {current}; requested {target}."
        )));
    }
    if u64::from(target) * 2 < u64::from(current) {
        return Err(StreamsError::InvalidArgument(format!(
            "UpdateShardCount cannot scale down below half the current open shard count of {current}; requested {target}."
        )));
    }
    Ok(())
}

/// The uniform layout of `target` shards replacing every open shard. Each child's parents
/// are the open shards its range overlaps, largest overlap first, at most two (AWS's lineage
/// fields hold two); from a uniform layout doubling and halving never need more.
pub fn uniform_children(open: &[(u32, HashRange)], target: u32) -> Vec<ChildPlan> {
    initial_ranges(target)
        .into_iter()
        .map(|range| {
            let mut overlaps: Vec<(u128, u32)> = open
                .iter()
                .filter_map(|&(index, r)| overlap(range, r).map(|n| (n, index)))
                .collect();
            overlaps.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut parents: Vec<u32> = overlaps.into_iter().take(2).map(|(_, i)| i).collect();
            parents.sort_unstable();
            ChildPlan { range, parents }
        })
        .collect()
}

/// Number of keys two ranges share, minus one (so the full space fits), if they share any.
fn overlap(a: HashRange, b: HashRange) -> Option<u128> {
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    (start <= end).then(|| end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u128, end: u128) -> HashRange {
        HashRange { start, end }
    }

    #[test]
    fn split_needs_a_key_strictly_inside() {
        let parent = r(10, 20);
        assert_eq!(split(parent, 15), Some((r(10, 14), r(15, 20))));
        assert_eq!(split(parent, 12), Some((r(10, 11), r(12, 20))));
        for bad in [0, 10, 11, 20, 21, u128::MAX] {
            assert_eq!(split(parent, bad), None, "{bad}");
        }
        let full = r(0, u128::MAX);
        assert_eq!(midpoint(full), Some(1u128 << 127));
        assert_eq!(midpoint(r(5, 7)), None);
    }

    #[test]
    fn merge_only_joins_touching_ranges() {
        assert_eq!(merge(r(0, 9), r(10, 20)), Some(r(0, 20)));
        assert_eq!(merge(r(10, 20), r(0, 9)), Some(r(0, 20)));
        assert_eq!(merge(r(0, 8), r(10, 20)), None);
        assert_eq!(merge(r(0, 10), r(10, 20)), None);
        assert_eq!(merge(r(0, u128::MAX), r(0, u128::MAX)), None);
    }

    #[test]
    fn targets_are_bounded_by_double_and_half() {
        assert!(check_target(2, 4, 500).is_ok());
        assert!(check_target(4, 2, 500).is_ok());
        assert!(check_target(3, 2, 500).is_ok());
        assert!(matches!(
            check_target(2, 5, 500),
            Err(StreamsError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_target(5, 2, 500),
            Err(StreamsError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_target(2, 0, 500),
            Err(StreamsError::LimitExceeded(_))
        ));
        assert!(matches!(
            check_target(400, 501, 500),
            Err(StreamsError::LimitExceeded(_))
        ));
    }

    #[test]
    fn doubling_splits_each_parent_and_halving_merges_pairs() {
        let two: Vec<(u32, HashRange)> = initial_ranges(2)
            .into_iter()
            .zip(0..)
            .map(|(r, i)| (i, r))
            .collect();
        let four = uniform_children(&two, 4);
        assert_eq!(four.len(), 4);
        let parents: Vec<Vec<u32>> = four.iter().map(|c| c.parents.clone()).collect();
        assert_eq!(parents, vec![vec![0], vec![0], vec![1], vec![1]]);
        let open: Vec<(u32, HashRange)> = four.iter().zip(2..).map(|(c, i)| (i, c.range)).collect();
        let back = uniform_children(&open, 2);
        assert_eq!(back[0].parents, vec![2, 3]);
        assert_eq!(back[1].parents, vec![4, 5]);
        assert_eq!(back[0].range, two[0].1);
        assert_eq!(back[1].range, two[1].1);
    }

    #[test]
    fn odd_targets_name_at_most_two_parents() {
        let three: Vec<(u32, HashRange)> = initial_ranges(3)
            .into_iter()
            .zip(0..)
            .map(|(r, i)| (i, r))
            .collect();
        for child in uniform_children(&three, 5) {
            assert!((1..=2).contains(&child.parents.len()), "{child:?}");
        }
        let children = uniform_children(&three, 2);
        assert_eq!(children[0].parents, vec![0, 1]);
        assert_eq!(children[1].parents, vec![1, 2]);
    }
}
