#!/usr/bin/env bash
# `make test` as CI runs it: a fresh clone of this repository's HEAD with ../shared beside it, then .ci/run.
#
#   hack/fresh-clone-test.sh [RUNS] [WORKDIR]
#
# Runs RUNS (default 3) clones one after another under WORKDIR (default /tmp/kube-sft-fresh), each in
# WORKDIR/<n>/kube-sft, and prints one line per run (commit, rc, wall seconds, pytest's last line).
# Stops at the first failing run, keeping its clone for reading; passing clones are removed. Caches
# outside the repository (~/.cache/kube-sft, ~/.cache/uv) are shared, as on a CI runner that keeps them.
set -uo pipefail

runs=${1:-3}
workdir=${2:-/tmp/kube-sft-fresh}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
shared=$(cd "$repo/../shared" && pwd) || { echo "no ../shared beside $repo" >&2; exit 2; }
commit=$(git -C "$repo" rev-parse --short HEAD)
[ -z "$(git -C "$repo" status --porcelain)" ] || echo "note: uncommitted changes are not in the clones" >&2

for n in $(seq 1 "$runs"); do
    clone="$workdir/$n"
    rm -rf "$clone" && mkdir -p "$clone"
    git clone -q "$repo" "$clone/kube-sft"
    ln -s "$shared" "$clone/shared"
    log="$clone/make-test.log"
    echo "run $n of $runs: commit $commit, started $(date -u +%H:%M:%S), log $log"
    start=$(date +%s)
    (cd "$clone/kube-sft" && .ci/run) >"$log" 2>&1
    rc=$?
    echo "run $n: rc $rc, wall $(($(date +%s) - start)) s, $(grep -E '(passed|failed).* in [0-9.]+s' "$log" | tail -1)"
    if [ "$rc" != 0 ]; then
        echo "run $n failed: clone kept at $clone/kube-sft" >&2
        exit "$rc"
    fi
    mv "$log" "$workdir/run-$n.log" && rm -rf "$clone"
done
