//! Registry tests over real files: durability across reopen, iterators, retention, throttling.

use super::*;
use scaling::ScalingPolicy;

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

fn config(throttle: bool) -> StreamsConfig {
    StreamsConfig {
        throttle,
        segment_bytes_max: 64 * 1024,
        ..StreamsConfig::default()
    }
}

fn entry(key: &str, data: &[u8]) -> PutEntry {
    PutEntry {
        partition_key: key.into(),
        explicit_hash_key: None,
        data: data.to_vec(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn put(streams: &Streams, name: &str, entries: Vec<PutEntry>, now: UnixMillis) -> Vec<PutOk> {
    rt().block_on(streams.put_records(name, entries, now))
        .expect("put")
        .into_iter()
        .map(|o| o.expect("entry stored"))
        .collect()
}

fn read_all(streams: &Streams, name: &str, shard: &str, now: UnixMillis) -> Vec<OutRecord> {
    let mut it = streams
        .shard_iterator(name, shard, &IteratorStart::TrimHorizon, now)
        .expect("iterator");
    let mut out = Vec::new();
    for _ in 0..1000 {
        let got = streams.get_records(&it, 10_000, now).expect("get");
        if got.records.is_empty() {
            return out;
        }
        out.extend(got.records);
        it = got.next_shard_iterator.expect("open shard");
    }
    panic!("reading did not end");
}

fn seq_key(s: &str) -> (usize, String) {
    (s.len(), s.to_owned())
}

#[test]
fn acknowledged_records_survive_reopen_and_numbers_keep_rising() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let streams = Streams::open(dir.path(), config(false)).expect("open");
        streams.create_stream("orders", 2, T0).expect("create");
        let entries = (0..200)
            .map(|i| entry(&format!("k{i}"), &[i as u8; 700]))
            .collect();
        put(&streams, "orders", entries, T0)
    };
    let streams = Streams::open(dir.path(), config(false)).expect("reopen");
    assert_eq!(streams.list_streams().expect("list"), vec!["orders"]);
    let mut total = 0;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let records = read_all(&streams, "orders", shard, T0);
        let acked: Vec<&PutOk> = first.iter().filter(|p| p.shard_id == shard).collect();
        assert_eq!(records.len(), acked.len());
        for (r, a) in records.iter().zip(&acked) {
            assert_eq!(r.sequence_number, a.sequence_number);
        }
        total += records.len();
    }
    assert_eq!(total, 200);
    let later = put(&streams, "orders", vec![entry("k0", b"after")], T0);
    let before_max = first
        .iter()
        .filter(|p| p.shard_id == later[0].shard_id)
        .map(|p| seq_key(&p.sequence_number))
        .max()
        .expect("some on that shard");
    assert!(seq_key(&later[0].sequence_number) > before_max);
}

#[test]
fn keys_land_on_the_shard_that_owns_their_md5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(false)).expect("open");
    streams.create_stream("s", 2, T0).expect("create");
    let ranges = hash::initial_ranges(2);
    for key in ["a", "b", "c", "d", "orders-17"] {
        let got = put(&streams, "s", vec![entry(key, b"x")], T0);
        let owner = hash::shard_for(&ranges, hash::partition_hash(key)).expect("owner");
        assert_eq!(got[0].shard_id, shard_id(owner as u32), "{key}");
    }
    let explicit = PutEntry {
        explicit_hash_key: Some(u128::MAX),
        ..entry("a", b"x")
    };
    assert_eq!(
        put(&streams, "s", vec![explicit], T0)[0].shard_id,
        shard_id(1)
    );
}

