"""What the training loop needs from a backend (torch or megatron).

The loop owns everything backend-agnostic: which rows form each global batch, the learning-rate
schedule, the global count of loss tokens, validation cadence, checkpoint metadata, resume and
reporting. A backend owns the model, the optimizer and how micro-batches are spread over devices.

Loss normalisation: `train_step` receives the number of loss tokens in the *whole global batch*
(all data-parallel ranks, all micro-batches). Each micro-batch contributes
`sum(token losses) / global_loss_tokens` to the gradient, so the step's gradient and its reported
loss do not depend on the micro-batch size or the number of ranks.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sft_trainer.data.types import MicroBatch


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step produced (identical on every rank)."""

    loss: float  # token-weighted mean loss over the global batch
    grad_norm: float  # global gradient norm before clipping
    skipped: bool = False  # true when the loss or gradient was not finite (the step was not applied)


@dataclass(frozen=True)
class EvalResult:
    """Summed validation loss; the loop reduces over batches and ranks, then divides."""

    loss_sum: float
    loss_tokens: int


class Backend(Protocol):
    """A model + optimizer that trains on micro-batches. Built by `backends.create_backend`."""

    @property
    def model_config(self) -> Any:
        """The Hugging Face config of the model being trained (its architecture, for FLOP counting)."""
        ...

    @property
    def data_parallel_rank(self) -> int:
        """This process's data-parallel rank (which rows it reads)."""
        ...

    @property
    def data_parallel_size(self) -> int:
        """Number of data-parallel replicas."""
        ...

    def train_step(self, micro_batches: list[MicroBatch], global_loss_tokens: int, lr: float) -> StepResult:
        """Forward/backward over this rank's micro-batches, clip, and apply one optimizer step at `lr`."""
        ...

    def eval_step(self, micro_batch: MicroBatch) -> EvalResult:
        """Loss over one micro-batch, no gradients (summed over this rank's tokens only)."""
        ...

    def save_checkpoint(self, directory: Path) -> None:
        """Write model and optimizer state under `directory` (the loop makes it atomic)."""
        ...

    def load_checkpoint(self, directory: Path) -> None:
        """Restore what `save_checkpoint` wrote."""
        ...

    def export_hf(self, directory: Path) -> None:
        """Write the model as a Hugging Face directory (config.json + safetensors); rank 0 writes."""
        ...
