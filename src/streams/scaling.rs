//! On-demand scaling policy, pure: a shard that stays hot (its offered writes above a share
//! of the per-shard write limit) for enough consecutive whole seconds is split. Time is an
//! argument; the registry meters puts and applies the decision.

use super::shard::{WRITE_BYTES_PER_S, WRITE_RECORDS_PER_S};
use crate::fragment::UnixMillis;

/// When an on-demand shard counts as hot and how far a stream may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    /// Share of the per-shard write limit (bytes or records) above which a second is hot.
    pub hot_percent: u64,
    /// Consecutive hot seconds before the shard is split.
    pub hot_seconds_min: u32,
    /// Open shards an on-demand stream may grow to.
    pub shards_max: u32,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            hot_percent: 80,
            hot_seconds_min: 10,
            shards_max: 64,
        }
    }
}

impl ScalingPolicy {
    fn is_hot(&self, bytes: u64, records: u64) -> bool {
        bytes.saturating_mul(100) > self.hot_percent * WRITE_BYTES_PER_S
            || records.saturating_mul(100) > self.hot_percent * WRITE_RECORDS_PER_S
    }

    /// Whether a shard with this meter should be split now, given the open shard count.
    pub fn should_split(&self, meter: &HeatMeter, open_shards: u32, now: UnixMillis) -> bool {
        open_shards < self.shards_max && meter.hot_seconds(self, now) >= self.hot_seconds_min
    }
}

/// Offered write load of one shard, per whole second, and the run of hot seconds before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeatMeter {
    second: u64,
    bytes: u64,
    records: u64,
    /// Consecutive hot seconds ending at `second - 1`.
    streak_s: u32,
}

impl HeatMeter {
    /// Counts a write offered at `now` (admitted or not: refused load is demand too).
    pub fn record(&mut self, policy: &ScalingPolicy, bytes: u64, records: u64, now: UnixMillis) {
        let second = now.0 / 1000;
        if second > self.second {
            self.streak_s = self.streak_through(policy, second);
            self.second = second;
            self.bytes = 0;
            self.records = 0;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.records = self.records.saturating_add(records);
    }

    /// The run of hot whole seconds ending just before `second`.
    fn streak_through(&self, policy: &ScalingPolicy, second: u64) -> u32 {
        if second != self.second + 1 {
            // A second with no writes lies between: it was cold.
            return 0;
        }
        if policy.is_hot(self.bytes, self.records) {
            self.streak_s.saturating_add(1)
        } else {
            0
        }
    }

    /// Consecutive hot whole seconds up to `now`.
    pub fn hot_seconds(&self, policy: &ScalingPolicy, now: UnixMillis) -> u32 {
        let second = now.0 / 1000;
        if second <= self.second {
            self.streak_s
        } else {
            self.streak_through(policy, second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ScalingPolicy = ScalingPolicy {
        hot_percent: 80,
        hot_seconds_min: 3,
        shards_max: 8,
    };

    fn at(s: u64, ms: u64) -> UnixMillis {
        UnixMillis(1_700_000_000_000 + s * 1000 + ms)
    }

    #[test]
    fn sustained_heat_splits_after_the_run() {
        let mut meter = HeatMeter::default();
        for s in 0..3 {
            // 900 records a second: above 80% of 1,000.
            for ms in (0..900).step_by(100) {
                meter.record(&POLICY, 100, 100, at(s, ms));
            }
            assert!(!POLICY.should_split(&meter, 2, at(s, 950)), "second {s}");
        }
        assert!(POLICY.should_split(&meter, 2, at(3, 0)));
        assert!(
            !POLICY.should_split(&meter, 8, at(3, 0)),
            "bounded by shards_max"
        );
    }

    #[test]
    fn a_cool_or_idle_second_resets_the_run() {
        let mut meter = HeatMeter::default();
        meter.record(&POLICY, 0, 900, at(0, 0));
        meter.record(&POLICY, 0, 900, at(1, 0));
        meter.record(&POLICY, 0, 100, at(2, 0));
        meter.record(&POLICY, 0, 900, at(3, 0));
        assert_eq!(meter.hot_seconds(&POLICY, at(4, 0)), 1);
        // An idle second (5) between hot ones.
        meter.record(&POLICY, 0, 900, at(4, 0));
        meter.record(&POLICY, 0, 900, at(6, 0));
        assert_eq!(meter.hot_seconds(&POLICY, at(6, 500)), 0);
        assert_eq!(meter.hot_seconds(&POLICY, at(9, 0)), 0);
    }

    #[test]
    fn bytes_alone_make_a_second_hot() {
        let mut meter = HeatMeter::default();
        for s in 0..3 {
            meter.record(&POLICY, 900 * 1024, 1, at(s, 0));
        }
        assert_eq!(meter.hot_seconds(&POLICY, at(3, 0)), 3);
        let mut cool = HeatMeter::default();
        for s in 0..3 {
            cool.record(&POLICY, 800 * 1024, 800, at(s, 0));
        }
        assert_eq!(cool.hot_seconds(&POLICY, at(3, 0)), 0);
    }
}
