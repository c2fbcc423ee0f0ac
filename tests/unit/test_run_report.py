"""`sft report`: metrics.jsonl to curves, summary and a PNG."""

import json
from pathlib import Path

import pytest

from sft_trainer.run_report import curves, read_metrics, report, summary


def _write_run(run_dir: Path) -> None:
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3, "tokens_per_s": 1000.0 + s} for s in range(1, 11)]
    rows.insert(5, {"step": 5, "val_loss": 2.6})
    rows.append({"step": 10, "val_loss": 2.2})
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_writes_a_png_and_summarises(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run)
    png, text = report(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps: 10" in text
    assert "loss: 2.9000 -> 2.0000" in text
    assert "best 2.2000 at step 10" in text


def test_resumed_steps_keep_the_last_value() -> None:
    rows = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "loss": 3.5}]
    assert curves(rows).loss == [(1, 5.0), (2, 3.5)]
    assert summary(curves([])) == "no training steps recorded"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(path)
