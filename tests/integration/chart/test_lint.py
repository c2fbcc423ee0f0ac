"""checkov on the rendered chart: no finding, and every skipped check says why (in the chart's annotations)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.chart.helm import REPO, helm_template

pytestmark = pytest.mark.integration

INSTALL = REPO / "hack" / "checkov" / "install.sh"
RENDERS = {
    "every-namespace": [],
    "watched-namespaces-with-monitoring": [
        "--set", "watchNamespaces={team-a,team-b}", "--api-versions", "monitoring.coreos.com/v1",
    ],
}  # fmt: skip


def checkov_binary() -> Path:
    """The checkov hack/checkov/install.sh caches (its version read from the script: one source)."""
    version = re.search(r"^CHECKOV_VERSION=(\S+)$", INSTALL.read_text(), flags=re.MULTILINE)
    assert version, f"no CHECKOV_VERSION in {INSTALL}"
    cache = Path(os.environ.get("KUBE_SFT_CACHE", Path.home() / ".cache" / "kube-sft"))
    binary = cache / f"checkov-{version.group(1)}" / "venv" / "bin" / "checkov"
    if not binary.exists():
        pytest.fail(f"{binary} missing: run `make lint-tools` (hack/checkov/install.sh)", pytrace=False)
    return binary


def test_checkov_finds_nothing_unjustified(tmp_path: Path) -> None:
    files = []
    for name, args in RENDERS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(helm_template(*args).stdout, encoding="utf-8")
        files += ["--file", str(path)]
    result = subprocess.run(
        [str(checkov_binary()), *files, "--framework", "kubernetes", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    summary, outcome = report["summary"], report["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in outcome["failed_checks"]]
    assert not failed, f"checkov findings (fix them, or justify with a checkov.io/skip annotation): {failed}"
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 30 and summary["passed"] >= 150, summary
    for check in outcome["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 40, f"{check['check_id']} on {check['resource']} is skipped without a reason"
    assert result.returncode == 0, result.stderr[-2000:]
