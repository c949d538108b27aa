"""A recorded clip sent by a real agent is listed by boto3's ListFragments and cut by GetClip into
an MP4 that decodes to the expected frames (checked with ffprobe, independently of Hydrant)."""

import time

import pytest

from media_checks import decoded_frames, gop_sizes


def list_all(archived, stream, selector, page_size):
    fragments, token, pages = [], None, 0
    while True:
        args = {"StreamName": stream, "MaxResults": page_size, "FragmentSelector": selector}
        if token:
            args["NextToken"] = token
        page = archived.list_fragments(**args)
        fragments.extend(page["Fragments"])
        pages += 1
        token = page.get("NextToken")
        if not token:
            return fragments, pages


@pytest.fixture(scope="module")
def ingested(server, kvs, assets, tmp_path_factory):
    clip = assets / "videos" / "intel_one-by-one-person-detection.mp4"
    kvs.create_stream(StreamName="py-lobby", DataRetentionInHours=24)
    before = time.time()
    result = server.run_agent("py-lobby", f"file:{clip}", tmp_path_factory.mktemp("agent"))
    assert result.returncode == 0, result.stdout + result.stderr
    return {"clip": clip, "before": before, "after": time.time()}


def test_list_fragments_returns_every_gop_for_the_time_range(archived, ingested):
    gops = gop_sizes(ingested["clip"])
    # With --fast, producer timestamps run ahead of the wall clock by up to the clip's length.
    producer = {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": ingested["before"] - 5,
                                   "EndTimestamp": ingested["after"] + 3600}}
    fragments, pages = list_all(archived, "py-lobby", producer, page_size=25)
    assert len(fragments) == len(gops)
    assert pages > 1, "paging was exercised"
    numbers = [f["FragmentNumber"] for f in fragments]
    assert len(set(numbers)) == len(numbers)
    for f in fragments:
        assert f["FragmentSizeInBytes"] > 0
        assert 1000 <= f["FragmentLengthInMilliseconds"] <= 10000

    server_ts = {"FragmentSelectorType": "SERVER_TIMESTAMP",
                 "TimestampRange": {"StartTimestamp": ingested["before"] - 5,
                                    "EndTimestamp": time.time() + 5}}
    by_server, _ = list_all(archived, "py-lobby", server_ts, page_size=1000)
    assert sorted(f["FragmentNumber"] for f in by_server) == sorted(numbers)


def test_get_clip_of_ten_seconds_decodes_to_its_frames(archived, ingested, tmp_path):
    gops = gop_sizes(ingested["clip"])
    everything = {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                  "TimestampRange": {"StartTimestamp": ingested["before"] - 5,
                                     "EndTimestamp": ingested["after"] + 3600}}
    fragments, _ = list_all(archived, "py-lobby", everything, page_size=1000)
    fragments.sort(key=lambda f: f["ProducerTimestamp"])
    start = fragments[2]["ProducerTimestamp"]
    end = start.timestamp() + 9.999
    expected = sum(gops[i] for i, f in enumerate(fragments) if start.timestamp() <= f["ProducerTimestamp"].timestamp() <= end)

    clip = archived.get_clip(
        StreamName="py-lobby",
        ClipFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                              "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}},
    )
    assert clip["ContentType"] == "video/mp4"
    out = tmp_path / "clip.mp4"
    out.write_bytes(clip["Payload"].read())
    assert decoded_frames(out) == expected
