#!/usr/bin/env bash
# Build the C++ onnxruntime client examples/cpp (quadexport_client) into build/cpp-client/.
#
#   - Headers: onnxruntime's C/C++ headers from Debian trixie's libonnxruntime-dev (v1.21, ORT_API_VERSION 21), the
#     ones tools/build_kernels.sh fetches into build/ort-headers/ (it is run when they are missing), or
#     $QUADEXPORT_ORT_INCLUDE.
#   - Library: libonnxruntime.so.1 for linux-x64/arm64 from the npm package onnxruntime-node (`npm pack` through the
#     machine's npm configuration into build/onnxruntime-node/<version>/; only the library and package.json are
#     kept), or $QUADEXPORT_ORT_LIB. Its C API version (= its minor version) must be >= the headers' ORT_API_VERSION;
#     checked from package.json before building and by running the client (`--version`) after.
#   - Build: cmake (Release) in build/cpp-client/; rebuilt by cmake when the sources change, or with --force.
# Prints the client's path on stdout (last line).
#
# Usage: bash tools/build_cpp_client.sh [--force] [--quiet] [--if-possible]
#   --if-possible: without cmake or a C++ compiler, say why and exit 0 instead of failing (used by `make cpp`).
# Env:   QUADEXPORT_ORT_NODE_VERSION (default 1.30.0), QUADEXPORT_ORT_LIB, QUADEXPORT_ORT_INCLUDE, CXX (default g++)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/examples/cpp"
BUILD="$ROOT/build"
OUT_DIR="$BUILD/cpp-client"
ORT_NODE_VERSION="${QUADEXPORT_ORT_NODE_VERSION:-1.30.0}"
CXX="${CXX:-g++}"

FORCE=0
QUIET=0
IF_POSSIBLE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    --if-possible) IF_POSSIBLE=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build_cpp_client.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

log() { [[ $QUIET == 1 ]] || echo "[build_cpp_client] $*" >&2; }
die() { echo "[build_cpp_client] error: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------------------------------
missing=""
command -v cmake >/dev/null || missing="cmake"
command -v "$CXX" >/dev/null || missing="${missing:+$missing and no }C++ compiler '$CXX'"
if [[ -n $missing ]]; then
  if [[ $IF_POSSIBLE == 1 ]]; then
    echo "[build_cpp_client] skipped: no $missing on this machine (install it to build the C++ client)" >&2
    exit 0
  fi
  die "no $missing on this machine (install it, or set CXX)"
fi

# --- headers (shared with the kernel library) ----------------------------------------------------------------------
INC="${QUADEXPORT_ORT_INCLUDE:-$BUILD/ort-headers/usr/include/onnxruntime}"
if [[ ! -f "$INC/onnxruntime_cxx_api.h" && -z "${QUADEXPORT_ORT_INCLUDE:-}" ]]; then
  log "onnxruntime headers missing: running tools/build_kernels.sh (fetches them, builds the kernel library)"
  bash "$ROOT/tools/build_kernels.sh" $([[ $QUIET == 1 ]] && echo --quiet) >/dev/null
fi
[[ -f "$INC/onnxruntime_cxx_api.h" ]] || die "no onnxruntime_cxx_api.h in $INC"
HEADER_API="$(awk '/#define ORT_API_VERSION/ {print $3; exit}' "$INC/onnxruntime_c_api.h")"
[[ $HEADER_API =~ ^[0-9]+$ ]] || die "cannot read ORT_API_VERSION from $INC/onnxruntime_c_api.h"

# --- library -------------------------------------------------------------------------------------------------------
npm_arch() {
  case "$(uname -m)" in
    x86_64|amd64) echo x64 ;;
    aarch64|arm64) echo arm64 ;;
    *) die "onnxruntime-node ships no Linux library for $(uname -m); set QUADEXPORT_ORT_LIB to a libonnxruntime.so" ;;
  esac
}

