"""boto3 `kinesis` resharding and capacity modes against a real `hydrant server --open`: split,
merge, UpdateShardCount, lineage and ChildShards at the end of a closed shard, ListShards
filters, on-demand streams, and a restarted server keeping the shard map and the data."""

import hashlib
import time

import botocore.exceptions
import pytest

from conftest import Server

HALF = 2**127
ACTIVE_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def kinesis(server):
    return server.client("kinesis")


def key_hash(key):
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def keys_on_both_sides(count=6):
    low = [k for k in (f"key-{i}" for i in range(200)) if key_hash(k) < HALF][:count]
    high = [k for k in (f"key-{i}" for i in range(200)) if key_hash(k) >= HALF][:count]
    return low, high


def wait_active(kinesis, stream):
    deadline = time.monotonic() + ACTIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            return summary
        time.sleep(0.1)
    raise AssertionError(f"{stream} did not become ACTIVE")


def shards_by_id(kinesis, stream, **extra):
    return {s["ShardId"]: s for s in kinesis.list_shards(StreamName=stream, **extra)["Shards"]}


def read_shard(kinesis, stream, shard):
    """Reads a shard from TRIM_HORIZON; returns (data, ChildShards or None when still open)."""
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out = []
    for _ in range(100):
        got = kinesis.get_records(ShardIterator=it, Limit=3)
        out.extend(r["Data"] for r in got["Records"])
        if got.get("NextShardIterator") is None:
            return out, got["ChildShards"]
        if not got["Records"]:
            return out, None
        it = got["NextShardIterator"]
    raise AssertionError("reading did not end")


def read_kcl_style(kinesis, stream):
    """Reads every shard parents first (a child only once all its retained parents ended)."""
    shards = shards_by_id(kinesis, stream)
    done, order, data = set(), [], {}
    while len(done) < len(shards):
        ready = [
            sid for sid, s in sorted(shards.items())
            if sid not in done
            and all(p in done or p not in shards for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)
        ]
        assert ready, "lineage has a cycle"
        for sid in ready:
            data[sid], _ = read_shard(kinesis, stream, sid)
            order.append(sid)
            done.add(sid)
    return order, data


