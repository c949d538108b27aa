//! Live first, then backfill: the pure rules the agent core applies when it has more to send
//! than the link carries. Fragments of the running capture (`Live`) always go before spooled
//! fragments from an outage (`Backfill`); backfill is paced by a token bucket so that catching
//! up never starves the live stream or saturates a shared uplink; a live fragment that waited
//! too long may be abandoned on the wire (its spooled copy comes back later as backfill).
//! Time is always an argument: nothing here reads a clock.

use std::time::{Duration, Instant};

/// How urgently a fragment goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Captured now: sent first, on QUIC streams of the higher priority.
    Live,
    /// Sent from the spool after an outage, oldest first, within the bandwidth cap.
    Backfill,
}

impl Priority {
    /// The QUIC stream priority (quinn: higher is sent first).
    pub fn stream_priority(self) -> i32 {
        match self {
            Self::Live => 1,
            Self::Backfill => 0,
        }
    }
}

/// Sorting key for the send queue: live before backfill, then push order (oldest first).
pub fn send_order(priority: Priority, push_key: u64) -> (Priority, u64) {
    (priority, push_key)
}

/// The staleness rule: a live fragment may be dropped from the wire (never from the spool)
/// when it has a durable copy elsewhere and has waited `stale_after` since it was pushed
/// without being persisted. A zero `stale_after` turns abandonment off.
pub fn is_stale(
    priority: Priority,
    spooled: bool,
    pushed_at: Instant,
    stale_after: Duration,
    now: Instant,
) -> bool {
    priority == Priority::Live
        && spooled
        && !stale_after.is_zero()
        && now.saturating_duration_since(pushed_at) >= stale_after
}

/// A byte-rate limiter with debt: a send is allowed while the bucket is not in debt, and takes
/// its whole size (so a fragment larger than the burst still goes, and the debt it leaves
/// pays for it before the next one). The long-run rate never exceeds `bytes_per_s`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Refill rate; 0 means no cap.
    bytes_per_s: u64,
    /// Most tokens saved up while idle.
    burst_bytes: u64,
    /// May be negative: bytes sent ahead of the rate.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    pub fn new(bytes_per_s: u64, burst_bytes: u64, now: Instant) -> Self {
        Self {
            bytes_per_s,
            burst_bytes,
            tokens: i128::from(burst_bytes),
            last: now,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_s == 0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let add = elapsed.as_nanos() * u128::from(self.bytes_per_s) / 1_000_000_000;
        let add = i128::try_from(add).unwrap_or(i128::MAX);
        self.tokens = self
            .tokens
            .saturating_add(add)
            .min(i128::from(self.burst_bytes));
    }

    /// Takes `bytes` if the bucket is not in debt at `now`; returns whether it did.
    pub fn try_take(&mut self, bytes: u64, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens < 0 {
            return false;
        }
        self.tokens -= i128::from(bytes);
        true
    }

    /// When a send will be allowed again (`now` when it already is).
    pub fn ready_at(&self, now: Instant) -> Instant {
        if self.is_unlimited() || self.tokens >= 0 {
            return now.max(self.last);
        }
        let debt = u128::try_from(-self.tokens).unwrap_or(u128::MAX);
        let nanos = debt.saturating_mul(1_000_000_000) / u128::from(self.bytes_per_s);
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.last + wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sorts_before_backfill_whatever_the_age() {
        let mut keys = vec![
            send_order(Priority::Backfill, 0),
            send_order(Priority::Live, 9),
            send_order(Priority::Backfill, 3),
            send_order(Priority::Live, 5),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                (Priority::Live, 5),
                (Priority::Live, 9),
                (Priority::Backfill, 0),
                (Priority::Backfill, 3)
            ]
        );
        assert!(Priority::Live.stream_priority() > Priority::Backfill.stream_priority());
    }

    #[test]
    fn only_spooled_live_fragments_go_stale() {
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let later = t0 + Duration::from_secs(10);
        assert!(is_stale(Priority::Live, true, t0, after, later));
        assert!(!is_stale(
            Priority::Live,
            true,
            t0,
            after,
            t0 + Duration::from_millis(9_999)
        ));
        assert!(
            !is_stale(Priority::Live, false, t0, after, later),
            "no durable copy: never abandoned"
        );
        assert!(!is_stale(Priority::Backfill, true, t0, after, later));
        assert!(!is_stale(Priority::Live, true, t0, Duration::ZERO, later));
    }

    #[test]
    fn bucket_holds_the_long_run_rate() {
        let t0 = Instant::now();
        let rate = 100_000u64;
        let mut bucket = TokenBucket::new(rate, 10_000, t0);
        let mut now = t0;
        let mut sent = 0u64;
        let end = t0 + Duration::from_secs(10);
        while now < end {
            if bucket.try_take(30_000, now) {
                sent += 30_000;
            } else {
                let next = bucket.ready_at(now);
                assert!(next > now, "in debt means a later time");
                now = next;
            }
        }
        // 10 s at 100 kB/s plus the burst and one fragment of overshoot.
        assert!(sent <= 10 * rate + 10_000 + 30_000, "sent {sent}");
        assert!(sent >= 10 * rate - 30_000, "sent {sent}");
    }

    #[test]
    fn bucket_lets_an_oversized_fragment_through_then_pays_it_back() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1_000, 500, t0);
        assert!(bucket.try_take(5_000, t0));
        assert!(!bucket.try_take(1, t0));
        assert_eq!(bucket.ready_at(t0), t0 + Duration::from_millis(4_500));
        assert!(!bucket.try_take(1, t0 + Duration::from_millis(4_499)));
        assert!(bucket.try_take(1, t0 + Duration::from_millis(4_500)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0, 0, t0);
        assert!(bucket.try_take(u64::MAX, t0));
        assert!(bucket.try_take(u64::MAX, t0));
        assert_eq!(bucket.ready_at(t0), t0);
    }
}