#[test]
fn iterator_types_start_where_they_should() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(false)).expect("open");
    streams.create_stream("s", 1, T0).expect("create");
    let shard = "shardId-000000000000";
    let early = put(&streams, "s", vec![entry("k", b"1"), entry("k", b"2")], T0);
    let later_time = UnixMillis(T0.0 + 5_000);
    let latest = streams
        .shard_iterator("s", shard, &IteratorStart::Latest, later_time)
        .expect("latest");
    put(&streams, "s", vec![entry("k", b"3")], later_time);
    let data = |start: IteratorStart| -> Vec<Vec<u8>> {
        let it = streams
            .shard_iterator("s", shard, &start, later_time)
            .expect("iterator");
        let got = streams.get_records(&it, 100, later_time).expect("get");
        got.records.into_iter().map(|r| r.data).collect()
    };
    assert_eq!(
        data(IteratorStart::TrimHorizon),
        vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
    let first = early[0].sequence_number.clone();
    assert_eq!(
        data(IteratorStart::AtSequenceNumber(first.clone())).len(),
        3
    );
    assert_eq!(data(IteratorStart::AfterSequenceNumber(first)).len(), 2);
    assert_eq!(
        data(IteratorStart::AtTimestamp(later_time)),
        vec![b"3".to_vec()]
    );
    let got = streams.get_records(&latest, 100, later_time).expect("get");
    assert_eq!(got.records.len(), 1);
    // Limit and the next iterator continue where the last call stopped.
    let it = streams
        .shard_iterator("s", shard, &IteratorStart::TrimHorizon, later_time)
        .expect("iterator");
    let one = streams.get_records(&it, 1, later_time).expect("get");
    assert_eq!(one.records.len(), 1);
    assert!(one.millis_behind_latest > 0);
    let rest = streams
        .get_records(
            one.next_shard_iterator.as_deref().expect("open"),
            100,
            later_time,
        )
        .expect("get");
    assert_eq!(rest.records.len(), 2);
    assert_eq!(rest.millis_behind_latest, 0);
}

#[test]
fn foreign_sequence_numbers_and_bad_iterators_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(false)).expect("open");
    streams.create_stream("s", 2, T0).expect("create");
    let explicit = PutEntry {
        explicit_hash_key: Some(0),
        ..entry("a", b"x")
    };
    let on_zero = put(&streams, "s", vec![explicit], T0);
    let err = streams
        .shard_iterator(
            "s",
            "shardId-000000000001",
            &IteratorStart::AtSequenceNumber(on_zero[0].sequence_number.clone()),
            T0,
        )
        .expect_err("foreign");
    assert!(
        err.to_string().contains("It encodes shardId-000000000000"),
        "{err}"
    );
    let it = streams
        .shard_iterator("s", "shardId-000000000000", &IteratorStart::TrimHorizon, T0)
        .expect("iterator");
    let expired = streams.get_records(&it, 10, UnixMillis(T0.0 + 300_001));
    assert!(matches!(expired, Err(StreamsError::ExpiredIterator { .. })));
    let bad = streams.get_records("AAAAAAAAAAE=", 10, T0);
    assert!(matches!(bad, Err(StreamsError::InvalidArgument(_))));
    // An iterator of a deleted and recreated stream is not accepted.
    streams.delete_stream("s").expect("delete");
    streams
        .create_stream("s", 2, UnixMillis(T0.0 + 1))
        .expect("recreate");
    assert!(matches!(
        streams.get_records(&it, 10, T0),
        Err(StreamsError::StreamNotFound { .. })
    ));
}

#[test]
fn retention_deletes_whole_expired_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(false)).expect("open");
    streams.create_stream("s", 1, T0).expect("create");
    // 64 KiB segments: 100 records of 4 KiB fill several.
    let old: Vec<PutEntry> = (0..100).map(|_| entry("k", &[1; 4096])).collect();
    put(&streams, "s", old, T0);
    let day_later = UnixMillis(T0.0 + 24 * HOUR_MS + 1);
    put(&streams, "s", vec![entry("k", b"new")], day_later);
    assert_eq!(
        streams
            .enforce_retention(UnixMillis(T0.0 + 1000))
            .expect("retention"),
        0
    );
    let deleted = streams.enforce_retention(day_later).expect("retention");
    assert!(deleted >= 5, "deleted {deleted}");
    let left = read_all(&streams, "s", "shardId-000000000000", day_later);
    assert!(left.len() < 100 && !left.is_empty());
    assert_eq!(left.last().map(|r| r.data.clone()), Some(b"new".to_vec()));
    let err = streams
        .set_retention("s", 23, false)
        .expect_err("too short");
    assert!(
        err.to_string()
            .contains("Minimum allowed retention period is 24 hours")
    );
    assert!(streams.set_retention("s", 8761, true).is_err());
    streams.set_retention("s", 48, true).expect("increase");
    assert!(streams.set_retention("s", 36, true).is_err());
    streams.set_retention("s", 36, false).expect("decrease");
    assert_eq!(streams.describe("s").expect("describe").retention_hours, 36);
}

