"""`sft run`: one manifest for laptop and cluster, validated by the same models."""

import sys
from pathlib import Path

import pytest
import yaml

from sft_operator import run_local
from tests.builders import manifest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_valid_manifest_becomes_a_local_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, manifest())
    assert run_local.run_manifest(path, ["trainer.max_steps=2"], dry_run=True) == 0
    out = capsys.readouterr()
    assert (
        f"-m sft_trainer.cli train --config {path} trainer.num_nodes=1 trainer.devices=1 trainer.max_steps=2" in out.out
    )
    assert "2 node(s) x 2 process(es)" in out.err


def test_several_local_processes_use_torchrun(tmp_path: Path) -> None:
    command = run_local.train_command(tmp_path / "job.yaml", [], nproc=2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command and "trainer.devices=2" in command


def test_invalid_manifest_is_refused_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = manifest(resources={"numNodes": 2, "gpusPerNode": 2, "shmSize": "lots"})
    path = write(tmp_path, bad)
    assert run_local.run_manifest(path, dry_run=True) == 10
    err = capsys.readouterr().err
    assert "spec.resources.shmSize" in err and f"{path}:" in err


def test_not_an_sftjob(tmp_path: Path) -> None:
    path = write(tmp_path, {"kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(run_local.ManifestError, match="no `kind: SFTJob`"):
        run_local.load_manifest(path)


@pytest.mark.parametrize(
    "example",
    sorted([*EXAMPLES.glob("*/03-sftjob-*.yaml"), *EXAMPLES.glob("sftjob-*.yaml")]),
    ids=lambda path: path.name,
)
def test_the_example_manifests_validate(example: Path) -> None:
    job = run_local.load_manifest(example)
    assert job.spec.training.trainer.num_nodes == job.spec.resources.num_nodes
