"""HLS playback of a recorded clip: boto3 opens a session, the playlists and fragmented MP4
segments are fetched over plain HTTP (as a player does, unsigned) and checked with ffprobe,
independently of Hydrant."""

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

STREAM = "py-hls"


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def ffprobe_json(target, *args):
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(target)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    assert out.stderr.strip() == "", out.stderr
    return json.loads(out.stdout)


def clip_frames(path):
    info = ffprobe_json(path, "-count_frames", "-select_streams", "v:0",
                        "-show_entries", "stream=nb_read_frames")
    return int(info["streams"][0]["nb_read_frames"])


@pytest.fixture(scope="module")
def recorded(server, kvs, assets, tmp_path_factory):
    clip = assets / "videos" / "intel_one-by-one-person-detection.mp4"
    kvs.create_stream(StreamName=STREAM, DataRetentionInHours=24)
    result = server.run_agent(STREAM, f"file:{clip}", tmp_path_factory.mktemp("agent"))
    assert result.returncode == 0, result.stdout + result.stderr
    return {"clip": clip, "frames": clip_frames(clip)}


def on_demand_url(archived, expires=300):
    selector = {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": time.time() - 3600, "EndTimestamp": time.time() + 60}}
    reply = archived.get_hls_streaming_session_url(
        StreamName=STREAM, PlaybackMode="ON_DEMAND", HLSFragmentSelector=selector,
        ContainerFormat="FRAGMENTED_MP4", DiscontinuityMode="NEVER", Expires=expires)
    return reply["HLSStreamingSessionURL"]


def media_playlist(master_url):
    status, ctype, body = fetch(master_url)
    assert status == 200 and ctype == "application/vnd.apple.mpegurl"
    master = body.decode()
    assert master.startswith("#EXTM3U\n") and "#EXT-X-STREAM-INF:" in master
    assert re.search(r'CODECS="avc1\.[0-9a-f]{6}"', master)
    media_ref = [line for line in master.splitlines() if line and not line.startswith("#")]
    assert len(media_ref) == 1
    media_url = urllib.parse.urljoin(master_url, media_ref[0])
    status, _, body = fetch(media_url)
    assert status == 200
    return media_url, body.decode()


def test_on_demand_session_plays_every_frame(server, archived, recorded, tmp_path):
    url = on_demand_url(archived)
    assert url.startswith(server.endpoint + "/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=")
    media_url, playlist = media_playlist(url)
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+),", playlist)]
    fragments = archived.list_fragments(StreamName=STREAM, MaxResults=1000)["Fragments"]
    assert len(durations) == len(fragments) > 1
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", playlist).group(1))
    assert max(durations) <= target < max(durations) + 1
    expected_s = sum(f["FragmentLengthInMilliseconds"] for f in fragments) / 1000
    assert abs(sum(durations) - expected_s) < 0.01

    init_ref = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist).group(1)
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    joined = tmp_path / "joined.mp4"
    with open(joined, "wb") as out:
        status, ctype, body = fetch(urllib.parse.urljoin(media_url, init_ref))
        assert ctype == "video/mp4" and body[4:8] == b"ftyp"
        out.write(body)
        for ref in segments:
            _, _, body = fetch(urllib.parse.urljoin(media_url, ref))
            assert body[4:8] == b"moof"
            out.write(body)
    assert clip_frames(joined) == recorded["frames"]

    # ffmpeg's own HLS demuxer reads the session over HTTP, as a player would.
    probed = ffprobe_json(url, "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames:format=duration")
    assert int(probed["streams"][0]["nb_read_frames"]) == recorded["frames"]
    assert abs(float(probed["format"]["duration"]) - expected_s) < 0.2


def test_expired_and_altered_tokens_are_refused(archived, recorded):
    url = on_demand_url(archived)
    token = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["SessionToken"][0]
    text, mac = token.split(".")
    altered = url.replace(token, text[:-2] + ("AA" if text[-2:] != "AA" else "BB") + "." + mac)
    with pytest.raises(urllib.error.HTTPError) as refused:
        fetch(altered)
    assert refused.value.code == 401
    assert refused.value.headers["x-amzn-ErrorType"] == "NotAuthorizedException"


