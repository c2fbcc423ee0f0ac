"""The training loop: one for every backend.

The loop decides everything that does not depend on how the model is spread over devices: which
rows form each global batch (a deterministic reshuffle per epoch), how many loss tokens the
global batch holds (read from the dataset, no communication), the learning rate, validation and
checkpoint cadence, resume, non-finite losses, SIGTERM, and reporting. The backend does the math.
"""

import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from sft_trainer import checkpoint as ckpt
from sft_trainer.backends.base import Backend
from sft_trainer.config.schema import SFTConfig
from sft_trainer.contract import ExitCode
from sft_trainer.data.types import MicroBatch, Sample
from sft_trainer.distributed import DistributedEnv, all_reduce_sum, any_process, barrier
from sft_trainer.failures import NonFiniteLossError
from sft_trainer.flops import effective_sequence_length, flops_per_token, mfu, peak_tflops
from sft_trainer.plan import (
    Rows,
    chunks,
    epoch_order,
    fault_signal,
    is_due,
    next_batch_position,
    rank_slice,
    steps_per_epoch,
    total_steps,
    validation_rows,
)
from sft_trainer.report import METRICS_FILE, CheckpointReport, FanOut, RunSummary, StepReport, ValidationReport
from sft_trainer.report.metrics_file import truncate_metrics
from sft_trainer.schedule import learning_rate

log = logging.getLogger(__name__)


class TrainDataset(Protocol):
    """What the loop needs from a dataset: indexable Samples plus per-row token counts."""

    loss_tokens: npt.NDArray[Any]  # [N] loss-carrying tokens of each row
    lengths: npt.NDArray[Any]  # [N] tokens of each row, padding excluded

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class Collate(Protocol):
    """`sft_trainer.data.collate`."""

    def __call__(self, samples: list[Sample], pad_id: int) -> MicroBatch: ...


def summed_loss(
    backend: Backend,
    dataset: Sequence[Sample],
    count: int,
    micro_batch_size: int,
    collate: Collate,
    pad_id: int,
    device: torch.device,
) -> tuple[float, int]:
    """(summed token loss, loss tokens) over the first `count` rows, over all ranks; no gradients.

    Validation in the loop and `sft eval` both use it, so they report the same number for a file.
    """
    rows = np.arange(count, dtype=np.int64)
    mine = rows[backend.data_parallel_rank :: backend.data_parallel_size]
    loss_sum, tokens = 0.0, 0
    for chunk in chunks(mine, micro_batch_size):
        result = backend.eval_step(collate([dataset[int(i)] for i in chunk], pad_id))
        loss_sum += result.loss_sum
        tokens += result.loss_tokens
    total_loss, total_tokens = all_reduce_sum([loss_sum, float(tokens)], device)
    return total_loss, int(total_tokens)


@dataclass(frozen=True)
class LoopState:
    """Everything that advances step by step (what meta.json stores)."""

    step: int = 0
    consumed_samples: int = 0
    position: ckpt.DataPosition = field(default_factory=ckpt.DataPosition)
    last_val_loss: float | None = None
    last_val_step: int | None = None
    best_val_loss: float | None = None
    elapsed_s: float = 0.0
    last_lr: float = 0.0


