"""What the training loop needs from a backend (torch or megatron).

The loop owns everything backend-agnostic: which rows form each global batch, the learning-rate
schedule, the global count of loss tokens, validation cadence, checkpoint metadata, resume and
reporting. A backend owns the model, the optimizer and how micro-batches are spread over devices.

Loss normalisation: `train_step` receives the number of loss tokens in the *whole global batch*
(all data-parallel ranks, all micro-batches). Each micro-batch contributes
`sum(token losses) / global_loss_tokens` to the gradient, so the step's gradient and its reported
loss do not depend on the micro-batch size or the number of ranks.

Optional abilities are methods of the protocol with a default (TorchTitan's checkpointer hooks):
a backend subclasses `Backend` and overrides the ones it has (`save_checkpoint_async` and
`finalize_saves` for background checkpoint writes); the loop calls them unconditionally.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sft_trainer.data.types import MicroBatch
from sft_trainer.distributed import barrier


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
    """A model + optimizer that trains on micro-batches. Built by `backends.create_backend`.

    Backends subclass it explicitly, so they inherit the defaults of the optional abilities.
    """

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

    # -- optional abilities (defaults: none) --------------------------------------------------

    def save_checkpoint_async(self, directory: Path, finalize: Callable[[], None]) -> None:
        """Write a checkpoint under `directory`; `finalize` (the loop's publication) runs on every rank
        once every rank has written it, from this call or a later `finalize_saves`.

        Default, no background writer: save now, finalize, and wait for every rank.
        """
        self.save_checkpoint(directory)
        finalize()
        barrier()

    def finalize_saves(self, blocking: bool = False) -> int:
        """Finalize the background saves every rank has finished (all of them when `blocking`); call on
        every rank. Returns how many are still in flight. Default: none ever are."""
        return 0
