"""Whole `sft train` runs on CPU with a tiny random Llama on the synthetic task.

Exact resume after SIGKILL and SIGTERM, NaN handling, the final directory + `sft generate`,
config errors, and multi-process (torchrun, gloo) equality with one process.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sft_trainer.cli import app
from sft_trainer.config import load_config
from sft_trainer.contract import ExitCode
from sft_trainer.distributed import DistributedEnv
from sft_trainer.report import RunSummary
from sft_trainer.run import run_training
from tests.builders import random_model

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": random_model(),
    "data": {
        "synthetic": {"train_examples": 120, "validation_examples": 8},
        "prompt_template": "{input}{output}",
        "max_seq_length": 32,
    },
    "trainer": {
        "max_steps": 40,
        "val_check_interval": 10,
        "save_interval": 20,
        "micro_batch_size": 2,
        "global_batch_size": 8,
        "precision": "fp32",
        "limit_val_batches": 1,
        "log_every_n_steps": 10,
    },
    "optim": {"lr": 3e-3, "sched": {"warmup_steps": 5, "min_lr": 1e-4}},
    "checkpoint": {"save_top_k": 1},
    "logging": {"progress": "lines"},
}


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY, "output_dir": str(directory / "out")}))
    return path


def train(config: Path, *overrides: str) -> RunSummary:
    return run_training(load_config(config, list(overrides)), DistributedEnv())


def records(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def curve(output_dir: Path) -> list[tuple[int, float | None, float | None]]:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records(output_dir)]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sft_trainer.cli", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 40-step run: the reference for every resume test."""
    config = write_config(tmp_path_factory.mktemp("straight"))
    summary = train(config)
    assert summary.exit_code == ExitCode.OK, summary.message
    return config.parent / "out"


