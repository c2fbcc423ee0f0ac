"""TensorBoard scalars through `torch.utils.tensorboard` (logging.tensorboard=true)."""

from pathlib import Path

from sft_trainer.config.schema import SFTConfig
from sft_trainer.report.events import CheckpointReport, RunSummary, StepReport, ValidationReport


class TensorBoardReporter:
    """Writes train/loss, train/lr, train/grad_norm, train/tokens_per_s and val/loss."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def step(self, report: StepReport) -> None:
        """Scalars of one step."""
        for name, value in (
            ("train/loss", report.loss),
            ("train/lr", report.lr),
            ("train/grad_norm", report.grad_norm),
            ("train/tokens_per_s", report.tokens_per_s),
        ):
            self.writer.add_scalar(name, value, report.step)

    def validation(self, report: ValidationReport) -> None:
        """The validation loss."""
        self.writer.add_scalar("val/loss", report.val_loss, report.step)

    def checkpoint(self, report: CheckpointReport) -> None:
        """Nothing to plot."""

    def finish(self, summary: RunSummary) -> None:
        """Flush and close the event file."""
        self.writer.close()


def create_reporter(config: SFTConfig) -> TensorBoardReporter | None:
    """`<output_dir>/tensorboard` when `logging.tensorboard` is on."""
    if not config.logging.tensorboard:
        return None
    return TensorBoardReporter(Path(config.output_dir) / "tensorboard")
