#!/usr/bin/env bash
# Set up everything optc needs on a fresh Debian machine, idempotently:
#   - Mesa's CPU Vulkan driver (lavapipe) and the Vulkan loader, so the vulkan
#     target really runs (needs root and apt; skipped with a note otherwise);
#   - a Python 3.11 virtual environment in .venv with optc and its exact pins.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(mesa-vulkan-drivers libvulkan1 chromium)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: cannot install ${missing[*]} (needs root + apt); the vulkan target will report itself unavailable" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: the CPU build of 2.13.0 installs from local disk; an
# unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0" "setuptools>=69"
"${pip[@]}" install -e ".[test]"
echo "setup: ready (.venv/bin/optc)" >&2
