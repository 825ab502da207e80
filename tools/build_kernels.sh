#!/usr/bin/env bash
# Build the fused onnxruntime custom-op library build/kernels/libquadexport_ops.so
# (domain "quadexport" v1: QuadLinear, QuadConv1d, QuadConv2d) from quadexport/exporter/kernels/quad_ops.cc.
#
# Idempotent:
#   - onnxruntime C/C++ headers (v1.21, ORT_API_VERSION 21) come from Debian trixie's libonnxruntime-dev, fetched
#     with `apt-get download` through a private apt configuration under build/apt/ (the system's apt sources are
#     never touched) and unpacked into build/ort-headers/. Skipped when the headers are already there, or when
#     QUADEXPORT_ORT_INCLUDE points at a directory holding onnxruntime_lite_custom_op.h.
#   - The library is rebuilt only when quad_ops.cc (or this script) is newer than it, or with --force.
#
# On x86-64 the .cc is compiled once per ISA (AVX-512F, AVX2+FMA, baseline SSE2) plus once for the ORT glue; the
# library picks the best kernel set at run time (override: QUADEXPORT_KERNEL_ISA=avx512|avx2|base).
# QUADEXPORT_KERNEL_MARCH=native (or any -march value) builds a single-ISA library instead.
#
# Usage: bash tools/build_kernels.sh [--force] [--quiet]
# Env:   QUADEXPORT_ORT_INCLUDE, QUADEXPORT_KERNEL_MARCH, CXX (default g++), QUADEXPORT_KERNEL_OUT (output .so path)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/quadexport/exporter/kernels/quad_ops.cc"
BUILD="$ROOT/build"
OUT="${QUADEXPORT_KERNEL_OUT:-$BUILD/kernels/libquadexport_ops.so}"
CXX="${CXX:-g++}"
DEB_PACKAGE=libonnxruntime-dev
DEB_SUITE=trixie

# The mirror is the machine's own: the first "URIs:" of a deb822 source (or the first "deb" line of sources.list)
# that serves Debian's main archive (not -security); only the suite differs.
apt_mirror() {
  local uri=""
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    uri="$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")"
    [[ -n $uri ]] && break
  done
  if [[ -z $uri ]]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      uri="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {if ($i !~ /security/) {print $i; exit}; break}}' "$f")"
      [[ -n $uri ]] && break
    done
  fi
  shopt -u nullglob
  [[ -n $uri ]] || die "no Debian mirror found in /etc/apt/sources.list(.d); set QUADEXPORT_ORT_INCLUDE to onnxruntime headers"
  echo "${uri%/}"
}

FORCE=0
QUIET=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build_kernels.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

log() { [[ $QUIET == 1 ]] || echo "[build_kernels] $*" >&2; }
die() { echo "[build_kernels] error: $*" >&2; exit 1; }

# --- headers -------------------------------------------------------------------------------------------------------
fetch_headers() {
  # Private apt state: own sources.list, empty sources.list.d, own lists and cache. Only `update` and `download`.
  local apt="$BUILD/apt" dest="$BUILD/ort-headers"
  command -v apt-get >/dev/null || die "apt-get not found; set QUADEXPORT_ORT_INCLUDE to onnxruntime headers (v1.21+)"
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found; set QUADEXPORT_ORT_INCLUDE to onnxruntime headers"
  mkdir -p "$apt/etc/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
  echo "deb $(apt_mirror) $DEB_SUITE main" > "$apt/etc/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=$(id -un)")
  log "fetching $DEB_PACKAGE from Debian trixie (private apt config in $apt)"
  apt-get -q "${opts[@]}" update >&2 || die "apt-get update (trixie) failed"
  rm -f "$apt/debs/${DEB_PACKAGE}_"*.deb
  (cd "$apt/debs" && apt-get -q "${opts[@]}" download "$DEB_PACKAGE" >&2) || die "apt-get download $DEB_PACKAGE failed"
  local deb
  deb="$(ls "$apt/debs/${DEB_PACKAGE}_"*.deb | head -n1)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  dpkg-deb -x "$deb" "$dest.tmp"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  log "headers from $(basename "$deb") in $dest"
}

