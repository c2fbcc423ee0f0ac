#!/usr/bin/env bash
# Install (or find cached) checkov, the Kubernetes manifest linter `make test` runs on the rendered chart
# (tests/integration/chart/test_lint.py), into its own virtual environment outside the repository:
# $KUBE_SFT_CACHE/checkov-<version>/venv (default ~/.cache/kube-sft). Its many dependencies never meet
# the project's own. Idempotent: a warm run only checks the cache.
set -euo pipefail
CHECKOV_VERSION=3.3.30
CACHE="${KUBE_SFT_CACHE:-$HOME/.cache/kube-sft}"
VENV="$CACHE/checkov-$CHECKOV_VERSION/venv"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/checkov" ]; then
    echo "[checkov] warm: $VENV/bin/checkov" >&2
    exit 0
fi
echo "[checkov] installing checkov==$CHECKOV_VERSION into $VENV" >&2
"$PYTHON" -m uv venv -q --python "$PYTHON" "$VENV"
nice "$PYTHON" -m uv pip install -q --python "$VENV/bin/python" "checkov==$CHECKOV_VERSION"
echo "[checkov] cold: $VENV/bin/checkov" >&2
