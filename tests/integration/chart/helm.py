"""The real helm binary on the chart, without a cluster: `helm template` and its parsed documents."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.binaries import MissingBinariesError, find_binaries

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kube-sft"


def helm_binary() -> Path:
    """The cached helm (`make cluster-bins`); a missing binary fails the test."""
    try:
        return find_binaries().helm
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)


def helm_template(*args: str, release: str = "kube-sft", check: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template <release> charts/kube-sft --namespace kube-sft-system <args>`."""
    argv = [str(helm_binary()), "template", release, str(CHART), "--namespace", "kube-sft-system", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{result.stderr}")
    return result


def rendered(*args: str, release: str = "kube-sft") -> list[dict[str, Any]]:
    """The documents `helm template` renders with `args`."""
    return [doc for doc in yaml.safe_load_all(helm_template(*args, release=release).stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]