def test_session_requests_are_validated(archived, recorded):
    client_error = archived.exceptions.ClientError
    with pytest.raises(client_error) as e:
        archived.get_hls_streaming_session_url(StreamName=STREAM, PlaybackMode="ON_DEMAND")
    assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
    with pytest.raises(client_error) as e:
        archived.get_hls_streaming_session_url(StreamName=STREAM, ContainerFormat="MPEG_TS")
    assert "MPEG_TS" in e.value.response["Error"]["Message"]
    with pytest.raises(client_error) as e:
        archived.get_hls_streaming_session_url(StreamName="py-hls-missing", PlaybackMode="LIVE")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"



def test_out_of_range_expiry_is_refused_by_the_server(server, recorded):
    # boto3 validates Expires itself, so the request goes over plain HTTP (open-mode server).
    body = json.dumps({"StreamName": STREAM, "Expires": 299}).encode()
    request = urllib.request.Request(server.endpoint + "/getHLSStreamingSessionURL", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert refused.value.headers["x-amzn-ErrorType"] == "InvalidArgumentException"


def test_live_session_lists_the_newest_fragments(archived, recorded):
    url = archived.get_hls_streaming_session_url(
        StreamName=STREAM, PlaybackMode="LIVE", MaxMediaPlaylistFragmentResults=3)["HLSStreamingSessionURL"]
    _, playlist = media_playlist(url)
    assert "#EXT-X-ENDLIST" not in playlist
    numbers = re.findall(r"FragmentNumber=(\d+)", playlist)
    stored = archived.list_fragments(StreamName=STREAM, MaxResults=1000)["Fragments"]
    newest = sorted(stored, key=lambda f: (f["ServerTimestamp"], f["FragmentNumber"]))[-3:]
    assert sorted(numbers) == sorted(f["FragmentNumber"] for f in newest)


def image_size(data):
    """(format, width, height) read from the JPEG or PNG header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert data[:2] == b"\xff\xd8", "neither PNG nor JPEG"
    at = 2
    while at < len(data):
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return "JPEG", int.from_bytes(data[at + 7:at + 9], "big"), int.from_bytes(data[at + 5:at + 7], "big")
        at += 2 + length
    raise AssertionError("no JPEG frame header")


@pytest.mark.parametrize("fmt,width,height", [("JPEG", 320, None), ("PNG", 200, 100)])
def test_get_images_returns_decodable_images_of_the_asked_size(archived, recorded, tmp_path, fmt, width, height):
    import base64
    fragments = archived.list_fragments(StreamName=STREAM, MaxResults=1000)["Fragments"]
    first = min(f["ProducerTimestamp"] for f in fragments).timestamp()
    args = {"StreamName": STREAM, "ImageSelectorType": "PRODUCER_TIMESTAMP",
            "StartTimestamp": first + 1, "EndTimestamp": first + 5, "SamplingInterval": 1000,
            "Format": fmt, "WidthPixels": width, "MaxResults": 3}
    if height:
        args["HeightPixels"] = height
    if fmt == "JPEG":
        args["FormatConfig"] = {"JPEGQuality": "70"}
    page = archived.get_images(**args)
    assert len(page["Images"]) == 3 and page.get("NextToken")
    rest = archived.get_images(**args, NextToken=page["NextToken"])
    assert len(rest["Images"]) == 1 and not rest.get("NextToken")
    for image in page["Images"] + rest["Images"]:
        assert "Error" not in image, image
        data = base64.b64decode(image["ImageContent"]) if isinstance(image["ImageContent"], str) else image["ImageContent"]
        # 768x432 source: a width alone keeps the aspect ratio.
        assert image_size(data) == (fmt, width, height or width * 432 // 768)
        path = tmp_path / "frame"
        path.write_bytes(data)
        probed = ffprobe_json(path, "-show_entries", "stream=width,height")
        assert probed["streams"][0]["width"] == width
