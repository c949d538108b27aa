"""CBOR 1.1 (`application/x-amz-cbor-1.1`, the Java SDKs' format) against a real server: requests
built with cbor2, replies checked for byte-string blobs and tag-1 epoch-millisecond timestamps."""

import struct
import time
import urllib.error
import urllib.request

import cbor2

CBOR = "application/x-amz-cbor-1.1"


def read_reply(data):
    """A strict reader for replies: cbor2 reads tag 1 as RFC 8949 seconds, while the AWS Java
    SDK puts epoch milliseconds under it, so tags come back as (tag, value) pairs here."""

    def item(pos):
        head = data[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        if major == 7:
            if info == 27:
                return struct.unpack(">d", data[pos:pos + 8])[0], pos + 8
            return {20: False, 21: True, 22: None}[info], pos
        if info < 24:
            arg = info
        else:
            size = {24: 1, 25: 2, 26: 4, 27: 8}[info]
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major in (2, 3):
            raw = data[pos:pos + arg]
            return (bytes(raw) if major == 2 else raw.decode()), pos + arg
        if major == 4:
            out = []
            for _ in range(arg):
                v, pos = item(pos)
                out.append(v)
            return out, pos
        if major == 5:
            out = {}
            for _ in range(arg):
                k, pos = item(pos)
                out[k], pos = item(pos)
            return out, pos
        v, pos = item(pos)
        return (arg, v), pos

    value, end = item(0)
    assert end == len(data), "trailing bytes after the reply"
    return value


def call(server, op, body):
    req = urllib.request.Request(
        server.endpoint + "/",
        data=cbor2.dumps(body),
        headers={"Content-Type": CBOR, "X-Amz-Target": f"Kinesis_20131202.{op}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.headers["Content-Type"], read_reply(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], read_reply(e.read())


def ok(server, op, body):
    status, ctype, reply = call(server, op, body)
    assert status == 200, reply
    assert ctype == CBOR
    return reply


def test_cbor_put_and_get_round_trip(server):
    ok(server, "CreateStream", {"StreamName": "cbor-orders", "ShardCount": 1})
    for _ in range(200):
        s = ok(server, "DescribeStreamSummary", {"StreamName": "cbor-orders"})
        if s["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            break
        time.sleep(0.05)
    before_ms = int(time.time() * 1000) - 1000
    one = ok(server, "PutRecord", {"StreamName": "cbor-orders", "PartitionKey": "a", "Data": b"\x00\xffone"})
    assert one["ShardId"] == "shardId-000000000000"
    many = ok(server, "PutRecords", {
        "StreamName": "cbor-orders",
        "Records": [{"PartitionKey": f"k{i}", "Data": bytes([i]) * 3} for i in range(5)],
    })
    assert many["FailedRecordCount"] == 0 and len(many["Records"]) == 5
    it = ok(server, "GetShardIterator", {
        "StreamName": "cbor-orders", "ShardId": "shardId-000000000000",
        "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": cbor2.CBORTag(1, before_ms),
    })["ShardIterator"]
    got = ok(server, "GetRecords", {"ShardIterator": it, "Limit": 100})
    records = got["Records"]
    assert [r["Data"] for r in records] == [b"\x00\xffone"] + [bytes([i]) * 3 for i in range(5)]
    assert records[0]["SequenceNumber"] == one["SequenceNumber"]
    tag, arrival_ms = records[0]["ApproximateArrivalTimestamp"]
    assert tag == 1 and isinstance(arrival_ms, int)
    assert before_ms <= arrival_ms <= int(time.time() * 1000) + 1000
    assert got["MillisBehindLatest"] == 0


def test_cbor_errors_are_cbor(server):
    status, ctype, reply = call(server, "DescribeStream", {"StreamName": "cbor-missing"})
    assert status == 400 and ctype == CBOR
    assert reply["__type"] == "ResourceNotFoundException"
    status, ctype, reply = call(server, "GetRecords", {"ShardIterator": 7})
    assert status == 400 and reply["__type"] == "SerializationException"


def test_timestamp_future_iterator_is_empty(server):
    ok(server, "CreateStream", {"StreamName": "cbor-late", "ShardCount": 1})
    for _ in range(200):
        s = ok(server, "DescribeStreamSummary", {"StreamName": "cbor-late"})
        if s["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            break
        time.sleep(0.05)
    ok(server, "PutRecord", {"StreamName": "cbor-late", "PartitionKey": "a", "Data": b"x"})
    later_ms = int(time.time() * 1000) + 60_000
    it = ok(server, "GetShardIterator", {
        "StreamName": "cbor-late", "ShardId": "shardId-000000000000",
        "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": cbor2.CBORTag(1, later_ms),
    })["ShardIterator"]
    assert ok(server, "GetRecords", {"ShardIterator": it})["Records"] == []