#[test]
fn throttling_fails_single_entries_and_can_be_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(true)).expect("open");
    streams.create_stream("s", 1, T0).expect("create");
    let entries: Vec<PutEntry> = (0..1100).map(|i| entry(&format!("k{i}"), b"x")).collect();
    let outcomes = rt()
        .block_on(streams.put_records("s", entries.clone(), T0))
        .expect("put");
    let failed: Vec<&PutFailure> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(failed.len(), 100);
    assert_eq!(failed[0].code, "ProvisionedThroughputExceededException");
    assert!(
        failed[0]
            .message
            .starts_with("Rate exceeded for shard shardId-000000000000 in stream s")
    );
    // A second later the bucket has refilled.
    let again = rt()
        .block_on(streams.put_records("s", entries[..10].to_vec(), UnixMillis(T0.0 + 1000)))
        .expect("put");
    assert!(again.iter().all(|o| o.is_ok()));
    // Five reads a second.
    let it = streams
        .shard_iterator("s", "shardId-000000000000", &IteratorStart::Latest, T0)
        .expect("iterator");
    for _ in 0..5 {
        streams.get_records(&it, 1, T0).expect("within the limit");
    }
    assert!(matches!(
        streams.get_records(&it, 1, T0),
        Err(StreamsError::Throttled { .. })
    ));
    let open = tempfile::tempdir().expect("tempdir");
    let free = Streams::open(open.path(), config(false)).expect("open");
    free.create_stream("s", 1, T0).expect("create");
    let outcomes = rt()
        .block_on(free.put_records("s", entries, T0))
        .expect("put");
    assert!(outcomes.iter().all(|o| o.is_ok()));
}

#[test]
fn names_and_limits_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), config(false)).expect("open");
    for bad in ["", ".", "..", "a/b", "é", &"x".repeat(129)] {
        assert!(streams.create_stream(bad, 1, T0).is_err(), "{bad:?}");
    }
    assert!(streams.create_stream("ok", 0, T0).is_err());
    streams.create_stream("ok", 1, T0).expect("create");
    assert!(matches!(
        streams.create_stream("ok", 1, T0),
        Err(StreamsError::StreamExists { .. })
    ));
    assert!(matches!(
        streams.describe("missing"),
        Err(StreamsError::StreamNotFound { .. })
    ));
    assert!(matches!(
        streams.shard_iterator("ok", "shardId-000000000009", &IteratorStart::Latest, T0),
        Err(StreamsError::ShardNotFound { .. })
    ));
    assert_eq!(streams.name_from_arn(&streams.arn("ok")), Some("ok"));
    assert_eq!(
        streams.name_from_arn("arn:aws:kinesis:eu-west-1:1:stream/ok"),
        None
    );
}

const HALF: u128 = 1u128 << 127;

fn reshard_config() -> StreamsConfig {
    StreamsConfig {
        reshard_updating_ms: 1_000,
        scaling: ScalingPolicy {
            hot_percent: 80,
            hot_seconds_min: 3,
            shards_max: 6,
        },
        ..config(false)
    }
}

fn keyed(hash: u128, data: &[u8]) -> PutEntry {
    PutEntry {
        explicit_hash_key: Some(hash),
        ..entry("k", data)
    }
}

/// Reads a shard from TRIM_HORIZON to its end; returns the data and the children given at
/// the end (empty for an open shard).
fn read_to_end(
    streams: &Streams,
    name: &str,
    shard: &str,
    now: UnixMillis,
) -> (Vec<Vec<u8>>, Vec<ChildShard>) {
    let mut it = streams
        .shard_iterator(name, shard, &IteratorStart::TrimHorizon, now)
        .expect("iterator");
    let mut out = Vec::new();
    for _ in 0..1000 {
        let got = streams.get_records(&it, 2, now).expect("get");
        let empty = got.records.is_empty();
        out.extend(got.records.into_iter().map(|r| r.data));
        match got.next_shard_iterator {
            None => return (out, got.child_shards),
            // An open shard: an empty page is its current end.
            Some(_) if empty => return (out, Vec::new()),
            Some(next) => it = next,
        }
    }
    panic!("reading did not end");
}

fn shard_of(streams: &Streams, name: &str, id: &str) -> ShardDescription {
    streams
        .describe(name)
        .expect("describe")
        .shards
        .into_iter()
        .find(|s| s.shard_id == id)
        .expect("shard listed")
}

