"""`sft eval` on a held-out GSM8K file reports the validation loss the training run logged for it, and
exact match on the GSM8K answers; as the run's `evaluation` step its result lands in the summary
(the SFTJob status) and `eval.json`. Real model (stories260K) and real GSM8K rows from ../shared."""

import json
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from sft_trainer.cli import app
from sft_trainer.config import load_config
from sft_trainer.distributed import DistributedEnv
from sft_trainer.run import run_training
from tests.builders import random_model
from tests.shared_data import SHARED_DATA, require

MODEL = SHARED_DATA / "models" / "stories260K" / "stories260K.bin"
GSM8K = SHARED_DATA / "instruct" / "gsm8k_train.jsonl"
FINAL = r"####\s*(.+)"


def test_sft_eval_reproduces_the_logged_validation_loss_and_scores_gsm8k(tmp_path: Path) -> None:
    require(MODEL, GSM8K)
    with GSM8K.open() as handle:
        rows = list(islice(handle, 40))
    (tmp_path / "train.jsonl").write_text("".join(rows[:32]))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(rows[32:]))  # never trained on
    config = {
        "model": {"source": "llama2c", "path": str(MODEL)},
        "data": {
            "train_file": str(tmp_path / "train.jsonl"),
            "validation_file": str(held_out),
            "prompt_template": "Q: {question}\nA: {answer}",
            "label_key": "answer",
            "max_seq_length": 512,
        },
        "trainer": {
            "max_steps": 2,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "val_check_interval": 2,
            "save_interval": 2,
            "limit_val_batches": 1.0,
            "precision": "fp32",
        },
        "optim": {"lr": 1e-3},
        "logging": {"progress": "none"},
        "evaluation": {"answer_regex": FINAL, "max_examples": 4, "max_new_tokens": 8},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_training(load_config(path), DistributedEnv())
    assert summary.exit_code == 0, summary.message
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["val_loss"] for r in records if "val_loss" in r][-1]

    # the job step: eval.json and the summary the status reporter sends
    step = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert abs(step["val_loss"] - logged) <= 1e-6
    assert summary.eval_metrics is not None and abs(summary.eval_metrics["eval_loss"] - logged) <= 1e-6
    assert summary.eval_metrics["eval_exact_match"] == step["generation"]["exact_match"]

    # the command
    out = tmp_path / "eval.json"
    command = ["eval", "--model", str(tmp_path / "run" / "final"), "--file", str(held_out)]
    result = CliRunner().invoke(
        app, [*command, "--answer-regex", FINAL, "--max-examples", "4", "--max-new-tokens", "8", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report == json.loads(result.output)
    assert abs(report["val_loss"] - logged) <= 1e-6, (report["val_loss"], logged)
    assert report["examples"] == 8 and report["perplexity"] > 1.0
    generation = report["generation"]
    assert generation["examples"] == 4 and 0.0 <= generation["exact_match"] <= generation["contains"] <= 1.0
    assert (
        generation["samples"][0]["prompt"].startswith("Q: ")
        and generation["samples"][0]["reference"].endswith("#### 72") is False
    )
    # loss only, no generation
    result = CliRunner().invoke(app, [*command, "--no-generate"])
    assert result.exit_code == 0 and "generation" not in json.loads(result.output)
    # a bad file is a data error naming the file
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "run" / "final"), "--file", str(bad)])
    assert result.exit_code == 11 and f"{bad}:1" in result.output


def synthetic_run(tmp_path: Path, train: int, validation: int, steps: int, evaluation: dict[str, Any]) -> Path:
    """The config file of a tiny fp32 run on the synthetic task, validated and saved at its last step,
    with `evaluation`; its output in tmp_path/run."""
    config = {
        "model": random_model(max_position_embeddings=2048),  # data.max_seq_length: the default 2048
        "data": {
            "synthetic": {"train_examples": train, "validation_examples": validation},
            "prompt_template": "{input}{output}",
        },
        "trainer": {
            "max_steps": steps,
            "global_batch_size": 8,
            "val_check_interval": steps,
            "save_interval": steps,
            "precision": "fp32",
        },
        "logging": {"progress": "none"},
        "evaluation": evaluation,
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_evaluation_step_of_a_synthetic_task_uses_its_held_out_file(tmp_path: Path) -> None:
    path = synthetic_run(
        tmp_path, train=64, validation=12, steps=4, evaluation={"max_examples": 12, "max_new_tokens": 4}
    )
    summary = run_training(load_config(path), DistributedEnv())
    assert summary.exit_code == 0 and summary.eval_metrics is not None, summary.message
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    step = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert step["file"].endswith("arithmetic_validation.jsonl") and step["generation"]["examples"] == 12
    assert abs(step["val_loss"] - logged["val_loss"]) <= 1e-6


def test_a_failing_evaluation_keeps_the_trained_model_and_the_success(tmp_path: Path) -> None:
    path = synthetic_run(
        tmp_path, train=32, validation=4, steps=1, evaluation={"file": str(tmp_path / "missing.jsonl")}
    )
    summary = run_training(load_config(path), DistributedEnv())
    assert summary.exit_code == 0 and summary.eval_metrics is None
    assert "evaluation failed" in summary.message and "missing.jsonl" in summary.message
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
