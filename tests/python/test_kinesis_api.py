"""boto3 `kinesis` against a real `hydrant server --open`: streams, shards, puts, iterators,
retention and error shapes."""

import hashlib
import time

import botocore.exceptions
import pytest


@pytest.fixture(scope="module")
def kinesis(server):
    return server.client("kinesis")


@pytest.fixture(scope="module")
def stream(kinesis):
    kinesis.create_stream(StreamName="orders", ShardCount=2)
    return "orders"


def owner(shards, key):
    h = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    for s in shards:
        r = s["HashKeyRange"]
        if int(r["StartingHashKey"]) <= h <= int(r["EndingHashKey"]):
            return s["ShardId"]
    raise AssertionError("no shard owns the key")


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def read_all(kinesis, stream, shard, kind="TRIM_HORIZON", **extra):
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType=kind, **extra)["ShardIterator"]
    out = []
    for _ in range(100):
        got = kinesis.get_records(ShardIterator=it, Limit=1000)
        if not got["Records"]:
            return out
        out.extend(got["Records"])
        it = got["NextShardIterator"]
    raise AssertionError("reading did not end")


def test_shards_cover_the_hash_space(kinesis, stream):
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    assert [s["ShardId"] for s in shards] == ["shardId-000000000000", "shardId-000000000001"]
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert int(shards[0]["HashKeyRange"]["EndingHashKey"]) + 1 == int(shards[1]["HashKeyRange"]["StartingHashKey"])
    assert shards[1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    desc = kinesis.describe_stream(StreamName=stream)["StreamDescription"]
    assert desc["StreamStatus"] == "ACTIVE" and desc["RetentionPeriodHours"] == 24
    assert desc["StreamARN"] == "arn:aws:kinesis:us-east-1:000000000000:stream/orders"
    summary = kinesis.describe_stream_summary(StreamARN=desc["StreamARN"])["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 2
    assert "orders" in kinesis.list_streams()["StreamNames"]
    page = kinesis.list_shards(StreamName=stream, MaxResults=1)
    rest = kinesis.list_shards(NextToken=page["NextToken"])
    assert [s["ShardId"] for s in page["Shards"] + rest["Shards"]] == [s["ShardId"] for s in shards]


def test_puts_land_by_md5_with_rising_sequence_numbers(kinesis, stream):
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    last = {}
    for i in range(20):
        key = f"key-{i}"
        r = kinesis.put_record(StreamName=stream, Data=f"single-{i}".encode(), PartitionKey=key)
        assert r["ShardId"] == owner(shards, key)
        seq = int(r["SequenceNumber"])
        assert seq > last.get(r["ShardId"], 0)
        last[r["ShardId"]] = seq
    batch = kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": f"batch-{i}".encode(), "PartitionKey": f"b-{i}"} for i in range(50)],
    )
    assert batch["FailedRecordCount"] == 0
    for i, r in enumerate(batch["Records"]):
        assert r["ShardId"] == owner(shards, f"b-{i}")
        assert int(r["SequenceNumber"]) > last[r["ShardId"]]
        last[r["ShardId"]] = int(r["SequenceNumber"])
    got = read_all(kinesis, stream, "shardId-000000000000") + read_all(kinesis, stream, "shardId-000000000001")
    assert sorted(r["Data"] for r in got) == sorted(
        [f"single-{i}".encode() for i in range(20)] + [f"batch-{i}".encode() for i in range(50)]
    )


def test_iterator_types(kinesis):
    kinesis.create_stream(StreamName="iters", ShardCount=1)
    shard = "shardId-000000000000"
    first = kinesis.put_record(StreamName="iters", Data=b"one", PartitionKey="k")
    kinesis.put_record(StreamName="iters", Data=b"two", PartitionKey="k")
    latest = kinesis.get_shard_iterator(StreamName="iters", ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    kinesis.put_record(StreamName="iters", Data=b"three", PartitionKey="k")
    assert [r["Data"] for r in read_all(kinesis, "iters", shard)] == [b"one", b"two", b"three"]
    after = read_all(kinesis, "iters", shard, "AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=first["SequenceNumber"])
    assert [r["Data"] for r in after] == [b"two", b"three"]
    at = read_all(kinesis, "iters", shard, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=first["SequenceNumber"])
    assert at[0]["SequenceNumber"] == first["SequenceNumber"]
    assert [r["Data"] for r in read_all(kinesis, "iters", shard, "AT_TIMESTAMP", Timestamp=mark)] == [b"three"]
    got = kinesis.get_records(ShardIterator=latest)
    assert [r["Data"] for r in got["Records"]] == [b"three"]
    assert got["MillisBehindLatest"] == 0
    assert got["Records"][0]["ApproximateArrivalTimestamp"].timestamp() >= mark - 1


def test_bad_and_foreign_iterators(kinesis, stream):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_records(ShardIterator="AAAAAAAAAAFub3RhcmVhbGl0ZXJhdG9y")
    assert error_code(e) == "InvalidArgumentException"
    assert e.value.response["Error"]["Message"] == "Invalid ShardIterator."
    r = kinesis.put_record(StreamName=stream, Data=b"x", PartitionKey="p", ExplicitHashKey="0")
    assert r["ShardId"] == "shardId-000000000000"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_shard_iterator(
            StreamName=stream,
            ShardId="shardId-000000000001",
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=r["SequenceNumber"],
        )
    assert error_code(e) == "InvalidArgumentException"
    assert "It encodes shardId-000000000000" in e.value.response["Error"]["Message"]


def test_retention_bounds(kinesis, stream):
    kinesis.increase_stream_retention_period(StreamName=stream, RetentionPeriodHours=48)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.increase_stream_retention_period(StreamName=stream, RetentionPeriodHours=8761)
    assert error_code(e) == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.decrease_stream_retention_period(StreamName=stream, RetentionPeriodHours=23)
    assert error_code(e) == "InvalidArgumentException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.increase_stream_retention_period(StreamName=stream, RetentionPeriodHours=24)
    assert error_code(e) == "InvalidArgumentException"
    kinesis.decrease_stream_retention_period(StreamName=stream, RetentionPeriodHours=24)
    assert kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 24


def test_tags_and_limits(kinesis, stream):
    kinesis.add_tags_to_stream(StreamName=stream, Tags={"team": "data", "env": "test"})
    kinesis.remove_tags_from_stream(StreamName=stream, TagKeys=["env"])
    assert kinesis.list_tags_for_stream(StreamName=stream)["Tags"] == [{"Key": "team", "Value": "data"}]
    assert kinesis.describe_limits()["OpenShardCount"] >= 2


def test_not_found_and_validation_shapes(kinesis, server):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.describe_stream(StreamName="missing")
    assert error_code(e) == "ResourceNotFoundException"
    assert e.value.response["Error"]["Message"] == "Stream missing under account 000000000000 not found."
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName="missing", Data=b"x", PartitionKey="k")
    assert error_code(e) == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.create_stream(StreamName="orders", ShardCount=1)
    assert error_code(e) == "ResourceInUseException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.put_record(StreamName="orders", Data=b"x" * (1024 * 1024 + 1), PartitionKey="k")
    assert error_code(e) == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kinesis.get_shard_iterator(StreamName="orders", ShardId="shardId-000000000007", ShardIteratorType="LATEST")
    assert error_code(e) == "ResourceNotFoundException"
    kinesis.create_stream(StreamName="doomed", ShardCount=1)
    kinesis.delete_stream(StreamARN="arn:aws:kinesis:us-east-1:000000000000:stream/doomed")
    assert "doomed" not in kinesis.list_streams()["StreamNames"]


def test_signed_keys_limited_to_streams_only_reach_those(signed_server):
    from conftest import LIMITED_KEY_ID, LIMITED_SECRET, LIMITED_STREAM

    admin = signed_server.client("kinesis")
    limited = signed_server.client_with("kinesis", LIMITED_KEY_ID, LIMITED_SECRET)
    admin.create_stream(StreamName=LIMITED_STREAM, ShardCount=1)
    admin.create_stream(StreamName="someone-else", ShardCount=1)
    wait_active(admin, LIMITED_STREAM)
    wait_active(admin, "someone-else")
    put = limited.put_record(StreamName=LIMITED_STREAM, PartitionKey="k", Data=b"mine")
    assert put["ShardId"] == "shardId-000000000000"

    with pytest.raises(botocore.exceptions.ClientError) as denied:
        limited.describe_stream_summary(StreamName="someone-else")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        limited.put_record(StreamName="someone-else", PartitionKey="k", Data=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "someone-else" not in limited.list_streams()["StreamNames"]
    assert "someone-else" in admin.list_streams()["StreamNames"]


def wait_active(client, name):
    for _ in range(100):
        if client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never became ACTIVE")
