"""build_datasets end to end: synthetic task, cache reuse and invalidation, packing stats, CLI."""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sft_trainer.cli_data import data_app
from sft_trainer.config import SFTConfig, SyntheticTaskConfig
from sft_trainer.data import build_datasets, collate, prompt_for_generation, synthetic_rows
from sft_trainer.data.jsonl import write_jsonl
from sft_trainer.data.types import IGNORE_INDEX
from tests.shared_data import shared


def run_config(tmp_path: Path, **data: Any) -> SFTConfig:
    return SFTConfig.model_validate(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {"source": "random", "architecture": {}, "tokenizer": {"type": "byte"}},
            "data": data,
        }
    )


def test_synthetic_rows_are_seeded_and_disjoint() -> None:
    config = SyntheticTaskConfig(train_examples=3000, validation_examples=300, operations=["+", "-"], seed=7)
    train, validation = synthetic_rows(config)
    assert len(train) == 3000 and len(validation) == 300
    assert not {r["input"] for r in train} & {r["input"] for r in validation}
    assert (train, validation) == synthetic_rows(config)
    for row in train[:200]:
        a, op, b = row["input"][:-1].replace("-", " - ").replace("+", " + ").split()
        assert int(row["output"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


def test_synthetic_build_reads_through_the_prompt_response_path(tmp_path: Path, byte_tok: Any) -> None:
    config = run_config(
        tmp_path, synthetic={"train_examples": 100, "validation_examples": 10}, prompt_template="{input}{output}"
    )
    splits = build_datasets(config, byte_tok)
    assert (tmp_path / "run" / "data" / "arithmetic_train.jsonl").is_file()
    assert len(splits.train) == 100 and splits.validation is not None and len(splits.validation) == 10
    sample = splits.train[0]
    text = byte_tok.decode(sample.input_ids)
    prompt = prompt_for_generation(config.data, text.split("=")[0] + "=")
    assert text.startswith(prompt) and text.endswith("</s>")
    assert splits.stats["examples"] == 100 and splits.stats["cache"] == {"train": "miss", "validation": "miss"}
    assert int(splits.train.loss_tokens.sum()) == splits.stats["answer_tokens"]


def test_cache_is_reused_and_invalidated(tmp_path: Path, byte_tok: Any) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(50)))
    config = run_config(tmp_path, train_file=str(rows), cache_dir=str(tmp_path / "cache"))
    first = build_datasets(config, byte_tok)
    second = build_datasets(config, byte_tok)
    assert second.stats["cache"]["train"] == "hit"
    assert isinstance(second.train.store.input_ids, np.memmap)
    assert [s.input_ids.tolist() for s in second.train] == [s.input_ids.tolist() for s in first.train]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    config.data.max_seq_length = 16  # a knob changes: a new cache entry
    assert build_datasets(config, byte_tok).stats["cache"]["train"] == "miss"
    rows.write_text(rows.read_text() + json.dumps({"input": "new", "output": "row"}) + "\n")
    os.utime(rows, ns=(1, 1))
    third = build_datasets(config, byte_tok)  # the file changes: prepared again
    assert third.stats["cache"]["train"] == "miss" and third.stats["examples"] == 51


def test_packed_build_and_collate(tmp_path: Path, byte_tok: Any) -> None:
    config = run_config(
        tmp_path,
        synthetic={"train_examples": 500, "validation_examples": 20},
        packing=True,
        max_seq_length=64,
        packing_algorithm="first_fit_shuffle",
    )
    splits = build_datasets(config, byte_tok)
    assert splits.stats["packed_sequences"] == len(splits.train) < 500
    assert splits.stats["fill_ratio"] > 0.9
    assert all(n <= 64 for n in splits.train.lengths)
    batch = collate(splits.train[:4], byte_tok.pad_token_id)
    assert batch.num_loss_tokens == int(splits.train.loss_tokens[:4].sum())
    assert (batch.labels[batch.segment_ids == 0] == IGNORE_INDEX).all()


