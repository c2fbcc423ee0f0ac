"""`sft report RUN_DIR`: curves of a run from its metrics.jsonl, as a PNG plus a short summary."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunCurves:
    """The series a report draws, each a list of (step, value)."""

    loss: list[tuple[int, float]]
    val_loss: list[tuple[int, float]]
    lr: list[tuple[int, float]]
    tokens_per_s: list[tuple[int, float]]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a malformed line is an error naming the file and line."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON: {error.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(f"{path}:{number}: a metrics line must be an object with an integer 'step'")
            rows.append(row)
    return rows


def curves(rows: list[dict[str, Any]]) -> RunCurves:
    """Split metric rows into the series to plot (a resumed run's repeated steps keep the last value)."""

    def series(key: str) -> list[tuple[int, float]]:
        by_step = {row["step"]: float(row[key]) for row in rows if isinstance(row.get(key), int | float)}
        return sorted(by_step.items())

    return RunCurves(series("loss"), series("val_loss"), series("lr"), series("tokens_per_s"))


def summary(run_curves: RunCurves) -> str:
    """A few lines a person reads first: steps, first/last loss, best val loss, median throughput."""
    if not run_curves.loss:
        return "no training steps recorded"
    lines = [
        f"steps: {run_curves.loss[-1][0]}",
        f"loss: {run_curves.loss[0][1]:.4f} -> {run_curves.loss[-1][1]:.4f}",
    ]
    if run_curves.val_loss:
        best_step, best = min(run_curves.val_loss, key=lambda item: item[1])
        lines.append(f"val loss: best {best:.4f} at step {best_step}, last {run_curves.val_loss[-1][1]:.4f}")
    if run_curves.tokens_per_s:
        speeds = sorted(value for _, value in run_curves.tokens_per_s if math.isfinite(value))
        if speeds:
            lines.append(f"tokens/s: median {speeds[len(speeds) // 2]:,.0f}")
    return "\n".join(lines)


def render_png(run_curves: RunCurves, output: Path, title: str) -> None:
    """Draw loss + val loss, learning rate and throughput against step into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes, speed_axes) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    if run_curves.loss:
        loss_axes.plot(*zip(*run_curves.loss, strict=True), label="train loss", linewidth=1)
    if run_curves.val_loss:
        loss_axes.plot(*zip(*run_curves.val_loss, strict=True), "o-", label="val loss")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    loss_axes.grid(alpha=0.3)
    if run_curves.lr:
        lr_axes.plot(*zip(*run_curves.lr, strict=True), color="tab:green")
    lr_axes.set_ylabel("learning rate")
    lr_axes.grid(alpha=0.3)
    if run_curves.tokens_per_s:
        speed_axes.plot(*zip(*run_curves.tokens_per_s, strict=True), color="tab:red")
    speed_axes.set_ylabel("tokens/s")
    speed_axes.set_xlabel("step")
    speed_axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(output)


def report(run_dir: Path, output: Path | None = None) -> tuple[Path, str]:
    """Render `run_dir/metrics.jsonl` to `output` (default run_dir/report.png); return it and the summary."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no metrics.jsonl in this run directory")
    run_curves = curves(read_metrics(metrics))
    target = output or run_dir / "report.png"
    render_png(run_curves, target, title=run_dir.name)
    return target, summary(run_curves)
