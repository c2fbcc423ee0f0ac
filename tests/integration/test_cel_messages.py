"""`kubectl apply` and `sft run` refuse a bad SFTJob with the same field, words and values.

Each case changes the demo SFTJob; `sft run --dry-run` validates it like the operator's models,
and a real API server with the checked-in CRD evaluates the CEL rules (server-side dry run).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from devcluster.controlplane import ControlPlane
from sft_trainer.cli import app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "sftjob-demo.yaml"

CASES: dict[str, dict[str, Any]] = {
    "global-batch": {"training.trainer.global_batch_size": 100},
    "save-interval": {"training.trainer.save_interval": 300},
    "parallelism": {"resources.gpusPerNode": 3, "training.parallelism.tensor_model_parallel_size": 2},
    "num-nodes": {"training.trainer.num_nodes": 5},
    "devices": {"training.trainer.devices": 5},
    "model-path": {"training.model.source": "hf"},
    "never-stops": {"training.trainer.max_steps": -1, "training.trainer.max_epochs": -1},
}
# `<field>: Invalid value: <message>` (or `Required value`), as the API server words a failed CEL rule.
SERVER_LINE = re.compile(r"(?P<field>spec\.[\w.]+): (?:Invalid|Required) value: (?:\"[^\"]*\": )?(?P<message>.+)$")


def changed_demo(change: dict[str, Any]) -> dict[str, Any]:
    """The demo SFTJob with dotted `spec` keys set."""
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load(DEMO.read_text(encoding="utf-8")))
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return doc


@pytest.mark.parametrize("case", sorted(CASES))
def test_apply_and_sft_run_name_the_same_field_words_and_values(
    kube_cluster: ControlPlane, sftjob_crd: str, namespace: str, tmp_path: Path, case: str
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(changed_demo(CASES[case])), encoding="utf-8")

    cli = CliRunner().invoke(app, ["run", str(manifest), "--dry-run"])
    assert cli.exit_code == 10, cli.output
    # `  <file>:<line>: <where>: <message>` under the `invalid SFTJob manifest:` header
    (problem,) = [re.sub(r"^\s+\S+:\d+: ", "", line) for line in cli.output.splitlines()[1:]]

    server = kube_cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(manifest), check=False)
    assert server.returncode != 0, server.stdout
    refusals = [match for match in map(SERVER_LINE.search, server.stderr.splitlines()) if match]
    assert refusals, server.stderr

    def field_of(message: str) -> str | None:
        """The CLI problem's dotted field when its text ends with `message`."""
        return problem[: -len(message) - 2].replace(": ", ".") if problem.endswith(f": {message}") else None

    same = [m["field"] for m in refusals if field_of(m["message"]) == m["field"]]
    assert same, f"sft run: {problem}\nkubectl apply: {server.stderr}"
