//! Backfill of the running session: spooled fragments of the current epochs that no uplink
//! holds (abandoned on the wire as stale, or captured while the live uplink was full) are fed
//! to the live uplink's backfill input, oldest first. The uplink sends them at low priority
//! within the bandwidth cap, on the same connection as live fragments (a connection opens each
//! stream under one epoch, and these are the current epochs).
//!
//! The set of fragments "on the wire" (held by some uplink) is what keeps a fragment from
//! being sent twice at once: the camera marks a fragment before spooling it, the feeder marks
//! what it takes, and the report collector unmarks on Persisted, Refused and Abandoned (after
//! releasing the spool copy, under the same lock), so the feeder never picks a fragment that
//! is held or already released.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::fragment::{Fragment, FragmentId, StreamName};
use crate::spool::{SpoolReader, Spooled};

use super::{SharedSpool, lock, stopped};

/// Fragments the feeder takes from the spool per scan.
const BACKFILL_SCAN_FRAGMENTS_MAX: usize = 16;
/// Pause between scans when the spool has nothing to backfill.
const BACKFILL_IDLE_MS: u64 = 500;

/// Fragments held by an uplink (live or backfill), by identity.
pub(super) type OnWire = Arc<Mutex<HashSet<FragmentId>>>;

pub(super) fn lock_wire(on_wire: &OnWire) -> MutexGuard<'_, HashSet<FragmentId>> {
    on_wire.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Feeds the current epochs' spooled fragments that no uplink holds into `backfill`, oldest
/// first, until shutdown or until the uplink stops.
pub(super) async fn feed(
    spool: SharedSpool,
    on_wire: OnWire,
    epochs: Vec<(StreamName, u64)>,
    reader: SpoolReader,
    backfill: mpsc::Sender<Fragment>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // The uplink has stopped (shutdown, or the server refused this agent).
        if *shutdown.borrow() || backfill.is_closed() {
            return;
        }
        let batch = take_batch(&spool, &on_wire, &epochs);
        if batch.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(BACKFILL_IDLE_MS)) => continue,
                _ = stopped(&mut shutdown) => return,
            }
        }
        for spooled in batch {
            let Some(fragment) = super::backlog::read(&reader, &spooled).await else {
                lock_wire(&on_wire).remove(&spooled.id);
                continue;
            };
            tokio::select! {
                sent = backfill.send(fragment) => if sent.is_err() { return },
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

/// Marks and returns the oldest unreleased fragments of `epochs` that no uplink holds.
fn take_batch(spool: &SharedSpool, on_wire: &OnWire, epochs: &[(StreamName, u64)]) -> Vec<Spooled> {
    let mut wire = lock_wire(on_wire);
    let unreleased = lock(spool).unreleased();
    let batch: Vec<Spooled> = unreleased
        .into_iter()
        .filter(|s| {
            epochs
                .iter()
                .any(|(n, e)| *n == s.id.stream && *e == s.id.epoch)
        })
        .filter(|s| !wire.contains(&s.id))
        .take(BACKFILL_SCAN_FRAGMENTS_MAX)
        .collect();
    for s in &batch {
        wire.insert(s.id.clone());
    }
    batch
}
