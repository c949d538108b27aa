//! Store tests against real directories, real logs and real fsync.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::fragment::{FragmentId, FragmentMeta};

const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn config() -> StoreConfig {
    StoreConfig {
        create_on_first_use: true,
        ..StoreConfig::default()
    }
}

fn fragment(stream: &str, epoch: u64, sequence: u64, producer_ms: u64) -> Fragment {
    let payload =
        format!("payload {stream} {epoch} {sequence} ").repeat(1 + (sequence % 5) as usize);
    Fragment {
        meta: FragmentMeta {
            id: FragmentId {
                stream: name(stream),
                epoch,
                sequence,
            },
            producer_timestamp: UnixMillis(producer_ms),
            duration_ms: 2000,
        },
        payload: Bytes::from(payload),
    }
}

fn numbers(list: &[FragmentSummary]) -> Vec<u64> {
    list.iter().map(|s| s.number.0).collect()
}

#[test]
fn create_describe_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let mut new = NewStream::named(name("cam-b"));
    new.media_type = Some("video/h264".into());
    let info = store.create_stream(new, UnixMillis(T0)).unwrap();
    assert_eq!(
        info.arn,
        format!("arn:aws:kinesisvideo:us-east-1:000000000000:stream/cam-b/{T0}")
    );
    assert_eq!(
        (info.data_retention_hours, info.status),
        (24, StreamStatus::Active)
    );
    store
        .create_stream(NewStream::named(name("cam-a")), UnixMillis(T0))
        .unwrap();
    assert!(matches!(
        store.create_stream(NewStream::named(name("cam-a")), UnixMillis(T0)),
        Err(StoreError::StreamExists(_))
    ));
    assert_eq!(store.describe_stream(&name("cam-b")).unwrap(), info);
    let listed: Vec<String> = store
        .list_streams()
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(listed, ["cam-a", "cam-b"]);
    assert!(matches!(
        store.delete_stream(&name("cam-b"), Some("stale")),
        Err(StoreError::VersionMismatch { .. })
    ));
    store
        .delete_stream(&name("cam-b"), Some(&info.version))
        .unwrap();
    assert!(matches!(
        store.describe_stream(&name("cam-b")),
        Err(StoreError::StreamNotFound(_))
    ));
    assert!(!dir.path().join("streams/cam-b").exists());
    assert!(matches!(
        store.delete_stream(&name("cam-b"), None),
        Err(StoreError::StreamNotFound(_))
    ));
    // Stream descriptions survive a restart.
    drop(store);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let listed: Vec<String> = store
        .list_streams()
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(listed, ["cam-a"]);
}

#[test]
fn unknown_streams_are_not_created_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(matches!(
        store.open_producer(&name("x"), 1, UnixMillis(T0)),
        Err(StoreError::StreamNotFound(_))
    ));
    let store = Store::open(&dir.path().join("other"), config()).unwrap();
    assert_eq!(
        store.open_producer(&name("x"), 1, UnixMillis(T0)).unwrap(),
        0
    );
    assert_eq!(
        store
            .describe_stream(&name("x"))
            .unwrap()
            .data_retention_hours,
        24
    );
}

#[test]
fn stream_names_cannot_escape_the_data_directory() {
    assert!(StreamName::new("..").is_err());
    assert!(StreamName::new("../x").is_err());
    assert!(StreamName::new("a/b").is_err());
}

