"""Progress a person can watch: a rich progress bar on a terminal, plain log lines otherwise."""

import sys
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from sft_trainer.config.schema import SFTConfig
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport


def format_duration(seconds: float | None) -> str:
    """`1h02m03s` / `2m03s` / `3s`; `?` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def step_line(report: StepReport, val_loss: float | None) -> str:
    """One plain progress line."""
    val = f" val_loss {val_loss:.4f}" if val_loss is not None else ""
    return (
        f"step {report.step}/{report.total_steps} epoch {report.epoch} loss {report.loss:.4f}{val} "
        f"lr {report.lr:.3g} grad_norm {report.grad_norm:.3f} tokens/s {report.tokens_per_s:.0f} "
        f"elapsed {format_duration(report.elapsed_s)} eta {format_duration(report.eta_s)}"
    )


class ConsoleReporter:
    """`bar`: a live rich bar (step, loss, val loss, tokens/s, ETA); `lines`: a line every N steps."""

    def __init__(self, mode: Literal["auto", "bar", "lines"], every_n_steps: int) -> None:
        # Messages carry user text (paths, exception strings such as gloo's "[/...]") that must print as is.
        self.console = Console(stderr=True, markup=False)
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.every = every_n_steps
        self.val_loss: float | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if use_bar:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                console=self.console,
            )

    def step(self, report: StepReport) -> None:
        """Advance the bar, or print a line every N steps (and on the last)."""
        if self.progress is not None:
            if self.task is None:
                self.progress.start()
                self.task = self.progress.add_task("train", total=report.total_steps, loss="-", val="-", tps="-")
            self.progress.update(
                self.task,
                completed=report.step,
                loss=f"{report.loss:.4f}",
                val=f"{self.val_loss:.4f}" if self.val_loss is not None else "-",
                tps=f"{report.tokens_per_s:.0f}",
            )
            if report.step == report.total_steps:
                self.progress.refresh()
        elif report.step % self.every == 0 or report.step == report.total_steps:
            self.console.print(step_line(report, self.val_loss), highlight=False, soft_wrap=True)

    def validation(self, report: ValidationReport) -> None:
        """Remember the val loss for the bar; print it."""
        self.val_loss = report.val_loss
        self.console.print(
            f"validation step {report.step}: val_loss {report.val_loss:.4f} (best {report.best_val_loss:.4f})",
            highlight=False,
            soft_wrap=True,
        )

    def checkpoint(self, report: CheckpointReport) -> None:
        """Say where the checkpoint went."""
        self.console.print(
            f"checkpoint step {report.step}: {report.path} ({report.seconds:.1f}s)", highlight=False, soft_wrap=True
        )

    def finish(self, summary: RunSummary) -> None:
        """Stop the bar and print the outcome."""
        if self.progress is not None:
            self.progress.stop()
        self.console.print(
            f"{summary.outcome}: step {summary.step}/{summary.total_steps} (exit code {summary.exit_code}) "
            f"{summary.message}",
            highlight=False,
            soft_wrap=True,
        )


def create_reporter(config: SFTConfig) -> ConsoleReporter | None:
    """Progress on stderr unless `logging.progress: none`."""
    if config.logging.progress == "none":
        return None
    return ConsoleReporter(config.logging.progress, config.trainer.log_every_n_steps)
