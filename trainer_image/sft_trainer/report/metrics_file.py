"""`metrics.jsonl`: one JSON object a line, appended as the run goes.

Step lines: step, loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s. Validation lines: step,
val_loss. A resumed run first drops the lines past its checkpoint (`truncate_metrics`), so the
file reads as one uninterrupted run.
"""

import json
import os
from pathlib import Path
from typing import IO, Any

from sft_trainer.config.schema import SFTConfig
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport

METRICS_FILE = "metrics.jsonl"


def step_record(report: StepReport) -> dict[str, Any]:
    """The metrics.jsonl line of a step."""
    return {
        "step": report.step,
        "loss": report.loss,
        "lr": report.lr,
        "grad_norm": report.grad_norm,
        "tokens": report.tokens,
        "tokens_per_s": round(report.tokens_per_s, 3),
        "elapsed_s": round(report.elapsed_s, 3),
    }


def lines_up_to(lines: list[str], step: int) -> list[str]:
    """The lines of records with `step <= step` (malformed lines, e.g. a torn last line, are dropped)."""
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line.rstrip("\n"))
    return kept


def truncate_metrics(path: Path, step: int) -> None:
    """Rewrite `path` (atomically) without the records of steps after `step`."""
    if not path.is_file():
        return
    kept = lines_up_to(path.read_text(encoding="utf-8").splitlines(), step)
    staging = path.with_suffix(".jsonl.tmp")
    staging.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(staging, path)


class MetricsFile:
    """Appends step and validation records to a JSONL file, flushing every line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(self, report: StepReport) -> None:
        """One step line."""
        self._write(step_record(report))

    def validation(self, report: ValidationReport) -> None:
        """One validation line."""
        self._write({"step": report.step, "val_loss": report.val_loss})

    def checkpoint(self, report: CheckpointReport) -> None:
        """Checkpoints are not metrics."""

    def finish(self, summary: RunSummary) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def create_reporter(config: SFTConfig) -> MetricsFile:
    """`<output_dir>/metrics.jsonl`: every run writes it."""
    return MetricsFile(Path(config.output_dir) / METRICS_FILE)
