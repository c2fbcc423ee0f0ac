"""The loop's pure planning: steps, the data order of each global batch, rank and micro-batch
shares, validation size and cadence, and the test-only fault injection. No I/O, no torch."""

import math
import signal

import numpy as np
import numpy.typing as npt

from sft_trainer import checkpoint as ckpt
from sft_trainer.config.schema import TrainerConfig

Rows = npt.NDArray[np.int64]


def steps_per_epoch(num_rows: int, global_batch_size: int) -> int:
    """Full global batches in one pass over the data (a partial last batch is dropped)."""
    return num_rows // global_batch_size


def total_steps(trainer: TrainerConfig, per_epoch: int) -> int:
    """`max_steps` whenever it is set (whatever `max_epochs` says), else `max_epochs` x steps per epoch."""
    if trainer.max_steps != -1:
        return trainer.max_steps
    return trainer.max_epochs * per_epoch


def epoch_order(num_rows: int, seed: int, epoch: int, shuffle: bool) -> Rows:
    """The row order of `epoch`: a permutation seeded by (seed, epoch), or 0..N-1 without shuffling."""
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_rows).astype(np.int64)


def next_batch_position(position: ckpt.DataPosition, num_rows: int, global_batch_size: int) -> ckpt.DataPosition:
    """Where the next global batch starts: here, or at the top of the next epoch if too few rows remain."""
    if position.offset + global_batch_size > num_rows:
        return ckpt.DataPosition(epoch=position.epoch + 1, offset=0)
    return position


def rank_slice(rows: Rows, rank: int, size: int) -> Rows:
    """This data-parallel rank's contiguous share of a global batch."""
    per_rank = len(rows) // size
    return rows[rank * per_rank : (rank + 1) * per_rank]


def chunks(rows: Rows, size: int) -> list[Rows]:
    """Consecutive pieces of at most `size` rows (micro-batches)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def validation_rows(num_rows: int, global_batch_size: int, limit: int | float) -> int:
    """How many validation rows one check reads.

    Validation batches hold `global_batch_size` rows (the last may be partial); `limit_val_batches`
    is a count of them (int) or a fraction of them (float, at least one batch); 0 disables.
    """
    batches = math.ceil(num_rows / global_batch_size)
    wanted = min(limit, batches) if isinstance(limit, int) else max(1, int(limit * batches))
    return min(num_rows, wanted * global_batch_size)


def fault_signal(step: int, environ: dict[str, str]) -> int | None:
    """Fault injection for tests: the signal to send ourselves after `step` (SFT_FAULT_AT_STEP=N,
    SFT_FAULT_SIGNAL=KILL|TERM|INT, default KILL), or None."""
    at = environ.get("SFT_FAULT_AT_STEP")
    if at is None or int(at) != step:
        return None
    return int(signal.Signals["SIG" + environ.get("SFT_FAULT_SIGNAL", "KILL").upper()])


def is_due(step: int, interval: int, last_step: int) -> bool:
    """Every `interval` steps and at the last step."""
    return step % interval == 0 or step == last_step
