"""Facts about video files read with ffprobe, independently of Hydrant: the tests' oracle."""

import json
import subprocess


def keyframe_flags(path):
    """1/0 per frame of the first video stream."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=key_frame",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [int(line.strip().split(",")[0]) for line in out.splitlines() if line.strip()]


def gop_sizes(path):
    """Frames per GOP, in order."""
    sizes = []
    for key in keyframe_flags(path):
        if key or not sizes:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


def decoded_frames(path):
    """Frames ffprobe decodes from the first video stream."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])
