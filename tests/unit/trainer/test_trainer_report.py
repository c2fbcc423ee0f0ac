"""Reporters: console lines, the fan-out's isolation, metrics.jsonl, TensorBoard and W&B offline."""

import json
from pathlib import Path

import pytest

from sft_trainer.config import SFTConfig
from sft_trainer.report import FanOut, build_reporters
from sft_trainer.report.console import ConsoleReporter, format_duration, step_line
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport
from sft_trainer.report.metrics_file import MetricsFile, truncate_metrics

STEP = StepReport(
    step=3,
    total_steps=10,
    epoch=0,
    consumed_samples=24,
    loss=1.25,
    lr=1e-3,
    grad_norm=0.5,
    tokens=800,
    tokens_per_s=4000.0,
    elapsed_s=65.0,
    eta_s=3725.0,
    data_wait_s=0.01,
)
SUMMARY = RunSummary(outcome="succeeded", step=10, total_steps=10, exit_code=0, message="done")


def config(tmp_path: Path, **logging: object) -> SFTConfig:
    return SFTConfig.model_validate(
        {
            "output_dir": str(tmp_path),
            "model": {"source": "random", "tokenizer": {"type": "byte"}, "architecture": {}},
            "data": {"synthetic": {}, "max_seq_length": 64},
            "logging": {"progress": "lines", **logging},
        }
    )


def test_durations_and_lines() -> None:
    assert [format_duration(s) for s in (None, 3, 65, 3725)] == ["?", "3s", "1m05s", "1h02m05s"]
    line = step_line(STEP, val_loss=1.5)
    assert line.startswith("step 3/10 epoch 0 loss 1.2500 val_loss 1.5000")
    assert "tokens/s 4000" in line and "eta 1h02m05s" in line


def test_plain_lines_every_n_steps(capsys: pytest.CaptureFixture[str]) -> None:
    console = ConsoleReporter("lines", every_n_steps=3)
    console.step(STEP)
    console.validation(ValidationReport(step=3, val_loss=1.5, best_val_loss=1.5))
    console.checkpoint(CheckpointReport(step=3, path="ckpt", seconds=0.1))
    console.finish(SUMMARY)
    err = capsys.readouterr().err
    assert "step 3/10" in err and "val_loss 1.5000" in err and "checkpoint step 3" in err and "succeeded" in err


def test_messages_print_verbatim_even_with_markup_like_text(capsys: pytest.CaptureFixture[str]) -> None:
    message = "Connection closed by peer [/10.0.0.2]:29500 [bold]"
    console = ConsoleReporter("lines", every_n_steps=1)
    console.checkpoint(CheckpointReport(step=3, path="/out/[run]/step-3", seconds=0.1))
    console.finish(RunSummary(outcome="failed", step=3, total_steps=10, exit_code=70, message=message))
    err = capsys.readouterr().err
    assert message in err and "/out/[run]/step-3" in err


def test_bar_mode_shows_progress_loss_val_loss_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    console = ConsoleReporter("bar", every_n_steps=1)
    console.step(STEP)
    console.validation(ValidationReport(step=3, val_loss=1.5, best_val_loss=1.5))
    console.step(STEP)
    console.finish(SUMMARY)
    err = capsys.readouterr().err
    # Off a terminal rich draws the bar once, when it stops: its last state, with the val loss it learnt.
    assert "3/10" in err and "loss 1.2500" in err and "val 1.5000" in err and "4000 tok/s" in err
    assert "validation step 3: val_loss 1.5000" in err and "succeeded: step 10/10" in err
    assert "step 3/10 epoch" not in err  # the bar replaces the plain step lines


class Broken:
    def step(self, report: StepReport) -> None:
        raise RuntimeError("sink down")

    def validation(self, report: ValidationReport) -> None:
        raise RuntimeError("sink down")

    def checkpoint(self, report: CheckpointReport) -> None:
        raise RuntimeError("sink down")

    def finish(self, summary: RunSummary) -> None:
        raise RuntimeError("sink down")


def test_fan_out_isolates_failing_sinks(tmp_path: Path) -> None:
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    fan = FanOut([Broken(), metrics])
    fan.step(STEP)
    fan.validation(ValidationReport(step=3, val_loss=1.5, best_val_loss=1.5))
    fan.checkpoint(CheckpointReport(step=3, path="x", seconds=0.1))
    fan.finish(SUMMARY)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {
            "step": 3,
            "loss": 1.25,
            "lr": 1e-3,
            "grad_norm": 0.5,
            "tokens": 800,
            "tokens_per_s": 4000.0,
            "elapsed_s": 65.0,
        },
        {"step": 3, "val_loss": 1.5},
    ]
    truncate_metrics(tmp_path / "metrics.jsonl", 2)
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_build_reporters_by_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SFT_JOB_NAME", raising=False)
    assert build_reporters(config(tmp_path), is_rank_zero=False).reporters == []
    names = [type(r).__name__ for r in build_reporters(config(tmp_path, progress="none"), True).reporters]
    assert names[0] == "MetricsFile" and "ConsoleReporter" not in names


def test_tensorboard_writes_events(tmp_path: Path) -> None:
    fan = build_reporters(config(tmp_path, tensorboard=True), is_rank_zero=True)
    assert "TensorBoardReporter" in [type(r).__name__ for r in fan.reporters]
    fan.step(STEP)
    fan.finish(SUMMARY)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_wandb_offline_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    fan = build_reporters(config(tmp_path, wandb={"project": "test", "mode": "offline"}), is_rank_zero=True)
    assert "WandbReporter" in [type(r).__name__ for r in fan.reporters]
    fan.step(STEP)
    fan.validation(ValidationReport(step=3, val_loss=1.5, best_val_loss=1.5))
    fan.finish(SUMMARY)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_run_name_project_and_tags_are_settable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    wandb = {"project": "sft_run", "name": "dolly_sft_run", "tags": ["dolly", "2b"], "mode": "offline"}
    fan = build_reporters(config(tmp_path, wandb=wandb), is_rank_zero=True)
    [reporter] = [r for r in fan.reporters if type(r).__name__ == "WandbReporter"]
    run = reporter.run  # type: ignore[attr-defined]
    assert (run.name, run.project, list(run.tags)) == ("dolly_sft_run", "sft_run", ["dolly", "2b"])
    fan.finish(SUMMARY)
    unnamed = build_reporters(config(tmp_path / "b", wandb={"mode": "offline"}), is_rank_zero=True)
    [reporter] = [r for r in unnamed.reporters if type(r).__name__ == "WandbReporter"]
    assert reporter.run.name == "sft"  # type: ignore[attr-defined]  # the config's name
    unnamed.finish(SUMMARY)
