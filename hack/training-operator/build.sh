#!/usr/bin/env bash
# Build (or find cached) Kubeflow's training-operator (cmd/training-operator.v1: PyTorchJob, TFJob,
# ... controllers) from the Go module proxy, plus its PyTorchJob CRD taken from the same module
# version. The wrapper module in this directory pins github.com/kubeflow/training-operator (go.mod
# `tool` directive, go.sum committed, -mod=readonly). Idempotent: a warm run only checks the cache.
# Output: $KUBE_SFT_CACHE/bin/training-operator-<version>/{training-operator,kubeflow.org_pytorchjobs.yaml}
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
BIN="$CACHE/bin/training-operator-$TRAINING_OPERATOR_VERSION"
MOD=github.com/kubeflow/training-operator
START=$(date +%s)
MODE=warm

log() { echo "[training-operator] $*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly ${GOFLAGS_EXTRA:-}"

if [ ! -x "$BIN/training-operator" ] || [ ! -f "$BIN/kubeflow.org_pytorchjobs.yaml" ]; then
    MODE=cold
    log "building $MOD $TRAINING_OPERATOR_VERSION from the Go module proxy (cold: several minutes)"
    mkdir -p "$BIN"
    tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$HERE" && nice -n 10 go build -ldflags "-s -w" -o "$tmp/training-operator" \
        "$MOD/cmd/training-operator.v1")
    src="$(cd "$HERE" && go list -m -f '{{.Dir}}' "$MOD")"
    cp "$src/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$tmp/"
    chmod 0644 "$tmp/kubeflow.org_pytorchjobs.yaml"
    mv "$tmp/kubeflow.org_pytorchjobs.yaml" "$BIN/"
    mv "$tmp/training-operator" "$BIN/"  # last: its presence marks a complete cache entry
fi
echo "[training-operator] $MODE in $(( $(date +%s) - START ))s -> $BIN" >&2