#[test]
fn retention_updates_check_the_version_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let info = store
        .create_stream(NewStream::named(name("s")), UnixMillis(T0))
        .unwrap();
    let now = UnixMillis(T0);
    let up = store
        .update_retention(
            &name("s"),
            &info.version,
            RetentionChange::Increase(48),
            now,
        )
        .unwrap();
    assert_eq!(up.data_retention_hours, 72);
    assert_ne!(up.version, info.version);
    assert!(matches!(
        store.update_retention(&name("s"), &info.version, RetentionChange::Increase(1), now),
        Err(StoreError::VersionMismatch { .. })
    ));
    let bad = [
        RetentionChange::Decrease(73),
        RetentionChange::Increase(87_600),
        RetentionChange::Increase(0),
    ];
    for change in bad {
        assert!(matches!(
            store.update_retention(&name("s"), &up.version, change, now),
            Err(StoreError::InvalidRetention { .. })
        ));
    }
    let down = store
        .update_retention(&name("s"), &up.version, RetentionChange::Decrease(72), now)
        .unwrap();
    assert_eq!(down.data_retention_hours, 0);
    let mut new = NewStream::named(name("t"));
    new.data_retention_hours = Some(87_601);
    assert!(matches!(
        store.create_stream(new, now),
        Err(StoreError::InvalidRetention { .. })
    ));
    drop(store);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(store.describe_stream(&name("s")).unwrap(), down);
}

#[tokio::test]
async fn append_list_by_time_with_paging_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    // Producer times out of order; server times from a clock that steps back once.
    let producer = [5000, 1000, 3000, 2000, 4000];
    let server = [100, 200, 150, 300, 400];
    let mut stored = Vec::new();
    for (seq, (&p, &s)) in producer.iter().zip(&server).enumerate() {
        let f = fragment("cam", 1, seq as u64, T0 + p);
        let appended = store.append(f.clone(), UnixMillis(T0 + s)).await.unwrap();
        let Appended::Stored(number) = appended else {
            panic!("expected a new fragment")
        };
        stored.push((number, f));
    }
    assert_eq!(numbers_of(&stored), vec![0, 1, 2, 3, 4]);
    let list = |kind, start, end, after, limit| {
        store
            .list_fragments(
                &name("cam"),
                kind,
                UnixMillis(T0 + start),
                UnixMillis(T0 + end),
                after,
                limit,
            )
            .unwrap()
    };
    assert_eq!(
        numbers(&list(TimestampKind::Producer, 0, 10_000, None, 100)),
        vec![1, 3, 2, 4, 0]
    );
    assert_eq!(
        numbers(&list(TimestampKind::Producer, 2000, 4000, None, 100)),
        vec![3, 2, 4]
    );
    let page1 = list(TimestampKind::Producer, 0, 10_000, None, 2);
    let page2 = list(TimestampKind::Producer, 0, 10_000, Some(page1[1].number), 2);
    let page3 = list(TimestampKind::Producer, 0, 10_000, Some(page2[1].number), 2);
    assert_eq!(
        (numbers(&page1), numbers(&page2), numbers(&page3)),
        (vec![1, 3], vec![2, 4], vec![0])
    );
    let by_server = list(TimestampKind::Server, 0, 10_000, None, 100);
    assert_eq!(numbers(&by_server), vec![0, 1, 2, 3, 4]);
    let server_ms: Vec<u64> = by_server
        .iter()
        .map(|s| s.server_timestamp.0 - T0)
        .collect();
    assert_eq!(
        server_ms,
        vec![100, 200, 200, 300, 400],
        "server time never goes backwards"
    );
    for (number, f) in &stored {
        let (summary, payload) = store.read_fragment(&name("cam"), *number).unwrap();
        assert_eq!(payload, f.payload);
        assert_eq!(summary.size_bytes, f.payload.len() as u64);
        assert_eq!((summary.epoch, summary.sequence), (1, f.meta.id.sequence));
        assert_eq!(summary.producer_timestamp, f.meta.producer_timestamp);
    }
    assert!(matches!(
        store.read_fragment(&name("cam"), FragmentNumber(99)),
        Err(StoreError::FragmentNotFound { .. })
    ));
}

fn numbers_of(stored: &[(FragmentNumber, Fragment)]) -> Vec<u64> {
    stored.iter().map(|(n, _)| n.0).collect()
}

#[tokio::test]
async fn oversized_fragments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            fragment_bytes_max: 10,
            ..config()
        },
    )
    .unwrap();
    let f = fragment("cam", 1, 0, T0);
    assert!(matches!(
        store.append(f, UnixMillis(T0)).await,
        Err(StoreError::FragmentTooLarge { limit: 10, .. })
    ));
}