fetch_library() {  # npm pack (no install, no scripts run) and keep this platform's library and package.json
  local dest="$1" arch="$2" tmp
  command -v npm >/dev/null || die "npm not found: install Node.js/npm (the library comes from the onnxruntime-node \
package), or set QUADEXPORT_ORT_LIB to an existing libonnxruntime.so (C API >= $HEADER_API)"
  tmp="$dest.tmp" && rm -rf "$tmp" && mkdir -p "$tmp"
  log "fetching onnxruntime-node@$ORT_NODE_VERSION with npm pack (~110 MB, only linux/$arch's library is kept)"
  (cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_NODE_VERSION" >/dev/null) \
    || die "npm pack onnxruntime-node@$ORT_NODE_VERSION failed (is npm's registry reachable?)"
  tar -xzf "$tmp"/onnxruntime-node-*.tgz -C "$tmp" --wildcards package/package.json \
    "package/bin/napi-v*/linux/$arch/libonnxruntime.so*" || die "the package has no linux/$arch libonnxruntime.so"
  rm -f "$tmp"/onnxruntime-node-*.tgz
  rm -rf "$dest" && mv "$tmp" "$dest"
}

if [[ -n "${QUADEXPORT_ORT_LIB:-}" ]]; then
  LIB="$QUADEXPORT_ORT_LIB"
  [[ -f $LIB ]] || die "QUADEXPORT_ORT_LIB=$LIB does not exist"
else
  ARCH="$(npm_arch)"
  PKG="$BUILD/onnxruntime-node/$ORT_NODE_VERSION"
  find_lib() { ls "$PKG"/package/bin/napi-v*/"linux/$ARCH"/libonnxruntime.so.1 2>/dev/null | head -n1; }
  LIB="$(find_lib || true)"
  if [[ -z $LIB ]]; then
    mkdir -p "$BUILD/onnxruntime-node"
    if command -v flock >/dev/null; then  # concurrent builds: one fetches, the others wait and reuse
      exec 8>"$BUILD/onnxruntime-node/.lock"
      flock 8
    fi
    LIB="$(find_lib || true)"
    [[ -n $LIB ]] || { fetch_library "$PKG" "$ARCH"; LIB="$(find_lib || true)"; }
    [[ -n $LIB ]] || die "no linux/$ARCH libonnxruntime.so.1 in onnxruntime-node@$ORT_NODE_VERSION"
  fi
  PKG_VERSION="$(sed -n 's/^ *"version": *"\([0-9.]*\).*/\1/p' "$PKG/package/package.json" | head -n1)"
  LIB_API="$(echo "$PKG_VERSION" | cut -d. -f2)"
  [[ $LIB_API =~ ^[0-9]+$ ]] || die "cannot read the version of $PKG/package/package.json"
  (( LIB_API >= HEADER_API )) || die "onnxruntime-node $PKG_VERSION has C API $LIB_API < the headers' \
$HEADER_API: set QUADEXPORT_ORT_NODE_VERSION to 1.$HEADER_API.0 or newer"
  log "library: onnxruntime $PKG_VERSION (C API $LIB_API >= headers' $HEADER_API) $LIB"
fi

# --- build ---------------------------------------------------------------------------------------------------------
if command -v flock >/dev/null; then  # one build at a time in build/cpp-client (build/ may be shared by checkouts)
  exec 7>"$BUILD/.cpp-client.lock"
  flock 7
fi
# A cache from another checkout or from other inputs is discarded.
if [[ -f "$OUT_DIR/CMakeCache.txt" ]]; then
  cached_src="$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$OUT_DIR/CMakeCache.txt")"
  cached_lib="$(sed -n 's/^ORT_LIBRARY:FILEPATH=//p' "$OUT_DIR/CMakeCache.txt")"
  if [[ $FORCE == 1 || $cached_src != "$SRC" || $cached_lib != "$LIB" ]]; then
    log "discarding $OUT_DIR (other source, library or --force)"
    rm -rf "$OUT_DIR"
  fi
fi
build() {
  cmake -S "$SRC" -B "$OUT_DIR" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$(command -v "$CXX")" \
    -DORT_INCLUDE_DIR="$INC" -DORT_LIBRARY="$LIB" && cmake --build "$OUT_DIR" -j "$(nproc 2>/dev/null || echo 2)"
}
if [[ $QUIET == 1 ]]; then  # cmake's output only when it fails
  mkdir -p "$OUT_DIR"
  build >"$OUT_DIR/build.log" 2>&1 || { cat "$OUT_DIR/build.log" >&2; die "cmake build failed"; }
else
  build >&2 || die "cmake build failed"
fi
CLIENT="$OUT_DIR/quadexport_client"
[[ -x $CLIENT ]] || die "the build did not produce $CLIENT"
version="$("$CLIENT" --version)" || die "$CLIENT cannot run against $LIB: $version"
log "$(echo "$version" | tr '\n' ' ')"
echo "$CLIENT"
