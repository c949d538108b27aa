#!/usr/bin/env bash
# Prints the directory holding Hydrant's test and demo assets (models, images, videos).
# Looks in $HYDRANT_ASSETS, then ../shared/assets beside the checkout, then .assets/ in the
# checkout; when none has them, downloads the upstream originals into .assets/, checks their
# sha256, and re-encodes the videos with GStreamer to H.264 with an IDR frame every 2 s (the
# layout the tests and the demo expect). Progress goes to stderr; the directory to stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
probe="videos/intel_one-by-one-person-detection.mp4"

for dir in "${HYDRANT_ASSETS:-}" "$root/../shared/assets" "$root/.assets"; do
  if [ -n "$dir" ] && [ -f "$dir/$probe" ]; then
    (cd "$dir" && pwd)
    exit 0
  fi
done

say() { printf 'assets: %s\n' "$*" >&2; }
out="$root/.assets"
mkdir -p "$out/models" "$out/videos" "$out/originals"

# name|repository|commit|path|sha256
originals=(
  "one-by-one-person-detection.mp4|intel-iot-devkit/sample-videos|294517a8d149759972f9a0501accde274e469ba5|one-by-one-person-detection.mp4|a5964aa259099a482a8b360ffc2c57b5a30f84d5919236a4dad01f8e929ac07c"
  "car-detection.mp4|intel-iot-devkit/sample-videos|e9ab59cac368a61f7741a2373d7e79607c2f5e44|car-detection.mp4|d31e0ebf194cc16e50eea784e7c3b0b1bb7976a4fb9b3fec26cb92a6704cca34"
  "walking-by.h264|skerit/beweging|2a2da5e2bacbeb33cec429365f2bf7665e788b97|samples/walking-by.h264|e7f411cafa58b2d38505409d427700052f086f7a0552a46c683b628e3b1494a8"
  "yolox_nano.onnx|Kazuhito00/YOLOX-ONNX-TFLite-Sample|3d4f1119d0694200671c08069ecb847aa0d8495a|model/yolox_nano.onnx|695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"
  "light_person_detector.onnx|Kazuhito00/MOT-Tracking-by-Detection-Pipeline|e50a76b8b430b778276e7fd04fd4cafd5d45eab2|Detector/light_person_detector/model/model.onnx|4bf5f704cd3bd900645a4303e0934ede13d9fb2135058b38005f4c2886c68576"
)

fetch() {
  local name="$1" repo="$2" commit="$3" path="$4" sha="$5" file="$out/originals/$1"
  if [ -f "$file" ] && echo "$sha  $file" | sha256sum -c --quiet 2>/dev/null; then return; fi
  say "downloading $name from $repo"
  curl -fsSL --retry 3 -o "$file.part" "https://raw.githubusercontent.com/$repo/$commit/$path"
  if ! echo "$sha  $file.part" | sha256sum -c --quiet; then
    rm -f "$file.part"
    say "checksum mismatch for $name: refusing it"
    exit 1
  fi
  mv "$file.part" "$file"
}

# Re-encode to H.264 Main, IDR every 2 s, no B-frames; write MP4 and Matroska copies.
reencode() {
  local src="$1" demux="$2" fps_n="$3" fps_d="$4" base="$5" gop
  gop=$(( 2 * fps_n / fps_d ))
  for mux in mp4mux matroskamux; do
    local ext=mp4; [ "$mux" = matroskamux ] && ext=mkv
    [ -f "$out/videos/$base.$ext" ] && continue
    say "re-encoding $base.$ext"
    gst-launch-1.0 -q filesrc location="$src" ! $demux ! avdec_h264 ! videoconvert ! videorate \
      ! "video/x-raw,format=I420,framerate=$fps_n/$fps_d" \
      ! x264enc key-int-max="$gop" bframes=0 speed-preset=medium bitrate=2000 \
      ! "video/x-h264,profile=main" ! h264parse ! $mux ! filesink location="$out/videos/$base.$ext" >&2
  done
}

for entry in "${originals[@]}"; do
  IFS='|' read -r name repo commit path sha <<<"$entry"
  fetch "$name" "$repo" "$commit" "$path" "$sha"
done
cp -n "$out/originals/yolox_nano.onnx" "$out/models/yolox_nano_416.onnx"
cp -n "$out/originals/light_person_detector.onnx" "$out/models/light_person_detector_192.onnx"
cp -n "$out/originals/walking-by.h264" "$out/videos/beweging_walking-by.h264"
reencode "$out/originals/one-by-one-person-detection.mp4" "qtdemux ! h264parse" 10 1 intel_one-by-one-person-detection
reencode "$out/originals/car-detection.mp4" "qtdemux ! h264parse" 25 2 intel_car-detection
reencode "$out/originals/walking-by.h264" "h264parse" 25 1 beweging_walking-by
(cd "$out" && pwd)