#[tokio::test]
async fn reopen_rebuilds_indexes_dedup_and_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_bytes_max: 512,
        ..config()
    };
    {
        let store = Store::open(dir.path(), cfg.clone()).unwrap();
        for seq in [0, 1, 2, 4] {
            store
                .append(
                    fragment("cam", 7, seq, T0 + seq * 1000),
                    UnixMillis(T0 + 10 * seq),
                )
                .await
                .unwrap();
        }
        store
            .append(fragment("cam", 8, 0, T0), UnixMillis(T0 + 100))
            .await
            .unwrap();
        assert_eq!(
            store
                .open_producer(&name("cam"), 7, UnixMillis(T0))
                .unwrap(),
            3
        );
    }
    let store = Store::open(dir.path(), cfg).unwrap();
    assert_eq!(
        store
            .open_producer(&name("cam"), 7, UnixMillis(T0))
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .open_producer(&name("cam"), 8, UnixMillis(T0))
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .open_producer(&name("cam"), 9, UnixMillis(T0))
            .unwrap(),
        0
    );
    let dup = store
        .append(fragment("cam", 7, 4, T0 + 4000), UnixMillis(T0))
        .await
        .unwrap();
    assert_eq!(dup, Appended::Duplicate(FragmentNumber(3)));
    // A server clock behind the stored times still gives rising server timestamps.
    let next = store
        .append(fragment("cam", 7, 3, T0 + 3000), UnixMillis(T0))
        .await
        .unwrap();
    assert_eq!(next, Appended::Stored(FragmentNumber(5)));
    assert_eq!(
        store
            .open_producer(&name("cam"), 7, UnixMillis(T0))
            .unwrap(),
        5
    );
    let all = store
        .list_fragments(
            &name("cam"),
            TimestampKind::Server,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            100,
        )
        .unwrap();
    assert_eq!(numbers(&all), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(all[5].server_timestamp, UnixMillis(T0 + 100));
    let (_, payload) = store
        .read_fragment(&name("cam"), FragmentNumber(2))
        .unwrap();
    assert_eq!(payload, fragment("cam", 7, 2, 0).payload);
}