class _StopFlag:
    """Set by SIGTERM; the loop finishes the current step, saves, and exits."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        log.warning("received signal %d: finishing this step, then checkpointing", signum)


# ---------------------------------------------------------------------------- the loop


class Trainer:
    """Drives a backend over a training set; `run()` returns how it ended."""

    def __init__(
        self,
        config: SFTConfig,
        env: DistributedEnv,
        backend: Backend,
        train: TrainDataset,
        validation: Sequence[Sample] | None,
        collate: Collate,
        pad_id: int,
        reporters: FanOut,
        device: torch.device,
    ) -> None:
        self.config = config
        self.env = env
        self.backend = backend
        self.train = train
        self.validation = validation if validation is not None else []
        self.collate = collate
        self.pad_id = pad_id
        self.reporters = reporters
        self.device = device
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / ckpt.CHECKPOINTS_DIR
        t = config.trainer
        self.per_epoch = steps_per_epoch(len(train), t.global_batch_size)
        if self.per_epoch == 0:
            from sft_trainer.data.errors import DataError

            raise DataError(
                f"the training set has {len(train)} rows, fewer than trainer.global_batch_size={t.global_batch_size}"
            )
        self.total_steps = total_steps(t, self.per_epoch)
        self.stop = _StopFlag()
        self.last_loss: float | None = None
        self.last_grad_norm: float | None = None
        self.config_hash = ckpt.config_hash(config)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.peak_tflops = peak_tflops(device_name, config.logging.peak_tflops_per_device)

    def _mfu(self, rows: Rows, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation of this step, or None when the device's peak is unknown."""
        if self.peak_tflops is None:
            return None
        sequence = effective_sequence_length([int(length) for length in self.train.lengths[rows]])
        per_token = flops_per_token(self.backend.model_config, sequence)
        return mfu(tokens_per_s, per_token, self.peak_tflops, self.env.world_size)

    # -- data

    def _rows_of_step(self, position: ckpt.DataPosition) -> Rows:
        order = epoch_order(len(self.train), self.config.data.seed, position.epoch, self.config.data.shuffle)
        return order[position.offset : position.offset + self.config.trainer.global_batch_size]

    def _micro_batches(self, rows: Rows) -> list[MicroBatch]:
        mine = rank_slice(rows, self.backend.data_parallel_rank, self.backend.data_parallel_size)
        return [
            self.collate([self.train[int(i)] for i in chunk], self.pad_id)
            for chunk in chunks(mine, self.config.trainer.micro_batch_size)
        ]

    # -- resume / save

    def resume(self) -> LoopState:
        """Load the checkpoint `checkpoint.resume` points at (if any) and return its state."""
        path = ckpt.find_resume(self.output_dir, self.config.checkpoint.resume)
        if path is None and ckpt.list_checkpoints(self.checkpoint_root):
            log.warning("checkpoint.resume=never: starting fresh beside the checkpoints in %s", self.checkpoint_root)
        if path is None:
            if self.env.is_rank_zero:
                truncate_metrics(self.output_dir / METRICS_FILE, 0)
            return LoopState()
        meta = ckpt.read_meta(path)
        if meta.config_hash != self.config_hash:
            log.warning("resuming from %s, written with a different configuration", path)
        self.backend.load_checkpoint(path)
        ckpt.restore_rng(meta.rng)
        if self.env.is_rank_zero:
            truncate_metrics(self.output_dir / METRICS_FILE, meta.step)
            log.info("resumed from %s at step %d", path, meta.step)
        return LoopState(
            step=meta.step,
            consumed_samples=meta.consumed_samples,
            position=meta.data_position,
            last_val_loss=meta.val_loss,
            last_val_step=meta.step if meta.val_loss is not None else None,
            best_val_loss=meta.best_val_loss,
            elapsed_s=meta.elapsed_s,
            last_lr=meta.lr,
        )

    def save(self, state: LoopState) -> Path:
        """Write checkpoint `state.step` atomically, then apply retention (rank 0 touches the files).

        A backend that saves in the background (`Backend.save_checkpoint_async`) publishes the
        checkpoint (meta.json, rename into place, retention) only once every rank has written it,
        from `finish_saves`; until then the previous checkpoint is the newest, so a crash mid-save
        loses nothing that was published. Returns where the checkpoint is (or will be) published.
        """
        self.finish_saves(blocking=True)  # one save in flight: retention must not meet a live staging dir
        started = time.perf_counter()
        staging = ckpt.staging_dir(self.checkpoint_root, state.step)
        if self.env.is_rank_zero:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        barrier()
        meta = self._checkpoint_meta(state) if self.env.is_rank_zero else None  # RNG and step as of now
        self.backend.save_checkpoint_async(staging, partial(self._publish, staging, meta, started))
        return self.checkpoint_root / f"step-{state.step}"

    def finish_saves(self, blocking: bool) -> None:
        """Publish the background saves that every rank has finished (all of them when `blocking`); every rank calls it."""
        self.backend.finalize_saves(blocking=blocking)

    def _checkpoint_meta(self, state: LoopState) -> ckpt.CheckpointMeta:
        return ckpt.CheckpointMeta(
            step=state.step,
            consumed_samples=state.consumed_samples,
            data_position=state.position,
            total_steps=self.total_steps,
            lr=state.last_lr,
            val_loss=state.last_val_loss if state.last_val_step == state.step else None,
            best_val_loss=state.best_val_loss,
            elapsed_s=state.elapsed_s,
            config_hash=self.config_hash,
            rng=ckpt.capture_rng(),
            metrics=self._logged_metrics(state),
        )

    def _logged_metrics(self, state: LoopState) -> dict[str, float]:
        """What was logged at this step (the values `checkpoint.monitor` can rank by)."""
        metrics = {"loss": self.last_loss, "grad_norm": self.last_grad_norm}
        if state.last_val_step == state.step and state.last_val_loss is not None:
            metrics["val_loss"] = state.last_val_loss
            metrics["val_perplexity"] = math.exp(min(state.last_val_loss, 700.0))
        return {name: float(value) for name, value in metrics.items() if value is not None and math.isfinite(value)}

    def _publish(self, staging: Path, meta: ckpt.CheckpointMeta | None, started: float) -> None:
        """Rank 0: meta.json, atomic rename to `step-<N>`, `last`, retention, report (no-op elsewhere)."""
        if meta is None:
            return
        final = ckpt.publish(self.checkpoint_root, staging, meta, self.config.checkpoint.save_last)
        checkpoint = self.config.checkpoint
        ckpt.apply_retention(self.checkpoint_root, checkpoint.save_top_k, checkpoint.metric, checkpoint.mode)
        self.reporters.checkpoint(CheckpointReport(meta.step, str(final), time.perf_counter() - started))

    # -- validation

    def validate(self) -> float | None:
        """Token-weighted mean loss over `limit_val_batches` validation batches (None: no validation)."""
        t = self.config.trainer
        count = validation_rows(len(self.validation), t.global_batch_size, t.limit_val_batches)
        if count == 0:
            return None
        loss_sum, tokens = summed_loss(
            self.backend, self.validation, count, t.micro_batch_size, self.collate, self.pad_id, self.device
        )
        return loss_sum / tokens if tokens else None

    # -- run

    def run(self, state: LoopState) -> RunSummary:
        """Train from `state` to the last step; returns the summary (also sent to the reporters)."""
        previous = signal.signal(signal.SIGTERM, self.stop)
        try:
            return self._run(state)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self, state: LoopState) -> RunSummary:
        t = self.config.trainer
        started = time.perf_counter() - state.elapsed_s
        step_seconds: float | None = None
        saved_step = state.step if state.step else -1
        while state.step < self.total_steps:
            step_started = time.perf_counter()
            position = next_batch_position(state.position, len(self.train), t.global_batch_size)
            rows = self._rows_of_step(position)
            global_loss_tokens = int(self.train.loss_tokens[rows].sum())
            tokens = int(self.train.lengths[rows].sum())
            micro_batches = self._micro_batches(rows)
            data_wait = time.perf_counter() - step_started
            lr = learning_rate(state.step, self.config.optim, self.total_steps)
            result = self.backend.train_step(micro_batches, global_loss_tokens, lr)
            if result.skipped or not math.isfinite(result.loss):
                path = self.save(state) if saved_step != state.step else self.checkpoint_root / f"step-{state.step}"
                self.finish_saves(blocking=True)
                raise NonFiniteLossError(
                    f"non-finite loss ({result.loss}) or gradient norm ({result.grad_norm}) at step "
                    f"{state.step + 1}; the last good state is checkpointed at {path}"
                )
            seconds = time.perf_counter() - step_started
            self.last_loss, self.last_grad_norm = result.loss, result.grad_norm
            step_seconds = seconds if step_seconds is None else 0.9 * step_seconds + 0.1 * seconds
            state = replace(
                state,
                step=state.step + 1,
                consumed_samples=state.consumed_samples + len(rows),
                position=ckpt.DataPosition(position.epoch, position.offset + len(rows)),
                elapsed_s=time.perf_counter() - started,
                last_lr=lr,
            )
            tokens_per_s = tokens / seconds if seconds > 0 else 0.0
            self.reporters.step(
                StepReport(
                    step=state.step,
                    total_steps=self.total_steps,
                    epoch=position.epoch,
                    consumed_samples=state.consumed_samples,
                    loss=result.loss,
                    lr=lr,
                    grad_norm=result.grad_norm,
                    tokens=tokens,
                    tokens_per_s=tokens_per_s,
                    elapsed_s=state.elapsed_s,
                    eta_s=step_seconds * (self.total_steps - state.step),
                    data_wait_s=data_wait,
                    mfu=self._mfu(rows, tokens_per_s),
                )
            )
            injected = fault_signal(state.step, dict(os.environ))
            if injected is not None:
                os.kill(os.getpid(), injected)
            if is_due(state.step, t.val_check_interval, self.total_steps):
                state = self._validation(state)
            if is_due(state.step, t.save_interval, self.total_steps):
                self.save(state)
                saved_step = state.step
            self.finish_saves(blocking=False)
            if any_process(self.stop.requested, self.device):
                if saved_step != state.step:
                    self.save(state)
                self.finish_saves(blocking=True)
                return self._finish(state, "interrupted", ExitCode.INTERRUPTED, "stopped by SIGTERM; checkpoint saved")
        self.finish_saves(blocking=True)
        return self._finish(state, "succeeded", ExitCode.OK, "training complete")

    def _validation(self, state: LoopState) -> LoopState:
        val_loss = self.validate()
        if val_loss is None:
            return state
        best = val_loss if state.best_val_loss is None else min(val_loss, state.best_val_loss)
        self.reporters.validation(ValidationReport(step=state.step, val_loss=val_loss, best_val_loss=best))
        return replace(state, last_val_loss=val_loss, last_val_step=state.step, best_val_loss=best)

    def _finish(self, state: LoopState, outcome: Any, code: ExitCode, message: str) -> RunSummary:
        latest = ckpt.list_checkpoints(self.checkpoint_root)
        return RunSummary(
            outcome=outcome,
            step=state.step,
            total_steps=self.total_steps,
            exit_code=int(code),
            message=message,
            best_val_loss=state.best_val_loss,
            latest_checkpoint=str(latest[-1].path) if latest else None,
        )
