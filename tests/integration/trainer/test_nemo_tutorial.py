"""The two training commands of NeMo-Aligner's SFT tutorial, run through `sft train` on CPU.

The commands are the ones in `../shared/reference/nemo-aligner-sft-commands.md`, word for word,
except for what a CPU test must change: the paths (data, model, output), `trainer.devices` (1) and
the step count (`trainer.sft.max_steps`: 2 for Dolly, 1 for chat). Batch sizes stay (128 rows a
step, micro-batches of 1). The model is
the real stories260K (`model.restore_from_path` of a llama2.c `.bin`), the chat data the real
OpenAssistant trees converted by `sft data convert oasst`.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_data import require

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "data" / "models" / "stories260K" / "stories260K.bin"
OASST = SHARED / "data" / "chat" / "oasst_en_100_trees.jsonl"

COMMON_HEAD = """trainer.precision=bf16 trainer.num_nodes=1 trainer.devices=8 \
trainer.sft.max_steps=-1 trainer.sft.limit_val_batches=40 trainer.sft.val_check_interval=1000 \
model.megatron_amp_O2=True model.restore_from_path=/path/to/your/mcore_gpt.nemo"""
COMMON_TAIL = """exp_manager.create_wandb_logger=True exp_manager.explicit_log_dir=/results \
exp_manager.wandb_logger_kwargs.project=sft_run exp_manager.wandb_logger_kwargs.name={run} \
exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True \
exp_manager.resume_if_exists=True exp_manager.resume_ignore_no_checkpoint=True \
exp_manager.create_checkpoint_callback=True \
exp_manager.checkpoint_callback_params.monitor=validation_loss"""
DOLLY = f"""{COMMON_HEAD} \
model.optim.lr=5e-6 model.answer_only_loss=True model.data.num_workers=0 \
model.data.train_ds.micro_batch_size=1 model.data.train_ds.global_batch_size=128 \
model.data.train_ds.file_path=/path/to/databricks-dolly-15k-output.jsonl \
model.data.validation_ds.micro_batch_size=1 model.data.validation_ds.global_batch_size=128 \
model.data.validation_ds.file_path=/path/to/databricks-dolly-15k-output.jsonl \
{COMMON_TAIL.format(run="dolly_sft_run")}"""
CHAT = f"""{COMMON_HEAD} \
model.optim.lr=5e-6 model.data.chat=True model.data.num_workers=0 \
model.data.train_ds.micro_batch_size=1 model.data.train_ds.global_batch_size=128 \
model.data.train_ds.max_seq_length=4096 model.data.train_ds.file_path=data/oasst/train.jsonl \
model.data.validation_ds.micro_batch_size=1 model.data.validation_ds.global_batch_size=128 \
model.data.validation_ds.file_path=data/oasst/val.jsonl model.data.validation_ds.max_seq_length=4096 \
{COMMON_TAIL.format(run="chat_sft_run")}"""


def for_cpu(command: str, paths: dict[str, Path], steps: int) -> list[str]:
    """The tutorial's arguments with only paths, devices and the step count changed."""
    changes = {
        "trainer.devices=8": "trainer.devices=1",
        "trainer.sft.max_steps=-1": f"trainer.sft.max_steps={steps}",
        "/path/to/your/mcore_gpt.nemo": str(MODEL),
        **{old: str(new) for old, new in paths.items()},
    }
    for old, new in changes.items():
        assert old in command, old
        command = command.replace(old, new)
    return shlex.split(command)