#[tokio::test]
async fn a_duplicate_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let f = fragment("cam", 1, 0, T0);
    assert_eq!(
        store.append(f.clone(), UnixMillis(T0)).await.unwrap(),
        Appended::Stored(FragmentNumber(0))
    );
    assert_eq!(
        store.append(f, UnixMillis(T0)).await.unwrap(),
        Appended::Duplicate(FragmentNumber(0))
    );
    let all = store
        .list_fragments(
            &name("cam"),
            TimestampKind::Producer,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            100,
        )
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_of_one_id_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    for round in 0..20u64 {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = Arc::clone(&store);
            let f = fragment("cam", 1, round, T0 + round);
            tasks.push(tokio::spawn(async move {
                store.append(f, UnixMillis(T0)).await.unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let stored = outcomes
            .iter()
            .filter(|a| matches!(a, Appended::Stored(_)))
            .count();
        assert_eq!(stored, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().all(|a| a.number() == outcomes[0].number()));
    }
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    let all = store
        .list_fragments(
            &name("cam"),
            TimestampKind::Producer,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            100,
        )
        .unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(
        store
            .open_producer(&name("cam"), 1, UnixMillis(T0))
            .unwrap(),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_producers_append_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            segment_bytes_max: 4096,
            ..config()
        },
    )
    .unwrap();
    let mut tasks = Vec::new();
    for epoch in 0..8u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for seq in 0..30 {
                store
                    .append(fragment("cam", epoch, seq, T0 + seq), UnixMillis(T0 + seq))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all = store
        .list_fragments(
            &name("cam"),
            TimestampKind::Server,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            1000,
        )
        .unwrap();
    assert_eq!(all.len(), 240);
    for epoch in 0..8 {
        assert_eq!(
            store
                .open_producer(&name("cam"), epoch, UnixMillis(T0))
                .unwrap(),
            30
        );
    }
}

#[tokio::test]
async fn retention_deletes_old_segments_and_nothing_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            segment_bytes_max: 300,
            ..config()
        },
    )
    .unwrap();
    // One fragment per hour for 10 hours; tiny segments give several segments.
    for hour in 0..10u64 {
        let at = T0 + hour * HOUR_MS;
        store
            .append(fragment("cam", 1, hour, at), UnixMillis(at))
            .await
            .unwrap();
    }
    let segments_before = std::fs::read_dir(dir.path().join("streams/cam/log"))
        .unwrap()
        .count();
    assert!(segments_before >= 4, "{segments_before} segments");
    let info = store.describe_stream(&name("cam")).unwrap();
    let info = store
        .update_retention(
            &name("cam"),
            &info.version,
            RetentionChange::Increase(24 * 30),
            UnixMillis(T0),
        )
        .unwrap();
    // With 744 hours of retention nothing is old enough, even 30 days later.
    assert_eq!(
        store
            .enforce_retention(UnixMillis(T0 + 40 * HOUR_MS))
            .unwrap(),
        0
    );
    // Retention 3 h at virtual time T0 + 10 h: cutoff is hour 7.
    let now = UnixMillis(T0 + 10 * HOUR_MS);
    store
        .update_retention(
            &name("cam"),
            &info.version,
            RetentionChange::Decrease(744 - 3),
            now,
        )
        .unwrap();
    let left = store
        .list_fragments(
            &name("cam"),
            TimestampKind::Server,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            100,
        )
        .unwrap();
    let cutoff = T0 + 7 * HOUR_MS;
    assert!(left.iter().all(|s| s.number.0 < 10));
    assert!(left.len() < 10, "something was deleted");
    let kept: Vec<u64> = numbers(&left);
    let first_kept = kept[0];
    assert_eq!(
        kept,
        (first_kept..10).collect::<Vec<_>>(),
        "a prefix is deleted"
    );
    for s in &left {
        assert_eq!(
            store.read_fragment(&name("cam"), s.number).unwrap().1,
            fragment("cam", 1, s.sequence, 0).payload
        );
    }
    // Everything at or after the cutoff survives; what was deleted was older than it.
    assert!(kept.contains(&7) && first_kept <= 7);
    assert!(
        left.iter()
            .filter(|s| s.server_timestamp.0 >= cutoff)
            .count()
            == 3
    );
    assert!(matches!(
        store.read_fragment(&name("cam"), FragmentNumber(0)),
        Err(StoreError::FragmentNotFound { .. })
    ));
    // A resend of a deleted fragment is still recognised.
    let again = store.append(fragment("cam", 1, 0, T0), now).await.unwrap();
    assert_eq!(again, Appended::Duplicate(FragmentNumber(0)));
    // Far in the future everything but the active segment goes, and the rest reopens intact.
    store
        .enforce_retention(UnixMillis(T0 + 1000 * HOUR_MS))
        .unwrap();
    let left_after: Vec<u64> = numbers(
        &store
            .list_fragments(
                &name("cam"),
                TimestampKind::Server,
                UnixMillis(0),
                UnixMillis(u64::MAX),
                None,
                100,
            )
            .unwrap(),
    );
    assert!(
        left_after.contains(&9),
        "the active segment is never deleted"
    );
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(
        store
            .open_producer(&name("cam"), 1, UnixMillis(T0))
            .unwrap(),
        10,
        "watermark survives retention"
    );
    assert!(matches!(
        store.append(fragment("cam", 1, 0, T0), now).await,
        Err(StoreError::FragmentExpired { .. })
    ));
    let reopened: Vec<u64> = numbers(
        &store
            .list_fragments(
                &name("cam"),
                TimestampKind::Server,
                UnixMillis(0),
                UnixMillis(u64::MAX),
                None,
                100,
            )
            .unwrap(),
    );
    assert_eq!(reopened, left_after);
}

