"""`sft run` and `sft report` through the real `sft` command line."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from sft_trainer.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_sft_run_validates_a_manifest_and_prints_the_train_command() -> None:
    result = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "sftjob-demo.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "sft_trainer.cli train --config" in result.output


def test_sft_run_refuses_a_bad_manifest_with_the_config_exit_code(tmp_path: Path) -> None:
    manifest = (ROOT / "examples" / "sftjob-demo.yaml").read_text().replace("max_steps:", "max_stepz:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest)
    result = CliRunner().invoke(app, ["run", str(bad), "--dry-run"])
    assert result.exit_code == 10, result.output
    assert "max_stepz" in result.output


def test_sft_report_writes_the_png_and_prints_the_summary(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "tokens_per_s": 100.0} for s in range(1, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "steps: 3" in result.output
    assert (tmp_path / "report.png").is_file()


def test_the_generation_job_passes_the_chat_options_inline(tmp_path: Path) -> None:
    from sft_operator.kubectl_plugin.generation import chat_options, generation_job

    history = tmp_path / "history.json"
    history.write_text('[{"from": "User", "value": "Hi"}]')
    job = {
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": {"storage": {"output": {"mountPath": "/output", "persistentVolumeClaim": {"claimName": "out"}}}},
        "status": {"finalModel": "/output/chat/final"},
    }
    manifest = generation_job(job, ["Why?"], chat=chat_options("", "quality:4", history))
    command = manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--system") + 1] == ""
    assert command[command.index("--label") + 1] == "quality:4"
    assert command[command.index("--history") + 1] == '[{"from": "User", "value": "Hi"}]'
    assert chat_options(None, None, None) == {}


def test_the_operator_adds_run_and_the_sftjob_check_through_entry_points() -> None:
    from sft_trainer.extensions import CLI_GROUP, SFTJOB_CHECK_GROUP, loaded

    assert [name for name, _ in loaded(CLI_GROUP)] == ["run"]
    ((name, check),) = loaded(SFTJOB_CHECK_GROUP)
    assert name == "sftjob"
    job = yaml.safe_load((ROOT / "examples" / "sftjob-demo.yaml").read_text())
    assert check(job) == []
    assert [problem.key for problem in check({**job, "spec": {}})] == ["spec.training"]


def test_sft_migrate_sftjob_refuses_a_name_the_api_server_would_refuse(tmp_path: Path) -> None:
    # The check is the operator's SFTJob model, reached through the kube_sft.sftjob_check entry point.
    overrides = ["model.restore_from_path=/models/hf-llama", "model.data.train_ds.file_path=train.jsonl"]
    result = CliRunner().invoke(app, ["migrate", *overrides, "--sftjob", "x" * 60])
    assert result.exit_code == 10, result.output
    assert "metadata.name: String should have at most 42 characters" in result.output
