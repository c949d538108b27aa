"""PutMedia: a GStreamer `matroskamux` stream of a recorded clip, sent with chunked transfer
encoding as the KVS producers send it, is acknowledged cluster by cluster (BUFFERING, RECEIVED,
PERSISTED), then listed by boto3's ListFragments and cut by GetClip into a playable MP4.
Malformed Matroska and unknown streams get the KVS error events."""

import http.client
import json
import subprocess
import time

import pytest

from media_checks import decoded_frames, keyframe_flags

CLIP = "intel_one-by-one-person-detection.mp4"
CHUNK_BYTES = 16 * 1024
RESPONSE_TIMEOUT_S = 120


def keyframe_count_of(path):
    return sum(keyframe_flags(path))


def streamable_mkv(clip, out):
    """Matroska as a live producer writes it: unknown-size segment and clusters, one cluster per
    GOP (matroskamux starts a cluster at each keyframe once `min-cluster-duration` has passed)."""
    subprocess.run(
        ["gst-launch-1.0", "-q", "filesrc", f"location={clip}", "!", "qtdemux", "!", "h264parse",
         "!", "matroskamux", "streamable=true", "min-cluster-duration=0", "!", "filesink",
         f"location={out}"],
        check=True, timeout=120,
    )
    return out.read_bytes()


def put_media(server, body, headers):
    """POSTs `body` in chunks (Transfer-Encoding: chunked); returns the status and the events."""
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RESPONSE_TIMEOUT_S)

    def chunks():
        for i in range(0, len(body), CHUNK_BYTES):
            yield body[i:i + CHUNK_BYTES]

    conn.request("POST", "/putMedia", body=chunks(), headers=headers, encode_chunked=True)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    return response.status, events


def relative_headers(stream, start):
    return {
        "x-amzn-stream-name": stream,
        "x-amzn-fragment-timecode-type": "RELATIVE",
        # The producer SDKs do not zero-pad the milliseconds.
        "x-amzn-producer-start-timestamp": f"{int(start)}.{int((start % 1) * 1000)}",
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
    }


@pytest.fixture(scope="module")
def sent(server, kvs, assets, tmp_path_factory):
    clip = assets / "videos" / CLIP
    mkv = streamable_mkv(clip, tmp_path_factory.mktemp("mkv") / "clip.mkv")
    kvs.create_stream(StreamName="py-putmedia", DataRetentionInHours=24)
    start = time.time() - 3600
    status, events = put_media(server, mkv, relative_headers("py-putmedia", start))
    return {"clip": clip, "mkv": mkv, "start": start, "status": status, "events": events}


def test_every_cluster_is_buffered_received_and_persisted(sent):
    assert sent["status"] == 200
    kinds = [e["EventType"] for e in sent["events"]]
    gops = keyframe_count_of(sent["clip"])
    assert kinds.count("ERROR") == 0, sent["events"]
    assert kinds.count("BUFFERING") == gops
    assert kinds.count("RECEIVED") == gops
    assert kinds.count("PERSISTED") == gops
    persisted = [e for e in sent["events"] if e["EventType"] == "PERSISTED"]
    timecodes = [e["FragmentTimecode"] for e in persisted]
    assert timecodes == sorted(timecodes) and timecodes[0] == 0
    assert len({e["FragmentNumber"] for e in persisted}) == gops
    # Each cluster is acknowledged in order: BUFFERING, RECEIVED, then PERSISTED.
    assert kinds[:3] == ["BUFFERING", "RECEIVED", "PERSISTED"]


