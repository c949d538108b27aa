//! Sending what an earlier run of the agent spooled and never saw persisted.
//!
//! Spooled fragments keep their original identity (stream, epoch, sequence), so that the server
//! recognises the ones it already has. A connection opens each stream under one epoch, and a
//! live source starts a new epoch at each start; the backlog therefore goes out on its own
//! uplinks, one round per epoch of each stream (round k sends the k-th oldest spooled epoch of
//! every stream), in parallel with the live uplink and oldest first within a round. Payloads
//! are read from disk one at a time, and the bounded channel into each uplink keeps memory flat.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::{mpsc, watch};

use crate::fragment::{Fragment, StreamName};
use crate::spool::{SpoolReader, Spooled};
use crate::transport::{self, Outgoing, UplinkOptions};
use crate::wire::{Priority, StreamOpen, UplinkEvent};

use super::{UPLINK_CHANNEL_FRAGMENTS_MAX, stopped};

/// Fragments of one round: one epoch per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Round {
    pub streams: Vec<StreamOpen>,
    pub fragments: Vec<Spooled>,
}

/// Splits the unreleased fragments (oldest first) into rounds; each keeps the spool's order.
pub(super) fn rounds(unreleased: Vec<Spooled>) -> Vec<Round> {
    let mut epochs: BTreeMap<StreamName, BTreeSet<u64>> = BTreeMap::new();
    for s in &unreleased {
        epochs
            .entry(s.id.stream.clone())
            .or_default()
            .insert(s.id.epoch);
    }
    let count = epochs.values().map(BTreeSet::len).max().unwrap_or(0);
    let mut rounds: Vec<Round> = (0..count)
        .map(|k| Round {
            streams: epochs
                .iter()
                .filter_map(|(stream, set)| {
                    set.iter().nth(k).map(|&epoch| StreamOpen {
                        stream: stream.clone(),
                        epoch,
                    })
                })
                .collect(),
            fragments: Vec::new(),
        })
        .collect();
    for s in unreleased {
        let k = epochs
            .get(&s.id.stream)
            .and_then(|set| set.iter().position(|&e| e == s.id.epoch));
        if let Some(round) = k.and_then(|k| rounds.get_mut(k)) {
            round.fragments.push(s);
        }
    }
    rounds
}

/// Sends every round in turn; returns when all are drained or at shutdown.
pub(super) async fn run(
    options: UplinkOptions,
    rounds: Vec<Round>,
    reader: SpoolReader,
    reports: mpsc::Sender<UplinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), transport::TransportError> {
    for round in rounds {
        if *shutdown.borrow() {
            break;
        }
        tracing::info!(streams = ?round.streams, fragments = round.fragments.len(), "Sending spooled fragments from an earlier run.");
        let (tx, rx) = mpsc::channel(UPLINK_CHANNEL_FRAGMENTS_MAX);
        let uplink = tokio::spawn(transport::run_uplink(
            options.clone(),
            round.streams,
            rx,
            reports.clone(),
            shutdown.clone(),
        ));
        for spooled in round.fragments {
            let Some(fragment) = read(&reader, &spooled).await else {
                continue;
            };
            let outgoing = Outgoing {
                fragment,
                priority: Priority::Backfill,
                spooled: true,
            };
            tokio::select! {
                sent = tx.send(outgoing) => if sent.is_err() { break },
                _ = stopped(&mut shutdown) => break,
            }
        }
        drop(tx);
        match uplink.await {
            Ok(result) => result?,
            Err(error) => tracing::error!(%error, "backlog uplink task failed"),
        }
    }
    Ok(())
}

/// Reads a spooled fragment off the runtime's threads; `None` when it is gone (dropped or
/// expired since the start) or unreadable, which leaves nothing to send.
pub(super) async fn read(reader: &SpoolReader, spooled: &Spooled) -> Option<Fragment> {
    let (reader, pos) = (reader.clone(), spooled.pos);
    match tokio::task::spawn_blocking(move || reader.read(pos)).await {
        Ok(Ok(fragment)) => Some(fragment),
        Ok(Err(error)) => {
            tracing::warn!(fragment = %spooled.id, %error, "A spooled fragment cannot be read.");
            None
        }
        Err(error) => {
            tracing::error!(fragment = %spooled.id, %error, "Reading the spool failed.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::{FragmentId, UnixMillis};
    use crate::record_log::RecordPos;

    fn spooled(stream: &str, epoch: u64, sequence: u64, offset: u64) -> Spooled {
        Spooled {
            pos: RecordPos { segment: 0, offset },
            id: FragmentId {
                stream: StreamName::new(stream).expect("valid"),
                epoch,
                sequence,
            },
            producer_timestamp: UnixMillis(offset),
            payload_bytes: 1,
        }
    }

    #[test]
    fn each_round_opens_one_epoch_per_stream_oldest_first() {
        let all = vec![
            spooled("a", 1, 0, 8),
            spooled("b", 5, 0, 9),
            spooled("a", 1, 1, 10),
            spooled("a", 2, 0, 11),
            spooled("b", 5, 1, 12),
        ];
        let got = rounds(all);
        assert_eq!(got.len(), 2);
        let ids = |r: &Round| -> Vec<(String, u64, u64)> {
            r.fragments
                .iter()
                .map(|s| (s.id.stream.to_string(), s.id.epoch, s.id.sequence))
                .collect()
        };
        assert_eq!(
            ids(&got[0]),
            vec![
                ("a".into(), 1, 0),
                ("b".into(), 5, 0),
                ("a".into(), 1, 1),
                ("b".into(), 5, 1)
            ]
        );
        assert_eq!(got[0].streams.len(), 2);
        assert_eq!(ids(&got[1]), vec![("a".into(), 2, 0)]);
        assert_eq!(got[1].streams.len(), 1);
        assert!(rounds(Vec::new()).is_empty());
    }
}
