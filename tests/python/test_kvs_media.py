"""GetMediaForFragmentList and GetMedia: a clip sent by a real agent comes back as Matroska that
mkvtoolnix parses (with the Kinesis Video tags on every fragment) and that GStreamer and ffprobe
decode to the clip's frames; GetMedia follows a live agent."""

import re
import subprocess
import threading
import time

import botocore.exceptions
import pytest

from conftest import hydrant_bin
from media_checks import decoded_frames, gop_sizes

# GetMedia ends a session after this long without a new fragment (the server's idle limit) plus
# slack for a loaded machine.
GET_MEDIA_IDLE_S = 5
LIVE_AGENT_S = 8
FIRST_FRAGMENT_TIMEOUT_S = 60
CLIP = "intel_one-by-one-person-detection.mp4"
UNKNOWN_FRAGMENT = "10000000000099999999"


def gstreamer_frames(path):
    """Frames GStreamer decodes from a Matroska file (matroskademux, h264parse, avdec_h264)."""
    result = subprocess.run(
        ["gst-launch-1.0", "-v", "filesrc", f"location={path}", "!", "matroskademux", "!",
         "h264parse", "!", "avdec_h264", "!", "fakesink", "silent=false", "sync=false"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return len(re.findall(r"fakesink0: last-message = chain", result.stdout))


def mkvinfo(path):
    """(exit status, [(tag name, value)]) as mkvtoolnix reads the file."""
    result = subprocess.run(["mkvinfo", "--all", str(path)], capture_output=True, text=True)
    tags = re.findall(r"\+ Name: (\S+)\n\|\s*\+ String: (.*)\n", result.stdout)
    return result.returncode, tags, result.stdout


def tag_values(tags, name):
    return [value for tag, value in tags if tag == name]


def list_numbers(archived, stream):
    """Every fragment of the stream as (producer timestamp, number), in producer order."""
    fragments, token = [], None
    while True:
        args = {"StreamName": stream, "MaxResults": 1000}
        if token:
            args["NextToken"] = token
        page = archived.list_fragments(**args)
        fragments.extend(page["Fragments"])
        token = page.get("NextToken")
        if not token:
            break
    fragments.sort(key=lambda f: f["ProducerTimestamp"])
    return [f["FragmentNumber"] for f in fragments]


@pytest.fixture(scope="module")
def media(server):
    return server.client("kinesis-video-media")


@pytest.fixture(scope="module")
def ingested(server, kvs, archived, assets, tmp_path_factory):
    clip = assets / "videos" / CLIP
    kvs.create_stream(StreamName="py-media", DataRetentionInHours=24)
    result = server.run_agent("py-media", f"file:{clip}", tmp_path_factory.mktemp("agent"))
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = list_numbers(archived, "py-media")
    gops = gop_sizes(clip)
    assert len(numbers) == len(gops)
    return {"numbers": numbers, "gops": gops}


def read_get_media(media, tmp_path, name, **selector):
    """The whole GetMedia body (it ends once the stream is idle), saved to a file."""
    response = media.get_media(StreamName="py-media", StartSelector=selector)
    assert response["ContentType"] == "video/webm"
    path = tmp_path / name
    path.write_bytes(response["Payload"].read())
    return path


def test_fragment_list_is_one_clean_matroska_stream_with_tags(archived, ingested, tmp_path):
    numbers, gops = ingested["numbers"], ingested["gops"]
    chosen = numbers[2:7]
    response = archived.get_media_for_fragment_list(StreamName="py-media", Fragments=chosen)
    assert response["ContentType"] == "video/webm"
    path = tmp_path / "list.mkv"
    path.write_bytes(response["Payload"].read())

    status, tags, text = mkvinfo(path)
    assert status == 0, text[-3000:]
    assert tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER") == chosen
    for name in ("AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP", "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"):
        values = tag_values(tags, name)
        assert len(values) == len(chosen)
        assert all(re.fullmatch(r"\d{10}\.\d{3}", v) for v in values), values
    assert "V_MPEG4/ISO/AVC" in text

    expected = sum(gops[2:7])
    assert decoded_frames(path) == expected
    assert gstreamer_frames(path) == expected


def test_fragment_list_refuses_unknown_fragments(archived, ingested):
    with pytest.raises(botocore.exceptions.ClientError) as err:
        archived.get_media_for_fragment_list(
            StreamName="py-media", Fragments=[ingested["numbers"][0], UNKNOWN_FRAGMENT])
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        archived.get_media_for_fragment_list(StreamName="no-such-stream", Fragments=[UNKNOWN_FRAGMENT])
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_get_media_from_earliest_returns_every_fragment_as_a_chunk(media, ingested, tmp_path):
    # GetMedia sends chunks in fragment-number (arrival) order; the agent sends fragments on
    # parallel streams, so that order may differ from the producer order a little.
    numbers, gops = sorted(ingested["numbers"]), ingested["gops"]
    path = read_get_media(media, tmp_path, "earliest.mkv", StartSelectorType="EARLIEST")
    status, tags, text = mkvinfo(path)
    # Each chunk opens with its own EBML header: mkvinfo warns (1) and resyncs, as on AWS's output.
    assert status in (0, 1), text[-3000:]
    assert tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER") == numbers
    assert tag_values(tags, "AWS_KINESISVIDEO_CONTINUATION_TOKEN") == numbers
    for name in ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
                 "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"):
        assert len(tag_values(tags, name)) == len(numbers), name
    assert all(int(v) >= 0 for v in tag_values(tags, "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"))
    # ffprobe decodes every frame. (GStreamer restarts its segment at each chunk's header and
    # clips frames that go back in time, which fragment-number order may do here; the live test
    # checks GStreamer on chunks that arrive in producer order.)
    assert decoded_frames(path) == sum(gops)


def test_get_media_after_a_fragment_number_and_a_continuation_token(media, ingested, tmp_path):
    numbers = sorted(ingested["numbers"])
    path = read_get_media(media, tmp_path, "after.mkv", StartSelectorType="FRAGMENT_NUMBER",
                          AfterFragmentNumber=numbers[3])
    _, tags, _ = mkvinfo(path)
    assert tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER") == numbers[4:]

    token = tag_values(tags, "AWS_KINESISVIDEO_CONTINUATION_TOKEN")[5]
    path = read_get_media(media, tmp_path, "token.mkv", StartSelectorType="CONTINUATION_TOKEN",
                          ContinuationToken=token)
    _, tags, _ = mkvinfo(path)
    assert tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER") == numbers[10:]

    with pytest.raises(botocore.exceptions.ClientError) as err:
        media.get_media(StreamName="py-media", StartSelector={
            "StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": UNKNOWN_FRAGMENT})
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        media.get_media(StreamName="py-media", StartSelector={"StartSelectorType": "SERVER_TIMESTAMP"})
    assert err.value.response["Error"]["Code"] == "InvalidArgumentException"


def test_get_media_consumers_per_stream_are_bounded(media, ingested):
    bodies = [media.get_media(StreamName="py-media", StartSelector={"StartSelectorType": "NOW"})
              for _ in range(3)]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        media.get_media(StreamName="py-media", StartSelector={"StartSelectorType": "NOW"})
    assert err.value.response["Error"]["Code"] == "ClientLimitExceededException"
    # Idle sessions end by themselves, which frees their slots.
    for body in bodies:
        assert body["Payload"].read() == b""
    time.sleep(0.5)
    media.get_media(StreamName="py-media", StartSelector={"StartSelectorType": "NOW"})["Payload"].read()


def test_get_media_now_follows_a_live_agent(server, kvs, archived, media, tmp_path):
    kvs.create_stream(StreamName="py-media-live", DataRetentionInHours=24)
    cmd = [hydrant_bin(), "agent", "--server", server.quic, "--ca", str(server.ca),
           "--stream", "py-media-live", "--source", "test", "--spool-dir", str(tmp_path / "spool")]
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + FIRST_FRAGMENT_TIMEOUT_S
        while not list_numbers(archived, "py-media-live"):
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent stored no fragment"
            time.sleep(0.2)
        before = set(list_numbers(archived, "py-media-live"))

        received = []

        def read_live():
            response = media.get_media(StreamName="py-media-live",
                                       StartSelector={"StartSelectorType": "NOW"})
            payload = response["Payload"]
            while True:
                chunk = payload.read(64 * 1024)
                if not chunk:
                    return
                received.append((time.monotonic(), chunk))

        reader = threading.Thread(target=read_live)
        reader.start()
        time.sleep(LIVE_AGENT_S)
        arrived_while_live = len(received)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        log.close()
    reader.join(timeout=GET_MEDIA_IDLE_S + 30)
    assert not reader.is_alive(), "GetMedia did not end after the agent stopped"
    assert arrived_while_live > 0, "no data arrived while the agent was sending"

    path = tmp_path / "live.mkv"
    path.write_bytes(b"".join(chunk for _, chunk in received))
    _, tags, text = mkvinfo(path)
    live = tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER")
    assert len(live) >= 2, text[-3000:]
    assert live == sorted(live)
    assert not before & set(live), "NOW sent fragments stored before the request"
    assert set(live) <= set(list_numbers(archived, "py-media-live"))
    blocks = text.count("Simple block:")
    assert blocks > 0 and gstreamer_frames(path) == blocks
    behind = [int(v) for v in tag_values(tags, "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW")]
    assert max(behind) < 5000, behind


def test_get_media_from_a_server_or_producer_timestamp(archived, media, ingested, tmp_path):
    page = archived.list_fragments(StreamName="py-media", MaxResults=1000)["Fragments"]
    by_server = sorted(page, key=lambda f: f["FragmentNumber"])
    start = by_server[len(by_server) // 2]["ServerTimestamp"]
    path = read_get_media(media, tmp_path, "server.mkv", StartSelectorType="SERVER_TIMESTAMP",
                          StartTimestamp=start)
    _, tags, _ = mkvinfo(path)
    expected = [f["FragmentNumber"] for f in by_server if f["ServerTimestamp"] >= start]
    assert tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER") == expected

    by_producer = sorted(page, key=lambda f: f["ProducerTimestamp"])
    first = by_producer[-3]
    path = read_get_media(media, tmp_path, "producer.mkv", StartSelectorType="PRODUCER_TIMESTAMP",
                          StartTimestamp=first["ProducerTimestamp"])
    _, tags, _ = mkvinfo(path)
    sent = tag_values(tags, "AWS_KINESISVIDEO_FRAGMENT_NUMBER")
    # The fragment at the timestamp first, then every fragment stored after it.
    assert sent == [first["FragmentNumber"]] + [
        f["FragmentNumber"] for f in by_server if f["FragmentNumber"] > first["FragmentNumber"]]


def test_get_media_is_signed_and_scoped_to_a_key_s_streams(signed_server):
    from conftest import LIMITED_KEY_ID, LIMITED_SECRET

    media = signed_server.client("kinesis-video-media")
    selector = {"StartSelectorType": "NOW"}
    with pytest.raises(botocore.exceptions.ClientError) as err:
        media.get_media(StreamName="no-such-stream", StartSelector=selector)
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    limited = signed_server.client_with("kinesis-video-archived-media", LIMITED_KEY_ID, LIMITED_SECRET)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        limited.get_media_for_fragment_list(StreamName="other-stream", Fragments=[UNKNOWN_FRAGMENT])
    assert err.value.response["Error"]["Code"] == "NotAuthorizedException"