def test_split_routes_keys_to_children_and_the_parent_ends_with_child_shards(kinesis):
    kinesis.create_stream(StreamName="split", ShardCount=1)
    low, high = keys_on_both_sides()
    for k in low[:3] + high[:3]:
        kinesis.put_record(StreamName="split", PartitionKey=k, Data=f"old-{k}".encode())
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        kinesis.split_shard(StreamName="split", ShardToSplit="shardId-000000000000", NewStartingHashKey="1")
    assert bad.value.response["Error"]["Code"] == "InvalidArgumentException"
    kinesis.split_shard(StreamName="split", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(HALF))
    status = kinesis.describe_stream(StreamName="split")["StreamDescription"]["StreamStatus"]
    with pytest.raises(botocore.exceptions.ClientError) as busy:
        kinesis.split_shard(StreamName="split", ShardToSplit="shardId-000000000001", NewStartingHashKey=str(HALF // 2))
    if status == "UPDATING":
        assert busy.value.response["Error"]["Code"] == "ResourceInUseException"
    wait_active(kinesis, "split")

    placed = {}
    for k in low[3:] + high[3:]:
        placed[k] = kinesis.put_record(StreamName="split", PartitionKey=k, Data=f"new-{k}".encode())["ShardId"]
    assert {placed[k] for k in low[3:]} == {"shardId-000000000001"}
    assert {placed[k] for k in high[3:]} == {"shardId-000000000002"}

    shards = shards_by_id(kinesis, "split")
    parent = shards["shardId-000000000000"]
    assert "EndingSequenceNumber" in parent["SequenceNumberRange"]
    assert shards["shardId-000000000001"]["ParentShardId"] == "shardId-000000000000"
    assert shards["shardId-000000000002"]["HashKeyRange"]["StartingHashKey"] == str(HALF)
    assert shards["shardId-000000000001"]["HashKeyRange"]["EndingHashKey"] == str(HALF - 1)
    summary = kinesis.describe_stream_summary(StreamName="split")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2

    data, children = read_shard(kinesis, "split", "shardId-000000000000")
    assert data == [f"old-{k}".encode() for k in low[:3] + high[:3]]
    assert [c["ShardId"] for c in children] == ["shardId-000000000001", "shardId-000000000002"]
    assert all(c["ParentShards"] == ["shardId-000000000000"] for c in children)

    order, by_shard = read_kcl_style(kinesis, "split")
    assert order[0] == "shardId-000000000000"
    assert by_shard["shardId-000000000001"] == [f"new-{k}".encode() for k in low[3:]]
    assert by_shard["shardId-000000000002"] == [f"new-{k}".encode() for k in high[3:]]


def test_merge_needs_adjacent_shards(kinesis):
    kinesis.create_stream(StreamName="merge", ShardCount=3)
    with pytest.raises(botocore.exceptions.ClientError) as far:
        kinesis.merge_shards(StreamName="merge", ShardToMerge="shardId-000000000000", AdjacentShardToMerge="shardId-000000000002")
    assert far.value.response["Error"]["Code"] == "InvalidArgumentException"
    kinesis.put_record(StreamName="merge", PartitionKey="p", Data=b"before", ExplicitHashKey="0")
    kinesis.merge_shards(StreamName="merge", ShardToMerge="shardId-000000000000", AdjacentShardToMerge="shardId-000000000001")
    wait_active(kinesis, "merge")
    child = shards_by_id(kinesis, "merge")["shardId-000000000003"]
    assert child["ParentShardId"] == "shardId-000000000000"
    assert child["AdjacentParentShardId"] == "shardId-000000000001"
    assert child["HashKeyRange"]["StartingHashKey"] == "0"
    put = kinesis.put_record(StreamName="merge", PartitionKey="p", Data=b"after", ExplicitHashKey="0")
    assert put["ShardId"] == "shardId-000000000003"
    data, children = read_shard(kinesis, "merge", "shardId-000000000000")
    assert data == [b"before"] and [c["ShardId"] for c in children] == ["shardId-000000000003"]
    with pytest.raises(botocore.exceptions.ClientError) as closed:
        kinesis.merge_shards(StreamName="merge", ShardToMerge="shardId-000000000000", AdjacentShardToMerge="shardId-000000000001")
    assert closed.value.response["Error"]["Code"] == "ResourceInUseException"


def test_update_shard_count_up_and_down_and_list_filters(kinesis):
    kinesis.create_stream(StreamName="scale", ShardCount=2)
    with pytest.raises(botocore.exceptions.ClientError) as too_far:
        kinesis.update_shard_count(StreamName="scale", TargetShardCount=5, ScalingType="UNIFORM_SCALING")
    assert too_far.value.response["Error"]["Code"] == "InvalidArgumentException"
    up = kinesis.update_shard_count(StreamName="scale", TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    assert (up["CurrentShardCount"], up["TargetShardCount"]) == (2, 4)
    assert wait_active(kinesis, "scale")["OpenShardCount"] == 4
    down = kinesis.update_shard_count(StreamName="scale", TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    assert (down["CurrentShardCount"], down["TargetShardCount"]) == (4, 2)
    assert wait_active(kinesis, "scale")["OpenShardCount"] == 2

    def ids(**f):
        return sorted(shards_by_id(kinesis, "scale", **f))

    assert len(ids()) == 8
    assert ids(ShardFilter={"Type": "AT_LATEST"}) == ["shardId-000000000006", "shardId-000000000007"]
    assert ids(ShardFilter={"Type": "AT_TRIM_HORIZON"}) == ["shardId-000000000000", "shardId-000000000001"]
    assert len(ids(ShardFilter={"Type": "FROM_TRIM_HORIZON"})) == 8
    assert ids(ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000005"}) == [
        "shardId-000000000006", "shardId-000000000007"]
    assert ids(ExclusiveStartShardId="shardId-000000000005") == ["shardId-000000000006", "shardId-000000000007"]
    now = time.time()
    assert ids(ShardFilter={"Type": "AT_TIMESTAMP", "Timestamp": now}) == ["shardId-000000000006", "shardId-000000000007"]
    assert len(ids(ShardFilter={"Type": "FROM_TIMESTAMP", "Timestamp": now - 3600})) == 8
    latest = shards_by_id(kinesis, "scale", ShardFilter={"Type": "AT_LATEST"})
    first = latest["shardId-000000000006"]
    assert (first["ParentShardId"], first["AdjacentParentShardId"]) == ("shardId-000000000002", "shardId-000000000003")
    assert first["HashKeyRange"]["StartingHashKey"] == "0"
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        kinesis.list_shards(StreamName="scale", ShardFilter={"Type": "AFTER_SHARD_ID"})
    assert bad.value.response["Error"]["Code"] == "InvalidArgumentException"


def test_on_demand_streams_start_with_four_shards_and_switch_modes(kinesis):
    kinesis.create_stream(StreamName="od", StreamModeDetails={"StreamMode": "ON_DEMAND"})
    summary = kinesis.describe_stream_summary(StreamName="od")["StreamDescriptionSummary"]
    assert summary["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    assert summary["OpenShardCount"] == 4
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        kinesis.create_stream(StreamName="prov", StreamModeDetails={"StreamMode": "PROVISIONED"})
    assert bad.value.response["Error"]["Code"] == "InvalidArgumentException"
    assert kinesis.describe_limits()["OnDemandStreamCount"] >= 1
    arn = summary["StreamARN"]
    kinesis.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    summary = wait_active(kinesis, "od")
    assert summary["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
    listed = [s for s in kinesis.list_streams()["StreamSummaries"] if s["StreamName"] == "od"]
    assert listed[0]["StreamModeDetails"]["StreamMode"] == "PROVISIONED"


def test_a_restarted_server_keeps_the_shard_map_and_the_data(tmp_path):
    first = Server(tmp_path, extra_args=["--open"])
    try:
        k = first.client("kinesis")
        k.create_stream(StreamName="kept", ShardCount=1)
        k.put_record(StreamName="kept", PartitionKey="a", Data=b"one", ExplicitHashKey="1")
        k.split_shard(StreamName="kept", ShardToSplit="shardId-000000000000", NewStartingHashKey=str(HALF))
        wait_active(k, "kept")
        k.put_record(StreamName="kept", PartitionKey="a", Data=b"two", ExplicitHashKey=str(HALF + 1))
        before = shards_by_id(k, "kept")
    finally:
        first.stop()
    second = Server(tmp_path, extra_args=["--open"])
    try:
        k = second.client("kinesis")
        after = shards_by_id(k, "kept")
        assert after == before
        assert read_shard(k, "kept", "shardId-000000000000")[0] == [b"one"]
        assert read_shard(k, "kept", "shardId-000000000002") == ([b"two"], None)
        put = k.put_record(StreamName="kept", PartitionKey="a", Data=b"three", ExplicitHashKey="5")
        assert put["ShardId"] == "shardId-000000000001"
    finally:
        second.stop()
