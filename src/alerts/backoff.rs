//! Exponential backoff schedule (pure: no clock, no sleeping) shared by the MQTT reconnect loop
//! and webhook retries.

/// Delays double from `initial_ms` up to `max_ms`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
}

/// Doublings beyond this cannot change the capped delay and would overflow the shift.
const DOUBLINGS_MAX: u32 = 32;

impl Backoff {
    pub(crate) fn new(initial_ms: u64, max_ms: u64) -> Self {
        Self {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(initial_ms.max(1)),
            attempt: 0,
        }
    }

    /// The delay before the next attempt, then advances the schedule.
    pub(crate) fn next_ms(&mut self) -> u64 {
        let shift = self.attempt.min(DOUBLINGS_MAX);
        self.attempt = self.attempt.saturating_add(1);
        self.initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_ms)
    }

    /// Back to the initial delay after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(100, 1000);
        let got: Vec<u64> = (0..6).map(|_| b.next_ms()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_ms(), 100);
    }

    #[test]
    fn long_schedules_do_not_overflow() {
        let mut b = Backoff::new(u64::MAX / 2, u64::MAX);
        for _ in 0..100 {
            assert!(b.next_ms() >= u64::MAX / 2);
        }
    }

    #[test]
    fn degenerate_limits_are_made_sane() {
        let mut b = Backoff::new(0, 0);
        assert_eq!(b.next_ms(), 1);
        assert_eq!(b.next_ms(), 1);
    }
}
