"""Every alert of the chart fires when it should and stays silent otherwise (`promtool test rules`), and
links a runbook that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.binaries import MissingBinariesError, find_tool
from tests.integration.chart.helm import CHART, REPO

pytestmark = pytest.mark.integration

ALERTS = CHART / "files" / "alerts.yaml"
CASES = Path(__file__).with_name("alert_cases.yaml")
RUNBOOK_URL = "https://github.com/kube-sft/kube-sft/blob/main/docs/runbooks/{alert}.md"


def rules() -> dict[str, dict[str, Any]]:
    """Alert name -> rule, from files/alerts.yaml."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def render_annotation(template: str, labels: dict[str, str], value: str) -> str:
    """An annotation as Prometheus renders it, for the two template forms the chart's alerts use."""
    text = template.replace("{{ $value }}", value)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda match: labels[match.group(1)], text)


def promtool_tests(cases: dict[str, Any], alerts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """alert_cases.yaml as promtool's test file: each expected alert's `value` becomes its exp_annotations."""
    tests = []
    for case in cases["tests"]:
        checks = []
        for check in case["alert_rule_test"]:
            annotations = alerts[check["alertname"]]["annotations"]
            expected = [
                {
                    "exp_labels": alert["exp_labels"],
                    "exp_annotations": {
                        key: render_annotation(text, alert["exp_labels"], alert["value"])
                        for key, text in annotations.items()
                    },
                }
                for alert in check["exp_alerts"]
            ]
            checks.append({**check, "exp_alerts": expected})
        tests.append({**case, "alert_rule_test": checks})
    return {"rule_files": [str(ALERTS)], "evaluation_interval": cases["evaluation_interval"], "tests": tests}


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    try:
        promtool = find_tool("promtool")
    except MissingBinariesError as error:
        pytest.fail(str(error), pytrace=False)
    cases = yaml.safe_load(CASES.read_text(encoding="utf-8"))
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(promtool_tests(cases, rules()), sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = yaml.safe_load(CASES.read_text(encoding="utf-8"))["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    firing = {check["alertname"] for check in checks if check["exp_alerts"]}
    silent = {check["alertname"] for check in checks if not check["exp_alerts"]}
    assert set(rules()) <= firing, f"no firing case: {sorted(set(rules()) - firing)}"
    assert set(rules()) <= silent, f"no silent case: {sorted(set(rules()) - silent)}"


def test_every_alert_links_its_runbook() -> None:
    for alert, rule in rules().items():
        assert rule["annotations"].get("runbook_url") == RUNBOOK_URL.format(alert=alert)
        runbook = REPO / "docs" / "runbooks" / f"{alert}.md"
        assert runbook.exists(), f"{alert}: missing {runbook}"
        text = runbook.read_text(encoding="utf-8")
        assert text.startswith(f"# {alert}\n") and "## Mitigation" in text, f"{runbook}: title and Mitigation section"