def test_cli_prepare_writes_summary(tmp_path: Path) -> None:
    rows = tmp_path / "gsm.jsonl"
    source = shared("instruct/gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    rows.write_text("\n".join(source) + "\n{broken\n", encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "output_dir": str(tmp_path / "run"),
                "model": {
                    "source": "random",
                    "architecture": {},
                    "tokenizer": {"type": "gpt2_bpe", "path": str(shared("tokenizers/gpt2"))},
                },
                "data": {
                    "train_file": str(rows),
                    "prompt_template": "Q: {question}\nA: {answer}",
                    "label_key": "answer",
                    "truncation_field": "question",
                    "max_seq_length": 512,
                    "packing": True,
                },
            }
        )
    )
    runner = CliRunner()
    summary = tmp_path / "stats.json"
    failed = runner.invoke(data_app, ["prepare", "--config", str(config)])
    assert failed.exit_code == 11 and f"{rows}:201: malformed JSON" in failed.output
    result = runner.invoke(
        data_app, ["prepare", "--config", str(config), "--summary-json", str(summary), "--skip-bad-rows"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(summary.read_text())
    assert stats["examples"] == 200 and stats["bad_rows"] == 1 and stats["dropped"] == 0
    assert {"tokens", "answer_tokens", "packed_sequences", "fill_ratio", "seconds"} <= set(stats)
    assert stats["fill_ratio"] > 0.9


def test_cli_convert_oasst_with_split(tmp_path: Path) -> None:
    out = tmp_path / "oasst.jsonl"
    result = CliRunner().invoke(
        data_app,
        [
            "convert",
            "oasst",
            "--input",
            str(shared("chat/oasst_en_100_trees.jsonl")),
            "--output",
            str(out),
            "--split",
            "0.95",
            "--seed",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["trees"] == 100 and summary["threads"] == 626
    assert len((tmp_path / "oasst_train.jsonl").read_text().splitlines()) == summary["by_split"]["train"]
    assert len((tmp_path / "oasst_val.jsonl").read_text().splitlines()) == summary["by_split"]["validation"]


@pytest.mark.slow
def test_t0_packs_at_least_97_percent_full_at_4096(tmp_path: Path, gpt2_tok: Any) -> None:
    config = SFTConfig.model_validate(
        {
            "output_dir": str(tmp_path),
            "model": {
                "source": "random",
                "architecture": {"max_position_embeddings": 4096},
                "tokenizer": {"type": "byte"},
            },
            "data": {
                "train_file": str(shared("instruct/t0_prompt_completion_55k.jsonl.gz")),
                "prompt_template": "{prompt}{completion}",
                "label_key": "completion",
                "truncation_field": "prompt",
                "max_seq_length": 4096,
                "packing": True,
            },
        }
    )
    stats = build_datasets(config, gpt2_tok).stats
    assert stats["examples"] == 55185 and stats["fill_ratio"] >= 0.97


@pytest.mark.parametrize("chat_format", ["nemo_chat", "hf_chat"])
def test_chat_formats_pack_with_boundaries(tmp_path: Path, gpt2_tok: Any, chat_format: str) -> None:
    from sft_trainer.data.converters import convert_oasst
    from sft_trainer.data.jsonl import write_jsonl

    groups, _ = convert_oasst(str(shared("chat/oasst_en_100_trees.jsonl")))
    rows: list[dict[str, Any]] = groups["all"][:60]
    knobs: dict[str, Any] = {}
    if chat_format == "hf_chat":
        role = {"User": "user", "Assistant": "assistant"}
        rows = [
            {"messages": [{"role": role[t["from"]], "content": t["value"]} for t in r["conversations"]]} for r in rows
        ]
        knobs["chat_template"] = str(shared("chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja"))
    path = tmp_path / "chat.jsonl"
    write_jsonl(path, rows)
    config = run_config(tmp_path, train_file=str(path), format=chat_format, packing=True, max_seq_length=2048, **knobs)
    splits = build_datasets(config, gpt2_tok)
    examples = splits.stats["examples"]
    assert examples + splits.stats["dropped"] == 60 and splits.stats["packed_sequences"] < examples
    row = max(splits.train, key=lambda sample: len(sample.seq_lens))
    assert len(row.seq_lens) > 1 and int(row.seq_lens.sum()) == len(row.input_ids) <= 2048
    ends = np.cumsum(row.seq_lens) - 1
    assert (row.labels[ends] == IGNORE_INDEX).all()
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert (row.position_ids[starts] == 0).all()
    assert int(splits.train.loss_tokens.sum()) == splits.stats["answer_tokens"] > 0


def test_prompt_for_generation_in_every_format(gpt2_tok: Any) -> None:
    from sft_trainer.config import DataConfig

    plain = DataConfig(train_file="x.jsonl", prompt_template="Q: {question}\nA: {answer}", label_key="answer")
    assert prompt_for_generation(plain, "2+2?") == "Q: 2+2?\nA:"
    nemo = DataConfig(train_file="x.jsonl", format="nemo_chat")
    assert prompt_for_generation(nemo, "hi", system="S") == "\x00System\nS\n\x11User\nhi\n\x11Assistant\n"
    template = str(shared("chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja"))
    chat = DataConfig(train_file="x.jsonl", format="hf_chat", chat_template=template)
    assert prompt_for_generation(chat, "hi", tokenizer=gpt2_tok, system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="tokenizer"):
        prompt_for_generation(chat, "hi")


def test_total_loss_tokens_reads_the_arrays(tmp_path: Path, byte_tok: Any) -> None:
    from sft_trainer.data import total_loss_tokens

    config = run_config(tmp_path, synthetic={"train_examples": 50, "validation_examples": 5})
    train = build_datasets(config, byte_tok).train
    indices = [3, 7, 11]
    assert total_loss_tokens(train, indices) == sum(train[i].num_loss_tokens for i in indices)


def test_the_package_imports_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, sft_trainer.data; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_bad_template_fails_at_config_load(tmp_path: Path) -> None:
    from sft_trainer.config import ConfigError, load_config

    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {source: random, architecture: {}, tokenizer: {type: byte}}\n"
        "data:\n  train_file: x.jsonl\n  prompt_template: '{output} after {input}'\n"
    )
    with pytest.raises(
        ConfigError, match=r"prompt_template: the label placeholder \{output\} must come last"
    ) as caught:
        load_config(config)
    assert caught.value.problems[0].source == f"{config}:4"  # the prompt_template line
    assert caught.value.problems[0].key == "data.prompt_template"


def test_written_jsonl_is_readable_by_other_users_as_open_would_make_it(tmp_path: Path) -> None:
    """Converted data is read by trainer pods of another uid (1000): not mkstemp's private 0600."""
    previous = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "rows.jsonl", [{"a": "b"}])
    finally:
        os.umask(previous)
    assert (tmp_path / "rows.jsonl").stat().st_mode & 0o777 == 0o644
