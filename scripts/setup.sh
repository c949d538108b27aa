#!/usr/bin/env bash
# Installs what Hydrant needs to build, test and run, and only what is missing (idempotent):
# Debian packages (GStreamer 1.22+, build tools, test tools), a Rust toolchain if none is found,
# a Python virtual environment with the ONNX Runtime wheel (its shared library is loaded at run
# time; nothing is downloaded by the Rust build) and the AWS clients used by the tests, and the
# test/demo assets.
#
# Works on Debian 12, Ubuntu 22.04+ and Raspberry Pi OS (bookworm). Writes `.hydrant-env` at the
# repository root: a shell fragment exporting HYDRANT_ASSETS and ORT_DYLIB_PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'setup: %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

debian_packages=(
  build-essential pkg-config ca-certificates curl python3 python3-venv python3-pip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp
  libgstrtspserver-1.0-dev ffmpeg mkvtoolnix mosquitto mosquitto-clients
)

install_debian_packages() {
  command -v dpkg-query >/dev/null || { say "not a Debian-family system: install the packages listed in scripts/setup.sh by hand"; return; }
  local missing=()
  for p in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "Debian packages present"; return; fi
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_rust() {
  if command -v cargo >/dev/null; then say "Rust present: $(cargo --version)"; return; fi
  [ -x "$HOME/.cargo/bin/cargo" ] && { say "Rust present in ~/.cargo/bin (add it to PATH)"; return; }
  say "installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
}

# Python environment: the ONNX Runtime wheel (for its shared library) and the AWS clients the
# tests drive the server with.
python_packages=("onnxruntime>=1.31,<2" "boto3>=1.34" "awscli>=1.32" "pytest>=7" "cbor2>=5")
venv=".venv"
install_python() {
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the Python environment in $venv"
    python3 -m venv "$venv"
  fi
  if "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in ("onnxruntime", "boto3", "awscli", "pytest", "cbor2")) else 1)
PY
  then say "Python packages present"; return; fi
  say "installing Python packages: ${python_packages[*]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${python_packages[@]}"
}

ort_library() {
  "$venv/bin/python" - <<'PY'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")), key=len, reverse=True)
print(libs[0] if libs else "")
PY
}

install_debian_packages
install_rust
install_python
assets="$(scripts/assets.sh)"
ort="$(ort_library)"
[ -n "$ort" ] || { say "the onnxruntime wheel holds no libonnxruntime.so"; exit 1; }
cat > .hydrant-env <<ENV
export HYDRANT_ASSETS="$assets"
export ORT_DYLIB_PATH="$ort"
export PATH="$root/$venv/bin:\$PATH"
ENV
say "assets in $assets"
say "ONNX Runtime at $ort"