#[test]
fn split_closes_the_parent_routes_to_children_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), reshard_config()).expect("open");
    streams.create_stream("s", 1, T0).expect("create");
    put(
        &streams,
        "s",
        vec![keyed(1, b"before-low"), keyed(HALF + 1, b"before-high")],
        T0,
    );
    let parent = "shardId-000000000000";
    for bad in [0, 1, u128::MAX] {
        assert!(matches!(
            streams.split_shard("s", parent, bad, T0),
            Err(StreamsError::InvalidArgument(_))
        ));
    }
    streams.split_shard("s", parent, HALF, T0).expect("split");
    assert_eq!(streams.describe_at("s", T0).expect("d").status, "UPDATING");
    assert!(matches!(
        streams.split_shard("s", "shardId-000000000001", HALF + 10, T0),
        Err(StreamsError::InUse(_))
    ));
    let later = UnixMillis(T0.0 + 1_000);
    assert_eq!(streams.describe_at("s", later).expect("d").status, "ACTIVE");
    let acked = put(
        &streams,
        "s",
        vec![keyed(5, b"after-low"), keyed(HALF + 5, b"after-high")],
        later,
    );
    assert_eq!(acked[0].shard_id, "shardId-000000000001");
    assert_eq!(acked[1].shard_id, "shardId-000000000002");
    assert!(matches!(
        streams.split_shard("s", parent, HALF / 2, later),
        Err(StreamsError::InUse(_))
    ));

    let (data, children) = read_to_end(&streams, "s", parent, later);
    assert_eq!(data, vec![b"before-low".to_vec(), b"before-high".to_vec()]);
    let ids: Vec<&str> = children.iter().map(|c| c.shard_id.as_str()).collect();
    assert_eq!(ids, ["shardId-000000000001", "shardId-000000000002"]);
    assert_eq!(children[0].parent_shards, vec![parent.to_owned()]);
    assert_eq!(
        children[1].range,
        HashRange {
            start: HALF,
            end: u128::MAX
        }
    );
    drop(streams);

    let streams = Streams::open(dir.path(), reshard_config()).expect("reopen");
    let closed = shard_of(&streams, "s", parent);
    assert!(closed.ending_sequence_number.is_some());
    let child = shard_of(&streams, "s", "shardId-000000000002");
    assert_eq!(child.parent_shard_id.as_deref(), Some(parent));
    assert_eq!(child.range.start, HALF);
    assert_eq!(streams.describe("s").expect("d").open_shard_count, 2);
    let (data, _) = read_to_end(&streams, "s", "shardId-000000000002", later);
    assert_eq!(data, vec![b"after-high".to_vec()]);
    let acked = put(&streams, "s", vec![keyed(7, b"reopened")], later);
    assert_eq!(acked[0].shard_id, "shardId-000000000001");
    // The closed parent goes once its close is older than the retention.
    let day = UnixMillis(T0.0 + 25 * HOUR_MS);
    streams.enforce_retention(day).expect("retention");
    assert_eq!(streams.describe("s").expect("d").shards.len(), 2);
    streams
        .split_shard("s", "shardId-000000000002", HALF + 100, day)
        .expect("split again");
    assert_eq!(
        shard_of(&streams, "s", "shardId-000000000003")
            .parent_shard_id
            .as_deref(),
        Some("shardId-000000000002")
    );
}

#[test]
fn merge_needs_adjacent_open_shards_and_names_both_parents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), reshard_config()).expect("open");
    streams.create_stream("m", 3, T0).expect("create");
    let (a, b, c) = (
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    );
    assert!(matches!(
        streams.merge_shards("m", a, c, T0),
        Err(StreamsError::InvalidArgument(_))
    ));
    assert!(matches!(
        streams.merge_shards("m", a, "shardId-000000000009", T0),
        Err(StreamsError::ShardNotFound { .. })
    ));
    streams.merge_shards("m", b, a, T0).expect("merge");
    let child = shard_of(&streams, "m", "shardId-000000000003");
    // ParentShardId is the shard named first (ShardToMerge), as AWS records it.
    assert_eq!(
        child.parent_shard_id.as_deref(),
        Some("shardId-000000000001")
    );
    assert_eq!(
        child.adjacent_parent_shard_id.as_deref(),
        Some("shardId-000000000000")
    );
    assert_eq!(child.range.start, 0);
    assert_eq!(child.range.end + 1, shard_of(&streams, "m", c).range.start);
    let later = UnixMillis(T0.0 + 2_000);
    assert!(matches!(
        streams.merge_shards("m", a, b, later),
        Err(StreamsError::InUse(_))
    ));
}

