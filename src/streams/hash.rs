//! MD5 hash ranges: which shard owns a partition key.
//!
//! A key's hash is MD5 of its UTF-8 bytes read as a big-endian unsigned 128-bit integer (or an
//! explicit hash key). N shards split the space evenly: step = floor(2^128 / N), shard i covers
//! [i * step, (i + 1) * step - 1], and the last one ends at 2^128 - 1.

use md5::{Digest, Md5};

/// One shard's inclusive hash range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRange {
    pub start: u128,
    pub end: u128,
}

impl HashRange {
    pub fn contains(self, hash: u128) -> bool {
        self.start <= hash && hash <= self.end
    }
}

/// The hash of a partition key.
pub fn partition_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// floor(2^128 / n) for n >= 2 (2^128 itself does not fit in a u128).
fn step(shards: u32) -> u128 {
    let n = u128::from(shards);
    let (q, r) = (u128::MAX / n, u128::MAX % n);
    // 2^128 = q * n + r + 1: one more whole step when r + 1 == n.
    if r + 1 == n { q + 1 } else { q }
}

/// The ranges of `shards` shards at stream creation, in shard order. Empty for 0 shards.
pub fn initial_ranges(shards: u32) -> Vec<HashRange> {
    if shards <= 1 {
        return (0..shards)
            .map(|_| HashRange {
                start: 0,
                end: u128::MAX,
            })
            .collect();
    }
    let step = step(shards);
    (0..shards)
        .map(|i| {
            let start = u128::from(i) * step;
            let end = if i + 1 == shards {
                u128::MAX
            } else {
                start + step - 1
            };
            HashRange { start, end }
        })
        .collect()
}

/// Index of the range holding `hash`, if any.
pub fn shard_for(ranges: &[HashRange], hash: u128) -> Option<usize> {
    let i = ranges.partition_point(|r| r.end < hash);
    ranges.get(i).filter(|r| r.contains(hash)).map(|_| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_space_without_gaps() {
        for n in [1u32, 2, 3, 4, 7, 16, 500] {
            let ranges = initial_ranges(n);
            assert_eq!(ranges.len(), n as usize);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[n as usize - 1].end, u128::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start, "n={n}");
            }
        }
    }

    #[test]
    fn steps_match_aws() {
        // Two shards: the split is exactly at 2^127, as AWS shows it.
        let two = initial_ranges(2);
        assert_eq!(two[0].end, (1u128 << 127) - 1);
        assert_eq!(two[1].start, 1u128 << 127);
        // Three shards: floor(2^128 / 3).
        let three = initial_ranges(3);
        assert_eq!(
            three[1].start.to_string(),
            "113427455640312821154458202477256070485"
        );
    }

    #[test]
    fn keys_route_by_md5() {
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661: the low half of the space.
        assert_eq!(partition_hash("a"), 0x0cc175b9c0f1b6a831c399e269772661u128);
        let ranges = initial_ranges(2);
        assert_eq!(shard_for(&ranges, partition_hash("a")), Some(0));
        assert_eq!(shard_for(&ranges, u128::MAX), Some(1));
        assert_eq!(shard_for(&ranges, 0), Some(0));
        assert_eq!(shard_for(&[], 5), None);
    }
}
