//! Counters the uplink shells keep for the agent's metrics endpoint: plain atomics, shared by
//! every uplink of one agent (the live one and the backlog ones), read without locks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Shared uplink counters and gauges.
#[derive(Debug, Default)]
pub struct UplinkMetrics {
    /// Connections lost or failed attempts (each one leads to a reconnect).
    reconnects: AtomicU64,
    /// Connections established.
    connects: AtomicU64,
    /// Latest smoothed round-trip time of a connection, in microseconds.
    rtt_us: AtomicU64,
    /// Fragments held by all uplinks and not yet persisted.
    pending_fragments: AtomicI64,
    /// Payload bytes held by all uplinks.
    pending_bytes: AtomicI64,
    /// Stale live fragments dropped from the wire (their spooled copies stay).
    abandoned: AtomicU64,
    /// Backfill payload bytes handed to QUIC.
    backfill_bytes_sent: AtomicU64,
    /// Live payload bytes handed to QUIC.
    live_bytes_sent: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkMetricsSnapshot {
    pub reconnects: u64,
    pub connects: u64,
    pub rtt_us: u64,
    pub pending_fragments: u64,
    pub pending_bytes: u64,
    pub abandoned: u64,
    pub backfill_bytes_sent: u64,
    pub live_bytes_sent: u64,
}

impl UplinkMetrics {
    pub fn snapshot(&self) -> UplinkMetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        UplinkMetricsSnapshot {
            reconnects: get(&self.reconnects),
            connects: get(&self.connects),
            rtt_us: get(&self.rtt_us),
            pending_fragments: gauge(&self.pending_fragments),
            pending_bytes: gauge(&self.pending_bytes),
            abandoned: get(&self.abandoned),
            backfill_bytes_sent: get(&self.backfill_bytes_sent),
            live_bytes_sent: get(&self.live_bytes_sent),
        }
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_rtt(&self, rtt: std::time::Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    pub(super) fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sent(&self, backfill: bool, bytes: u64) {
        let counter = if backfill {
            &self.backfill_bytes_sent
        } else {
            &self.live_bytes_sent
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Moves the pending gauges by the change one uplink saw.
    pub(super) fn pending_delta(&self, fragments: i64, bytes: i64) {
        self.pending_fragments
            .fetch_add(fragments, Ordering::Relaxed);
        self.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}