#[test]
fn update_shard_count_doubles_and_halves_with_uniform_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), reshard_config()).expect("open");
    streams.create_stream("u", 2, T0).expect("create");
    assert!(matches!(
        streams.update_shard_count("u", 5, T0),
        Err(StreamsError::InvalidArgument(_))
    ));
    assert_eq!(streams.update_shard_count("u", 4, T0).expect("up"), 2);
    let t1 = UnixMillis(T0.0 + 1_000);
    let open = streams
        .list_shards("u", &ShardFilter::AtLatest, t1)
        .expect("list");
    let ranges: Vec<HashRange> = open.iter().map(|s| s.range).collect();
    assert_eq!(ranges, hash::initial_ranges(4));
    assert_eq!(
        open[0].parent_shard_id.as_deref(),
        Some("shardId-000000000000")
    );
    assert_eq!(
        open[3].parent_shard_id.as_deref(),
        Some("shardId-000000000001")
    );
    assert_eq!(streams.update_shard_count("u", 2, t1).expect("down"), 4);
    let t2 = UnixMillis(T0.0 + 2_000);
    let open = streams
        .list_shards("u", &ShardFilter::AtLatest, t2)
        .expect("list");
    assert_eq!(open.len(), 2);
    assert_eq!(
        open[0].parent_shard_id.as_deref(),
        Some("shardId-000000000002")
    );
    assert_eq!(
        open[0].adjacent_parent_shard_id.as_deref(),
        Some("shardId-000000000003")
    );
    let all = |f: ShardFilter| -> Vec<String> {
        streams
            .list_shards("u", &f, t2)
            .expect("list")
            .into_iter()
            .map(|s| s.shard_id)
            .collect()
    };
    assert_eq!(all(ShardFilter::All).len(), 8);
    assert_eq!(all(ShardFilter::FromTrimHorizon).len(), 8);
    assert_eq!(
        all(ShardFilter::AtTrimHorizon),
        ["shardId-000000000000", "shardId-000000000001"]
    );
    assert_eq!(
        all(ShardFilter::AfterShardId("shardId-000000000005".into())),
        ["shardId-000000000006", "shardId-000000000007"]
    );
    assert_eq!(
        all(ShardFilter::AtTimestamp(UnixMillis(T0.0 + 500))).len(),
        4
    );
    assert_eq!(
        all(ShardFilter::FromTimestamp(UnixMillis(T0.0 + 500))).len(),
        6
    );
    assert_eq!(
        all(ShardFilter::FromTimestamp(UnixMillis(T0.0 + 1_500))).len(),
        2
    );
}

#[test]
fn on_demand_streams_split_a_shard_that_stays_hot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), reshard_config()).expect("open");
    streams
        .create_stream_in_mode("od", ON_DEMAND_INITIAL_SHARDS, StreamMode::OnDemand, T0)
        .expect("create");
    let d = streams.describe("od").expect("d");
    assert_eq!((d.mode, d.open_shard_count), (StreamMode::OnDemand, 4));
    for s in 0..3u64 {
        let now = UnixMillis(T0.0 + s * 1000);
        let hot: Vec<PutEntry> = (0..450).map(|_| keyed(7, b"x")).collect();
        put(&streams, "od", hot.clone(), now);
        put(&streams, "od", hot, UnixMillis(now.0 + 500));
        assert!(
            streams
                .autoscale(UnixMillis(now.0 + 900))
                .expect("scale")
                .is_empty(),
            "second {s}"
        );
    }
    let split = streams.autoscale(UnixMillis(T0.0 + 3_000)).expect("scale");
    assert_eq!(
        split,
        vec![("od".to_owned(), "shardId-000000000000".to_owned())]
    );
    assert_eq!(streams.describe("od").expect("d").open_shard_count, 5);
    // A provisioned stream under the same load never splits.
    streams
        .update_stream_mode("od", StreamMode::Provisioned, UnixMillis(T0.0 + 10_000))
        .expect("mode");
    assert_eq!(
        streams.describe("od").expect("d").mode,
        StreamMode::Provisioned
    );
}

#[test]
fn a_put_on_a_hot_on_demand_shard_starts_the_split_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let streams = Streams::open(dir.path(), reshard_config()).expect("open");
    streams
        .create_stream_in_mode("od", ON_DEMAND_INITIAL_SHARDS, StreamMode::OnDemand, T0)
        .expect("create");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for s in 0..4u64 {
        let hot: Vec<PutEntry> = (0..450).map(|_| keyed(7, b"x")).collect();
        let now = UnixMillis(T0.0 + s * 1000);
        runtime
            .block_on(streams.put_records("od", hot, now))
            .expect("put");
        runtime
            .block_on(streams.put_records("od", vec![keyed(7, &[1; 10]); 450], now))
            .expect("put");
    }
    // The split runs on the blocking pool: wait for it, bounded.
    let mut open = 0;
    for _ in 0..500 {
        open = streams.describe("od").expect("d").open_shard_count;
        if open == 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(open, 5);
    drop(runtime);
}
