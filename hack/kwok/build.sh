#!/usr/bin/env bash
# Build (or find cached) KWOK's `kwok` controller from the Go module proxy: the wrapper module in
# this directory pins sigs.k8s.io/kwok (go.mod `tool` directive, go.sum committed, -mod=readonly).
# Idempotent: a warm run only checks the cache. The binary lives outside the repository in
# $KUBE_SFT_CACHE/bin/kwok-<version>/kwok (default ~/.cache/kube-sft). Prints the cold/warm time.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
BIN="$CACHE/bin/kwok-$KWOK_VERSION"
START=$(date +%s)
MODE=warm

log() { echo "[kwok] $*" >&2; }

# Go builds: local toolchain only, nice'd (the cores are shared), no cgo, reproducible paths.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly ${GOFLAGS_EXTRA:-}"

if [ ! -x "$BIN/kwok" ]; then
    MODE=cold
    log "building kwok $KWOK_VERSION from the Go module proxy (cold: a few minutes on 2 cores)"
    mkdir -p "$BIN"
    tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$HERE" && nice -n 10 go build \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
        -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
    mv "$tmp/kwok" "$BIN/kwok"  # atomic: a half-written binary never sits at the cached path
fi
"$BIN/kwok" --version >&2 || true
echo "[kwok] $MODE in $(( $(date +%s) - START ))s -> $BIN/kwok" >&2