if [[ -n "${QUADEXPORT_ORT_INCLUDE:-}" ]]; then
  INC="$QUADEXPORT_ORT_INCLUDE"
else
  INC="$BUILD/ort-headers/usr/include/onnxruntime"
  if [[ ! -f "$INC/onnxruntime_lite_custom_op.h" ]]; then
    mkdir -p "$BUILD"
    if command -v flock >/dev/null; then  # concurrent builds: one fetches, the others wait and reuse
      exec 9>"$BUILD/.ort-headers.lock"
      flock 9
    fi
    [[ -f "$INC/onnxruntime_lite_custom_op.h" ]] || fetch_headers
  fi
fi
[[ -f "$INC/onnxruntime_lite_custom_op.h" ]] || die "no onnxruntime_lite_custom_op.h in $INC"

# --- compile -------------------------------------------------------------------------------------------------------
if [[ $FORCE == 0 && -f "$OUT" && "$OUT" -nt "$SRC" && "$OUT" -nt "${BASH_SOURCE[0]}" ]]; then
  log "up to date: $OUT"
  echo "$OUT"
  exit 0
fi
command -v "$CXX" >/dev/null || die "C++ compiler '$CXX' not found"

COMMON=(-O3 -std=c++17 -fPIC -ffp-contract=fast -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter)
TMP="$(mktemp -d "${TMPDIR:-/tmp}/quadexport-kernels.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$(dirname "$OUT")"
start_ms=$(( $(date +%s%N) / 1000000 ))
# Export RegisterCustomOps only (no C++ library instantiations leak out of the .so).
echo '{ global: RegisterCustomOps; local: *; };' > "$TMP/exports.map"
LINK=(-shared -Wl,--version-script="$TMP/exports.map")

if [[ -n "${QUADEXPORT_KERNEL_MARCH:-}" ]]; then
  log "compiling single-ISA library (-march=$QUADEXPORT_KERNEL_MARCH)"
  "$CXX" "${COMMON[@]}" -march="$QUADEXPORT_KERNEL_MARCH" -I"$INC" "${LINK[@]}" "$SRC" -o "$TMP/lib.so"
elif [[ "$("$CXX" -dumpmachine)" == x86_64* ]]; then
  log "compiling multi-ISA library (avx512, avx2, base + glue)"
  # One object per kernel ISA (each in its own C++ namespace, no STL or ORT headers) plus the ORT glue, which is
  # the slowest to compile (ORT's C++ headers) and not performance-critical: -O2, started first, in the background.
  "$CXX" "${COMMON[@]}" -O2 -DQX_PART_GLUE -DQX_MULTI_ISA -I"$INC" -c "$SRC" -o "$TMP/glue.o" &
  glue=$!
  "$CXX" "${COMMON[@]}" -DQX_PART_KERNELS -DQX_ISA_AVX512 -mavx512f -mfma -c "$SRC" -o "$TMP/avx512.o"
  "$CXX" "${COMMON[@]}" -DQX_PART_KERNELS -DQX_ISA_AVX2 -mavx2 -mfma -c "$SRC" -o "$TMP/avx2.o"
  "$CXX" "${COMMON[@]}" -DQX_PART_KERNELS -DQX_ISA_BASE -c "$SRC" -o "$TMP/base.o"
  wait $glue || die "compiling the glue failed"
  "$CXX" "${LINK[@]}" "$TMP/glue.o" "$TMP/avx512.o" "$TMP/avx2.o" "$TMP/base.o" -o "$TMP/lib.so"
else
  log "compiling portable library ($("$CXX" -dumpmachine))"
  "$CXX" "${COMMON[@]}" -I"$INC" "${LINK[@]}" "$SRC" -o "$TMP/lib.so"
fi

# Atomic replace (copy next to the target, then rename): a process that already loaded the old file keeps it.
cp "$TMP/lib.so" "$OUT.tmp.$$" && mv -f "$OUT.tmp.$$" "$OUT"
elapsed_ms=$(( $(date +%s%N) / 1000000 - start_ms ))
log "built $OUT in $(( elapsed_ms / 1000 )).$(( elapsed_ms % 1000 / 100 )) s"
echo "$OUT"