def test_persisted_fragments_are_listed_and_play_as_a_clip(sent, archived, tmp_path):
    start = sent["start"]
    selector = {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": start - 1, "EndTimestamp": start + 600}}
    fragments = archived.list_fragments(StreamName="py-putmedia", MaxResults=1000,
                                        FragmentSelector=selector)["Fragments"]
    persisted = {e["FragmentNumber"] for e in sent["events"] if e["EventType"] == "PERSISTED"}
    assert {f["FragmentNumber"] for f in fragments} == persisted
    first = min(f["ProducerTimestamp"].timestamp() for f in fragments)
    assert abs(first - start) < 0.01, "RELATIVE timecodes count from the producer start"

    clip = archived.get_clip(StreamName="py-putmedia", ClipFragmentSelector=selector)
    out = tmp_path / "clip.mp4"
    out.write_bytes(clip["Payload"].read())
    assert decoded_frames(out) == decoded_frames(sent["clip"])


def test_a_resent_request_is_not_stored_twice(server, sent, archived):
    status, events = put_media(server, sent["mkv"], relative_headers("py-putmedia", sent["start"]))
    assert status == 200
    first = [e["FragmentNumber"] for e in sent["events"] if e["EventType"] == "PERSISTED"]
    again = [e["FragmentNumber"] for e in events if e["EventType"] == "PERSISTED"]
    assert again == first


def test_absolute_timecodes_are_the_time_itself(server, kvs, archived, sent):
    # A hand-made cluster would need an avcC; reuse the GStreamer stream but declare ABSOLUTE:
    # its clusters then sit at the epoch's first minutes, which ListFragments finds there.
    kvs.create_stream(StreamName="py-putmedia-abs", DataRetentionInHours=24)
    headers = relative_headers("py-putmedia-abs", 0)
    headers["x-amzn-fragment-timecode-type"] = "ABSOLUTE"
    del headers["x-amzn-producer-start-timestamp"]
    status, events = put_media(server, sent["mkv"], headers)
    assert status == 200
    assert [e["EventType"] for e in events].count("PERSISTED") == keyframe_count_of(sent["clip"])
    selector = {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 600}}
    listed = archived.list_fragments(StreamName="py-putmedia-abs", FragmentSelector=selector)
    assert len(listed["Fragments"]) == keyframe_count_of(sent["clip"])


def test_malformed_matroska_gets_error_4006(server, kvs, sent):
    kvs.create_stream(StreamName="py-putmedia-bad", DataRetentionInHours=1)
    mkv = bytearray(sent["mkv"][:200_000])
    # Destroy the first cluster's header: an element id cannot start with a zero byte.
    at = mkv.find(bytes.fromhex("1f43b675"))
    mkv[at:at + 8] = bytes(8)
    status, events = put_media(server, bytes(mkv), relative_headers("py-putmedia-bad", time.time()))
    assert status == 200
    assert events[-1]["EventType"] == "ERROR"
    assert events[-1]["ErrorId"] == 4006
    assert not any(e["EventType"] == "PERSISTED" for e in events)


def test_unknown_stream_gets_error_4008(server, sent):
    status, events = put_media(server, sent["mkv"][:50_000],
                               relative_headers("py-putmedia-missing", time.time()))
    assert status == 200
    assert events == [{"EventType": "ERROR", "FragmentTimecode": 0, "ErrorId": 4008,
                       "ErrorCode": "STREAM_NOT_ACTIVE"}]


def test_missing_timecode_type_is_a_bad_request(server):
    host, port = server.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/putMedia", body=b"", headers={"x-amzn-stream-name": "py-putmedia"})
    response = conn.getresponse()
    assert response.status == 400
    assert response.getheader("x-amzn-ErrorType") == "InvalidArgumentException"
    conn.close()


def test_signed_unsigned_payload_streams_without_buffering(signed_server, sent):
    """With SigV4 keys, a request signed with `x-amz-content-sha256: UNSIGNED-PAYLOAD` keeps its
    body streaming; a bad signature is refused before any handler."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from conftest import SIGNED_KEY_ID, SIGNED_SECRET

    signed_server.client("kinesisvideo").create_stream(StreamName="py-putmedia-signed")
    start = time.time() - 7200
    headers = relative_headers("py-putmedia-signed", start)
    request = AWSRequest(method="POST", url=f"{signed_server.endpoint}/putMedia", data=b"",
                         headers=headers)
    request.context["payload_signing_enabled"] = False
    SigV4Auth(Credentials(SIGNED_KEY_ID, SIGNED_SECRET), "kinesisvideo", "us-east-1").add_auth(request)
    signed = dict(request.headers.items())
    status, events = put_media(signed_server, sent["mkv"], signed)
    assert status == 200
    kinds = [e["EventType"] for e in events]
    assert kinds.count("PERSISTED") == keyframe_count_of(sent["clip"]), events

    try:
        status, _ = put_media(signed_server, sent["mkv"][:1000], headers)
    except (BrokenPipeError, ConnectionResetError):
        # The server refused the unsigned request and closed the connection before the client
        # had written its body: a refusal that the client sees as a broken pipe.
        status = 403
    assert status in (400, 403)
