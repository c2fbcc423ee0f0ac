"""`final/` of a chat run stands alone: its chat template loads in plain transformers, and `sft generate`
needs no file outside it (the training run's template file and data may be gone).

Real model (stories260K), real OpenAssistant trees and a real chat template (Qwen 2.5) from ../shared.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner

from sft_operator.kubectl_plugin.generation import chat_options, generate_args
from sft_trainer.cli import app
from sft_trainer.config import load_config
from sft_trainer.data.converters import convert_oasst
from sft_trainer.distributed import DistributedEnv
from sft_trainer.generate import prompt_format, prompt_token_ids
from sft_trainer.run import run_training
from tests.shared_data import SHARED_DATA, require
from tests.unit.data.test_chat_generation import answer_prompts_match

MODEL = SHARED_DATA / "models" / "stories260K" / "stories260K.bin"
TEMPLATE = SHARED_DATA / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"


def train(tmp_path: Path, data: dict[str, Any]) -> tuple[Path, float | None]:
    """Train one step; returns final/ copied elsewhere (the run directory is deleted) and the logged val_loss."""
    config = {
        "model": {"source": "llama2c", "path": str(MODEL)},
        "data": {"max_seq_length": 256, **data},
        "trainer": {
            "max_steps": 1,
            "global_batch_size": 2,
            "precision": "fp32",
            "val_check_interval": 1,
            "save_interval": 1,
        },
        "logging": {"progress": "none"},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_training(load_config(path), DistributedEnv())
    assert summary.exit_code == 0, summary.message
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)
    moved = tmp_path / "elsewhere" / "final"
    shutil.copytree(tmp_path / "run" / "final", moved)
    shutil.rmtree(tmp_path / "run")  # nothing of the run is left but the copied final/
    return moved, logged


def generate(final: Path, *extra: str) -> str:
    result = CliRunner().invoke(
        app, ["generate", "--model", str(final), "-p", "Hello there", "--max-new-tokens", "4", *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_nemo_chat_final_carries_its_template_and_defaults(tmp_path: Path) -> None:
    require(MODEL)
    groups, _ = convert_oasst(str(SHARED_DATA / "chat" / "oasst_en_100_trees.jsonl"), split=0.9, seed=10)
    rows = groups["train"][:8]
    train_file = tmp_path / "oasst.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out = tmp_path / "oasst_val.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in groups["validation"][:12]))
    final, logged = train(
        tmp_path, {"format": "nemo_chat", "train_file": str(train_file), "validation_file": str(held_out)}
    )
    train_file.unlink()
    # sft eval of the chat model on its held-out file: the loss training logged for it, and answers scored
    result = CliRunner().invoke(
        app, ["eval", "--model", str(final), "--file", str(held_out), "--max-examples", "2", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert logged is not None and abs(report["val_loss"] - logged) <= 1e-6, (report["val_loss"], logged)
    assert report["format"] == "nemo_chat" and report["generation"]["examples"] == 2
    meta = json.loads((final / "sft.json").read_text())
    assert meta["chat"]["system"] == rows[0]["system"] and meta["chat"]["type"] == "VALUE_TO_TEXT"
    tokenizer = AutoTokenizer.from_pretrained(str(final))  # plain transformers
    messages = [{"role": "user", "content": "Hello there"}]
    plain = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    stored = prompt_format(final, tokenizer)
    ours = prompt_token_ids(stored.data, tokenizer, "Hello there", defaults=stored.chat)
    assert plain == "\x00System\n" + rows[0]["system"] + "\n\x11User\nHello there\n\x11Assistant\n"
    assert tokenizer.encode(plain, add_special_tokens=False) == ours
    # the trained model's own tokenizer: every held-out answer's prompt equals its training prefix
    assert answer_prompts_match(tokenizer, groups["validation"]) == 105
    history = json.dumps([{"from": "User", "value": "Hi"}, {"from": "Assistant", "value": "Hello!"}])
    generate(final, "--history", history, "--system", "", "--label", "quality:4")
    # what `kubectl sft generate` (and its generation Job) runs: the history file travels inline
    history_file = tmp_path / "history.json"
    history_file.write_text(history)
    args = generate_args(str(final), ["Hello there"], 4, 0.0, chat_options("", "quality:4", history_file))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def test_hf_chat_final_generates_after_the_template_file_is_gone(tmp_path: Path) -> None:
    require(MODEL, TEMPLATE)
    template = tmp_path / "template.jinja"
    shutil.copy(TEMPLATE, template)
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": f"{i}."},
            ]
        }
        for i in range(6)
    ]
    train_file = tmp_path / "chat.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    final, _ = train(tmp_path, {"format": "hf_chat", "train_file": str(train_file), "chat_template": str(template)})
    template.unlink()
    assert (final / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (final / "tokenizer_config.json").read_text()
    )
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    plain = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert isinstance(plain, str) and plain.endswith("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    stored = prompt_format(final, tokenizer)
    assert stored.chat.system == "Be brief."  # the default system prompt is the one training used
    assert tokenizer.decode(prompt_token_ids(stored.data, tokenizer, "Hello there", defaults=stored.chat)) == plain
    generate(final)
