//! A token bucket with time as an argument (no clock), for per-shard throughput limits.
//!
//! Tokens are kept in thousandths so that refills over a few milliseconds are not lost to
//! rounding. `try_take` admits only what fits; `charge` takes what was used even if that goes
//! below zero (a read's size is known only after it), so the next call waits for the debt.

use crate::fragment::UnixMillis;

const MILLI: i64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: i64,
    rate_per_s: i64,
    milli_tokens: i64,
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket holding `capacity` tokens, refilled at `rate_per_s`.
    pub fn new(capacity: u64, rate_per_s: u64, now: UnixMillis) -> Self {
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX / MILLI);
        Self {
            capacity,
            rate_per_s: i64::try_from(rate_per_s).unwrap_or(i64::MAX / MILLI),
            milli_tokens: capacity.saturating_mul(MILLI),
            updated_ms: now.0,
        }
    }

    fn refill(&mut self, now: UnixMillis) {
        // A clock that steps back refills nothing rather than draining.
        let elapsed_ms = i64::try_from(now.0.saturating_sub(self.updated_ms)).unwrap_or(i64::MAX);
        self.updated_ms = self.updated_ms.max(now.0);
        let added = elapsed_ms.saturating_mul(self.rate_per_s);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(added)
            .min(self.capacity.saturating_mul(MILLI));
    }

    /// Whether `tokens` are available now (without taking them).
    pub fn can_take(&mut self, tokens: u64, now: UnixMillis) -> bool {
        self.refill(now);
        let wanted = i64::try_from(tokens)
            .unwrap_or(i64::MAX)
            .saturating_mul(MILLI);
        self.milli_tokens >= wanted
    }

    /// Takes `tokens` if available now.
    pub fn try_take(&mut self, tokens: u64, now: UnixMillis) -> bool {
        let ok = self.can_take(tokens, now);
        if ok {
            self.charge(tokens, now);
        }
        ok
    }

    /// Takes `tokens` unconditionally; the bucket may go into debt (bounded by one capacity).
    pub fn charge(&mut self, tokens: u64, now: UnixMillis) {
        self.refill(now);
        let used = i64::try_from(tokens)
            .unwrap_or(i64::MAX)
            .saturating_mul(MILLI);
        let floor = self.capacity.saturating_mul(MILLI).saturating_neg();
        self.milli_tokens = self.milli_tokens.saturating_sub(used).max(floor);
    }

    /// Whether any token is left (a call may start).
    pub fn has_tokens(&mut self, now: UnixMillis) -> bool {
        self.refill(now);
        self.milli_tokens > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_capacity_then_refills_with_time() {
        let mut bucket = TokenBucket::new(1000, 1000, UnixMillis(0));
        for _ in 0..1000 {
            assert!(bucket.try_take(1, UnixMillis(0)));
        }
        assert!(!bucket.try_take(1, UnixMillis(0)));
        // One millisecond at 1000/s gives one token back.
        assert!(bucket.try_take(1, UnixMillis(1)));
        assert!(!bucket.try_take(1, UnixMillis(1)));
        // A long pause refills only up to the capacity.
        assert!(bucket.try_take(1000, UnixMillis(1_000_000)));
        assert!(!bucket.try_take(1, UnixMillis(1_000_000)));
    }

    #[test]
    fn debt_delays_the_next_call() {
        let mut bucket = TokenBucket::new(100, 100, UnixMillis(0));
        bucket.charge(150, UnixMillis(0));
        assert!(!bucket.has_tokens(UnixMillis(0)));
        assert!(!bucket.has_tokens(UnixMillis(500)));
        assert!(bucket.has_tokens(UnixMillis(501)));
    }

    #[test]
    fn a_clock_stepping_back_does_not_refill() {
        let mut bucket = TokenBucket::new(10, 10, UnixMillis(10_000));
        assert!(bucket.try_take(10, UnixMillis(10_000)));
        assert!(!bucket.try_take(1, UnixMillis(5_000)));
        assert!(!bucket.try_take(1, UnixMillis(10_000)));
        assert!(bucket.try_take(1, UnixMillis(10_100)));
    }

    #[test]
    fn a_take_too_large_for_the_bucket_never_passes() {
        let mut bucket = TokenBucket::new(5, 5, UnixMillis(0));
        assert!(!bucket.try_take(6, UnixMillis(1_000_000)));
        assert!(bucket.try_take(5, UnixMillis(1_000_000)));
    }
}
