"""Weights & Biases logging (logging.wandb); `mode: offline` writes under output_dir/wandb, no network."""

from pathlib import Path
from typing import Any

from sft_trainer.config.schema import SFTConfig
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport


class WandbReporter:
    """A W&B run (named `logging.wandb.name`, else the config's `name`), holding the same series as metrics.jsonl."""

    def __init__(self, config: SFTConfig, output_dir: Path) -> None:
        import wandb

        assert config.logging.wandb is not None
        output_dir.mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=config.logging.wandb.project,
            name=config.logging.wandb.name or config.name,
            tags=config.logging.wandb.tags or None,
            mode=config.logging.wandb.mode,
            dir=str(output_dir),
            config=config.model_dump(mode="json"),
        )

    def step(self, report: StepReport) -> None:
        """One step's scalars."""
        self.run.log(
            {
                "train/loss": report.loss,
                "train/lr": report.lr,
                "train/grad_norm": report.grad_norm,
                "train/tokens_per_s": report.tokens_per_s,
            },
            step=report.step,
        )

    def validation(self, report: ValidationReport) -> None:
        """The validation loss."""
        self.run.log({"val/loss": report.val_loss}, step=report.step)

    def checkpoint(self, report: CheckpointReport) -> None:
        """Checkpoints stay on disk."""

    def finish(self, summary: RunSummary) -> None:
        """Close the run with its outcome."""
        self.run.summary["outcome"] = summary.outcome
        self.run.finish(exit_code=summary.exit_code)


def create_reporter(config: SFTConfig) -> WandbReporter | None:
    """A W&B run when `logging.wandb` is set."""
    if config.logging.wandb is None:
        return None
    return WandbReporter(config, Path(config.output_dir))
