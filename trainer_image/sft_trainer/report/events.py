"""What leaves the training process: progress events and the final summary.

The loop emits these; every sink (progress bar, metrics.jsonl, TensorBoard, W&B, Prometheus,
the SFTJob status patch, the termination message) implements `Reporter`.
"""

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class StepReport:
    """One optimizer step."""

    step: int
    total_steps: int
    epoch: int
    consumed_samples: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int  # tokens processed in this step (all ranks, padding excluded)
    tokens_per_s: float
    elapsed_s: float
    eta_s: float | None
    data_wait_s: float  # time this step waited for input
    mfu: float | None = None


@dataclass(frozen=True)
class ValidationReport:
    """One validation pass."""

    step: int
    val_loss: float
    best_val_loss: float


@dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint was written."""

    step: int
    path: str
    seconds: float


@dataclass(frozen=True)
class RunSummary:
    """How the run ended. `exit_code` follows the documented codes in `sft_trainer.contract`."""

    outcome: Literal["succeeded", "failed", "interrupted"]
    step: int
    total_steps: int
    exit_code: int
    message: str
    last_loss: float | None = None
    best_val_loss: float | None = None
    final_model: str | None = None
    latest_checkpoint: str | None = None
    eval_metrics: dict[str, float] | None = None  # `evaluation` after training: eval_loss, eval_exact_match, ...


class Reporter(Protocol):
    """A sink for progress. Implementations must never raise into the training loop."""

    def step(self, report: StepReport) -> None: ...

    def validation(self, report: ValidationReport) -> None: ...

    def checkpoint(self, report: CheckpointReport) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...