#[tokio::test]
async fn a_torn_tail_loses_only_the_unsynced_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config()).unwrap();
        for seq in 0..3 {
            store
                .append(fragment("cam", 1, seq, T0), UnixMillis(T0))
                .await
                .unwrap();
        }
    }
    let log_dir = dir.path().join("streams/cam/log");
    let segment = log_dir.join(crate::record_log::segment_file_name(0));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&segment, bytes).unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(
        store
            .open_producer(&name("cam"), 1, UnixMillis(T0))
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .append(fragment("cam", 1, 3, T0), UnixMillis(T0))
            .await
            .unwrap(),
        Appended::Stored(FragmentNumber(3))
    );
}

fn index_files(dir: &std::path::Path, stream: &str) -> Vec<std::path::PathBuf> {
    let log_dir = dir.join("streams").join(stream).join("log");
    let mut files: Vec<_> = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn sealed_segments_are_served_from_index_files_and_rebuilt_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let small = StoreConfig {
        segment_bytes_max: 1024,
        ..config()
    };
    let store = Store::open(dir.path(), small.clone()).unwrap();
    for seq in 0..60 {
        let f = fragment("cam-i", 4, seq, T0 + seq * 2000);
        store.append(f, UnixMillis(T0 + seq * 2000)).await.unwrap();
    }
    let files = index_files(dir.path(), "cam-i");
    assert!(files.len() >= 5, "{} index files", files.len());
    let cam = name("cam-i");
    let expect: Vec<u64> = (10..=19).collect();
    let window = |store: &Store, kind| {
        store
            .list_fragments(
                &cam,
                kind,
                UnixMillis(T0 + 20_000),
                UnixMillis(T0 + 38_000),
                None,
                100,
            )
            .unwrap()
    };
    assert_eq!(numbers(&window(&store, TimestampKind::Producer)), expect);
    assert_eq!(numbers(&window(&store, TimestampKind::Server)), expect);
    let all = store
        .list_fragments(
            &cam,
            TimestampKind::Producer,
            UnixMillis(0),
            UnixMillis(u64::MAX),
            None,
            1000,
        )
        .unwrap();
    assert_eq!(numbers(&all), (0..60).collect::<Vec<_>>());
    drop(store);

    // Damage one index file: reopen rebuilds it from its segment; the rest load as they are.
    let damaged = &files[1];
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[70] ^= 0x01;
    std::fs::write(damaged, &bytes).unwrap();
    std::fs::remove_file(&files[2]).unwrap();
    let store = Store::open(dir.path(), small).unwrap();
    assert_eq!(index_files(dir.path(), "cam-i"), files);
    assert_ne!(std::fs::read(damaged).unwrap(), bytes);
    let stream = store.stream(&cam).unwrap();
    let before = stream.index_entries_read();
    assert_eq!(numbers(&window(&store, TimestampKind::Producer)), expect);
    let after = stream.index_entries_read();
    let (probes, ranged) = (after.0 - before.0, after.1 - before.1);
    // Ten in range, plus a binary search's probes in the one or two files it touches.
    assert_eq!(ranged, 10);
    assert!(probes <= 2 * 2 * 8, "{probes} probes");
    for seq in [0u64, 15, 33, 59] {
        let (summary, payload) = store.read_fragment(&cam, FragmentNumber(seq)).unwrap();
        assert_eq!(summary.number.0, seq);
        assert_eq!(payload, fragment("cam-i", 4, seq, 0).payload);
    }
    // Dedup survives from the index files' runs, and numbering continues.
    let again = store
        .append(fragment("cam-i", 4, 12, T0), UnixMillis(T0))
        .await
        .unwrap();
    assert_eq!(again, Appended::Duplicate(FragmentNumber(12)));
    assert_eq!(store.open_producer(&cam, 4, UnixMillis(T0)).unwrap(), 60);
    let next = store
        .append(
            fragment("cam-i", 4, 60, T0 + 120_000),
            UnixMillis(T0 + 120_000),
        )
        .await
        .unwrap();
    assert_eq!(next, Appended::Stored(FragmentNumber(60)));

    // Retention deletes sealed segments together with their index files.
    let deleted = store
        .enforce_retention(UnixMillis(T0 + 100 * HOUR_MS))
        .unwrap();
    assert!(deleted >= 5);
    assert!(index_files(dir.path(), "cam-i").is_empty());
}
