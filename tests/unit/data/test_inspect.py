"""`sft data inspect`: trained and untrained runs of an example, and the counts line."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from typer.testing import CliRunner

from sft_trainer.cli import app
from sft_trainer.data.dataset import shift_targets
from sft_trainer.data.inspect import bracketed, counts_line, runs, trained_flags


def test_runs_follow_the_shifted_labels(byte_tok: Any) -> None:
    ids = np.array(byte_tok.encode("2+2= 4", add_special_tokens=False), dtype=np.int32)
    targets = np.zeros(len(ids), dtype=bool)
    targets[4:] = True  # " 4"
    labels = shift_targets(ids, targets, np.array([0, len(ids)], dtype=np.int64))
    assert trained_flags(labels).tolist() == targets.tolist()
    example = runs(byte_tok, ids, labels)
    assert [(r.text, r.trained, r.tokens) for r in example] == [("2+2=", False, 4), (" 4", True, 2)]
    assert bracketed(example) == "2+2=[[ 4]]"


def test_counts_line_names_dropped_and_truncated() -> None:
    stats = {"examples": 3, "answer_tokens": 9, "dropped": 1, "truncated": 2, "bad_rows": 0, "file": "t.jsonl"}
    line = counts_line({**stats, "validation": {**stats, "dropped": 0, "file": "v.jsonl"}})
    assert line.startswith("train: 3 examples, 9 trained tokens (dropped 1, truncated 2, bad rows 0) from t.jsonl; ")
    assert "validation: 3 examples" in line


def test_sft_data_inspect_marks_the_answer_and_prints_counts(tmp_path: Path) -> None:
    rows = [{"input": "1+1=", "output": "2"}, {"input": "x" * 40, "output": "long"}, {"input": "a", "output": ""}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"source": "random", "tokenizer": {"type": "byte"}, "architecture": {"hidden_size": 16}},
        "data": {"train_file": str(tmp_path / "t.jsonl"), "max_seq_length": 16, "add_eos": False},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["data", "inspect", "--config", str(path), "-i", "0", "-i", "1", "--no-color"])
    assert result.exit_code == 0, result.output
    assert "train: 2 examples" in result.output and "(dropped 1, truncated 1, bad rows 0)" in result.output
    assert "1+1=[[ 2]]" in result.output
    assert "x" * 11 + "[[ long]]" in result.output  # 16 tokens: the input lost its end
    result = CliRunner().invoke(app, ["data", "inspect", "--config", str(path), "--color"])
    assert result.exit_code == 0 and "\x1b[1;32m 2" in result.output and "[[" not in result.output
    result = CliRunner().invoke(app, ["data", "inspect", "--config", str(path), "-i", "5"])
    assert result.exit_code == 11 and "has 2 examples" in result.output