def test_metrics_lines_hold_the_documented_keys(straight: Path) -> None:
    steps = [r for r in records(straight) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert set(steps[0]) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}
    assert [r["step"] for r in records(straight) if "val_loss" in r] == [10, 20, 30, 40]
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_exact_resume_after_sigkill(straight: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    killed = cli("train", "--config", str(config), env={"SFT_FAULT_AT_STEP": "23", "SFT_FAULT_SIGNAL": "KILL"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "out" / "checkpoints" / "step-20" / "meta.json").is_file()
    assert max(r["step"] for r in records(tmp_path / "out")) == 23
    summary = train(config)  # checkpoint.resume=auto
    assert summary.exit_code == ExitCode.OK
    assert curve(tmp_path / "out") == curve(straight)


def test_exact_resume_after_sigterm(straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    monkeypatch.setenv("SFT_FAULT_AT_STEP", "27")
    monkeypatch.setenv("SFT_FAULT_SIGNAL", "TERM")
    interrupted = train(config)
    assert interrupted.exit_code == ExitCode.INTERRUPTED and interrupted.step == 27
    assert json.loads((tmp_path / "out/checkpoints/last/meta.json").read_text())["step"] == 27
    monkeypatch.delenv("SFT_FAULT_AT_STEP")
    assert train(config).exit_code == ExitCode.OK
    assert curve(tmp_path / "out") == curve(straight)


def test_checkpoint_retention_keeps_best_and_last(straight: Path) -> None:
    kept = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert "last" in kept and "step-40" in kept and len(kept) <= 3
    meta = json.loads((straight / "checkpoints/step-40/meta.json").read_text())
    assert meta["step"] == 40 and meta["consumed_samples"] == 320 and meta["epoch"] == 2


def test_final_directory_and_generate(straight: Path) -> None:
    final = straight / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sft.json"):
        assert (final / name).is_file(), name
    meta = json.loads((final / "sft.json").read_text())
    assert meta["prompt_template"] == "{input}{output}" and meta["training"]["steps"] == 40
    runner = CliRunner()
    greedy = runner.invoke(app, ["generate", "--model", str(final), "--prompt", "12+34=", "--max-new-tokens", "4"])
    assert greedy.exit_code == 0, greedy.output
    again = runner.invoke(app, ["generate", "--model", str(final), "--prompt", "12+34=", "--max-new-tokens", "4"])
    assert again.output == greedy.output
    sampled = runner.invoke(
        app,
        [
            *("generate", "-m", str(final), "-p", "1+1=", "-p", "2+2="),
            *("--temperature", "1.5", "--top-p", "0.9", "--seed", "1", "--max-new-tokens", "8"),
            *("--stop", "1", "--stop", "2"),
        ],
    )
    assert sampled.exit_code == 0, sampled.output
    assert len(sampled.output.splitlines()) <= 2
    assert all("1" not in line and "2" not in line for line in sampled.output.splitlines())


def test_micro_batch_size_does_not_change_the_losses(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    short = ["trainer.max_steps=5", "trainer.val_check_interval=5", "trainer.save_interval=5"]
    for size in (1, 4):
        assert (
            train(config, *short, f"trainer.micro_batch_size={size}", f"output_dir={tmp_path / str(size)}").exit_code
            == 0
        )
    for (_, a, va), (_, b, vb) in zip(curve(tmp_path / "1"), curve(tmp_path / "4"), strict=True):
        assert abs((a or 0) - (b or 0)) < 1e-5 and abs((va or 0) - (vb or 0)) < 1e-5


def test_non_finite_loss_stops_with_a_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    summary = train(config, "optim.lr=1.0e+30", "optim.sched.warmup_steps=0", "optim.weight_decay=0")
    assert summary.exit_code == ExitCode.NON_FINITE_LOSS, summary.message
    assert "non-finite" in summary.message
    meta = json.loads((tmp_path / "out/checkpoints/last/meta.json").read_text())
    assert meta["step"] == summary.step >= 1
    assert all(math.isfinite(r["loss"]) for r in records(tmp_path / "out") if "loss" in r)


def test_config_errors_exit_10_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(app, ["train", "--config", str(config), "trainer.global_batch_size=7"])
    assert result.exit_code == ExitCode.CONFIG_ERROR
    assert "trainer.global_batch_size" in result.output
    unknown = CliRunner().invoke(app, ["train", "--config", str(config), "trainer.max_stepz=3"])
    assert unknown.exit_code == ExitCode.CONFIG_ERROR and "trainer.max_stepz: unknown key" in unknown.output


@pytest.mark.slow
@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp2"])
def test_two_processes_match_one(tmp_path: Path, data_parallel: str) -> None:
    config = write_config(tmp_path)
    common = ["trainer.max_steps=6", "trainer.save_interval=10", "trainer.val_check_interval=5"]
    one = train(config, *common, f"output_dir={tmp_path / 'one'}")
    assert one.exit_code == ExitCode.OK
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    launcher = [torchrun, "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000)]
    two = subprocess.run(
        [
            *launcher,
            *("-m", "sft_trainer.cli", "train", "--config", str(config), *common),
            *(f"output_dir={tmp_path / 'two'}", "trainer.devices=2", f"parallelism.data_parallel={data_parallel}"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    ones, twos = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert [s for s, _, _ in ones] == [s for s, _, _ in twos]
    for (_, loss1, val1), (_, loss2, val2) in zip(ones, twos, strict=True):
        assert (loss1 is None) == (loss2 is None) and (val1 is None) == (val2 is None)
        assert abs((loss1 or 0) - (loss2 or 0)) < 1e-5 and abs((val1 or 0) - (val2 or 0)) < 1e-5


def test_mfu_is_exported_when_the_device_peak_is_known(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path)
    overrides = ["trainer.max_steps=3", f"logging.metrics_port={port}", "logging.peak_tflops_per_device=0.001"]
    assert train(config, *overrides).exit_code == ExitCode.OK
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    mfu_lines = [line for line in body.splitlines() if line.startswith("kube_sft_trainer_mfu{")]
    assert mfu_lines, body
    assert 0.0 < float(mfu_lines[0].rsplit(" ", 1)[1]) < 10.0
