"""Scenario 2: `sft data convert oasst` on ../shared/data/chat/oasst_en_100_trees.jsonl, then a 2-node
SFTJob with `data.format: nemo_chat` trained through the helm-installed operator to Succeeded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import System, sft_system, sftjob, tiny_training
from tests.shared_data import shared

__all__ = ["sft_system"]

pytestmark = pytest.mark.e2e


def test_oasst_conversion_trains_to_succeeded(sft_system: System, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Convert the OASST trees with the CLI, mount the result, train a tiny chat model to Succeeded."""
    trees = shared("chat/oasst_en_100_trees.jsonl")
    data_dir = tmp_path_factory.mktemp("chat")
    data_dir.chmod(0o755)
    sft = Path(sys.executable).parent / "sft"
    result = subprocess.run(
        [str(sft), "data", "convert", "oasst", "--input", str(trees), "--output", str(data_dir / "oasst.jsonl"),
         "--split", "0.9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    train, val = data_dir / "oasst_train.jsonl", data_dir / "oasst_val.jsonl"
    assert train.exists() and val.exists(), sorted(p.name for p in data_dir.iterdir())
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(rows) >= 50, f"only {len(rows)} conversations converted from 100 trees"
    first = rows[0]
    assert {"conversations", "mask"} <= set(first) and len(first["conversations"]) >= 2, first
    assert {turn["from"] for turn in first["conversations"]} <= {"User", "Assistant"}
    data = {
        "format": "nemo_chat",
        "train_file": "/data/oasst_train.jsonl",
        "validation_file": "/data/oasst_val.jsonl",
        "answer_only_loss": True,
        "max_seq_length": 1024,  # byte tokens: about 40% of the conversations fit whole
        "chat_prompt_tokens": {
            "system_turn_start": "\x00", "turn_start": "\x11", "label_start": "\x12",
            "end_of_turn": "\n", "end_of_name": "\n",
        },
    }  # fmt: skip
    training = tiny_training(output_dir="/output/chat", data=data, max_steps=16, save_interval=8)
    training["model"]["architecture"]["max_position_embeddings"] = 1024
    output_dir = tmp_path_factory.mktemp("chat-out")
    output_dir.chmod(0o777)
    sft_system.apply(sftjob("chat", training, data_dir=data_dir, output={"hostPath": {"path": str(output_dir)}}))
    running = sft_system.wait_phase("chat", {"Running", "Succeeded", "Failed"}, 300)
    assert running["phase"] != "Failed", sft_system.diagnostics("chat")
    final = sft_system.wait_phase("chat", {"Succeeded", "Failed"}, 300)
    assert final["phase"] == "Succeeded", sft_system.diagnostics("chat")
    assert final["restarts"] == 0 and final["progress"]["step"] == 16
    assert final["metrics"]["loss"] > 0 and final["metrics"].get("valLoss", 0) > 0, final["metrics"]
    final_model = output_dir / Path(final["finalModel"]).relative_to("/output")
    assert final_model.is_dir() and any(final_model.iterdir())
    metrics = [json.loads(line) for line in (output_dir / "chat" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 17))