def run_train(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sft_trainer.cli", "train", *arguments]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "WANDB_SILENT": "true", "HOME": str(cwd)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env, check=False)


def assert_every_key_reported(arguments: list[str], stderr: str) -> None:
    """One note per NeMo key of the command (ours need none)."""
    notes = [line.strip() for line in stderr.splitlines() if line.startswith("  ")]
    for argument in arguments:
        key = argument.partition("=")[0]
        if key.startswith(("trainer.sft.", "model.", "exp_manager.")):
            assert any(note.startswith(key + " ") or note.startswith(key + ":") for note in notes), key


def dolly_rows(count: int) -> list[dict[str, str]]:
    """Dolly-15k rows as the dataset has them (instruction, context, response, category); our own text."""
    rows = []
    for i in range(count):
        rows.append(
            {
                "instruction": f"What is {i} plus {i + 1}?",
                "context": "" if i % 3 else f"Tom had {i} apples and got {i + 1} more.",
                "response": f"It is {2 * i + 1}.",
                "category": "open_qa" if i % 3 else "closed_qa",
            }
        )
    return rows


@pytest.mark.slow
def test_tutorial_prompt_response_command(tmp_path: Path) -> None:
    require(MODEL)
    raw = tmp_path / "dolly.jsonl"
    raw.write_text("".join(json.dumps(row) + "\n" for row in dolly_rows(130)))
    converted = tmp_path / "databricks-dolly-15k-output.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_trainer.cli",
            "data",
            "convert",
            "dolly",
            "--input",
            str(raw),
            "--output",
            str(converted),
        ],
        check=True,
        capture_output=True,
    )
    output = tmp_path / "results"
    arguments = for_cpu(DOLLY, {"/path/to/databricks-dolly-15k-output.jsonl": converted, "/results": output}, 2)
    result = run_train(arguments, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_key_reported(arguments, result.stderr)
    assert "model.data.num_workers: ignored" in result.stderr
    assert "data: train: 130 examples" in result.stderr and "(dropped 0, truncated 0, bad rows 0)" in result.stderr
    assert 'model.restore_from_path -> model.path = "' in result.stderr
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert any("val_loss" in r for r in records)
    meta = json.loads((output / "final" / "sft.json").read_text())
    assert meta["data"]["prompt_template"] == "{input} {output}" and meta["data"]["format"] == "prompt_response"
    assert list((output / "wandb").glob("offline-run-*"))


@pytest.mark.slow  # 128 OASST conversations of up to 4096 tokens a step: about 3 minutes on 2 busy cores
def test_tutorial_chat_command(tmp_path: Path) -> None:
    require(MODEL, OASST)
    data = tmp_path / "data" / "oasst"
    data.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sft_trainer.cli",
            "data",
            "convert",
            "oasst",
            "--input",
            str(OASST),
            "--output",
            str(data / "oasst.jsonl"),
            "--split",
            "0.9",
        ],
        check=True,
        capture_output=True,
    )
    (data / "oasst_train.jsonl").rename(data / "train.jsonl")
    (data / "oasst_val.jsonl").rename(data / "val.jsonl")
    output = tmp_path / "results"
    arguments = for_cpu(CHAT, {"/results": output}, 1)  # data/oasst/... is relative, as in the tutorial
    result = run_train(arguments, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_key_reported(arguments, result.stderr)
    assert 'model.data.chat -> data.format = "nemo_chat"' in result.stderr
    assert re.search(r"data: train: \d+ examples, \d+ trained tokens \(dropped \d+, truncated \d+", result.stderr)
    assert 'exp_manager.checkpoint_callback_params.monitor -> checkpoint.monitor = "validation_loss"' in result.stderr
    meta = json.loads((output / "checkpoints" / "step-1" / "meta.json").read_text())
    assert meta["metrics"]["val_loss"] == pytest.approx(meta["val_loss"])
    assert json.loads((output / "final" / "sft.json").read_text())["data"]["format"] == "nemo_chat"


def test_sft_run_takes_a_migrated_manifest_and_nemo_overrides(tmp_path: Path) -> None:
    require(MODEL)
    data = tmp_path / "dolly.jsonl"
    rows = [{"input": row["instruction"], "output": row["response"]} for row in dolly_rows(16)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = tmp_path / "job.yaml"
    migrate = [sys.executable, "-m", "sft_trainer.cli", "migrate", "--sftjob", "dolly", "--out", str(manifest)]
    nemo = [f"model.restore_from_path={MODEL}", f"model.data.train_ds.file_path={data}", "model.data.num_workers=0"]
    done = subprocess.run([*migrate, *nemo], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "# model.data.num_workers: ignored" in done.stderr
    overrides = [
        "trainer.sft.max_steps=1",
        "model.data.train_ds.global_batch_size=4",
        f"exp_manager.explicit_log_dir={tmp_path / 'results'}",
        "model.data.train_ds.prompt_template={input} {output}",
    ]
    command = [sys.executable, "-m", "sft_trainer.cli", "run", str(manifest), *overrides]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer.sft.max_steps -> trainer.max_steps = 1" in result.stderr
    assert (tmp_path / "results" / "final" / "sft.json").is_file()
