#!/usr/bin/env bash
# Build the C app (examples/apps/c) against the IREE runtime sources shipped in
# third_party/iree-runtime-src.tar.gz. Everything goes under build/c_app (ignored):
#   build/c_app/src/iree      the unpacked runtime (re-unpacked when the tarball changes)
#   build/c_app/cmake         the CMake/Ninja build; build/c_app/cmake/classify is the app
# The first build takes about a minute on 2 cores; a rerun with nothing changed, seconds.
# Needs a C/C++ compiler, Python 3, and CMake >= 3.26 + Ninja (pinned in pyproject's
# test extra, so .venv/bin has them after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

out=build/c_app
tarball=third_party/iree-runtime-src.tar.gz
bin=$PWD/.venv/bin
cmake=$bin/cmake; [ -x "$cmake" ] || cmake=cmake
ninja=$bin/ninja; [ -x "$ninja" ] || ninja=ninja
python=$bin/python; [ -x "$python" ] || python=python3

sum=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$(cat "$out/src/.sha256" 2>/dev/null)" != "$sum" ]; then
  echo "build_c_app: unpacking $tarball" >&2
  rm -rf "$out/src" "$out/cmake"
  mkdir -p "$out/src"
  tar -xzf "$tarball" -C "$out/src"
  echo "$sum" >"$out/src/.sha256"
fi
if [ ! -f "$out/cmake/build.ninja" ]; then
  "$cmake" -G Ninja -S examples/apps/c -B "$out/cmake" \
    -DCMAKE_MAKE_PROGRAM="$(command -v "$ninja")" \
    -DPython3_EXECUTABLE="$(command -v "$python")" -DPython_EXECUTABLE="$(command -v "$python")" \
    -DIREE_SOURCE_DIR="$PWD/$out/src/iree" >"$out/configure.log" 2>&1 ||
    { tail -20 "$out/configure.log" >&2; rm -rf "$out/cmake"; echo "build_c_app: configure failed (full log: $out/configure.log)" >&2; exit 1; }
fi
"$cmake" --build "$out/cmake" --target classify -j "${JOBS:-$(nproc)}" >"$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log" >&2; echo "build_c_app: build failed (full log: $out/build.log)" >&2; exit 1; }
echo "$out/cmake/classify"
