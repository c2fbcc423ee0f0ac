"""The training loop: one for every backend.

The loop decides everything that does not depend on how the model is spread over devices: which
rows form each global batch (a deterministic reshuffle per epoch), how many loss tokens the
global batch holds (read from the dataset, no communication), the learning rate, validation and
checkpoint cadence, resume, non-finite losses, SIGTERM, and reporting. The backend does the math.
"""

import gc
import json
import logging
import math
import os
import random
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
from sft_trainer.config.schema import SFTConfig, TrainerConfig
from sft_trainer.data.types import MicroBatch, Sample
from sft_trainer.distributed import DistributedEnv, all_reduce_sum, any_process, barrier
from sft_trainer.exit_codes import ExitCode
from sft_trainer.flops import effective_sequence_length, flops_per_token, mfu, peak_tflops
from sft_trainer.report import METRICS_FILE, CheckpointReport, FanOut, RunSummary, StepReport, ValidationReport
from sft_trainer.report.metrics_file import truncate_metrics
from sft_trainer.schedule import learning_rate

log = logging.getLogger(__name__)
Rows = npt.NDArray[np.int64]


class TrainDataset(Protocol):
    """What the loop needs from a dataset: indexable Samples plus per-row token counts."""

    loss_tokens: npt.NDArray[Any]  # [N] loss-carrying tokens of each row
    lengths: npt.NDArray[Any]  # [N] tokens of each row, padding excluded

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class Collate(Protocol):
    """`sft_trainer.data.collate`."""

    def __call__(self, samples: list[Sample], pad_id: int) -> MicroBatch: ...


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient) became NaN/inf; a checkpoint of the last good state was saved."""


# ---------------------------------------------------------------------------- pure planning


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


# ---------------------------------------------------------------------------- state


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (identically on every rank: the model starts identical)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- glue: one whole run

FINAL_DIR = "final"


def exit_code_for(error: BaseException) -> ExitCode:
    """The documented exit code of an exception that ended a run."""
    from sft_trainer.config import ConfigError
    from sft_trainer.data.errors import DataError
    from sft_trainer.models import ModelError
    from sft_trainer.tokenization import TokenizerError

    if isinstance(error, ConfigError):
        return ExitCode.CONFIG_ERROR
    if isinstance(error, DataError):
        return ExitCode.DATA_ERROR
    if isinstance(error, ModelError | TokenizerError):
        return ExitCode.MODEL_ERROR
    if isinstance(error, NonFiniteLossError):
        return ExitCode.NON_FINITE_LOSS
    if is_out_of_memory(error):
        return ExitCode.OUT_OF_MEMORY
    if is_lost_peer(error):
        return ExitCode.DISTRIBUTED_TIMEOUT
    return ExitCode.UNEXPECTED


# What a collective raises when a peer process is gone but PyTorch does not wrap it in a DistError
# (gloo's TCP pairs: RuntimeError "Connection closed by peer"; NCCL's watchdog and aborted communicators).
LOST_PEER_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)


# What a device OOM says when it is not raised by PyTorch's caching allocator (cuBLAS / cuDNN
# workspaces, Transformer Engine kernels, a plain cudaMalloc): a RuntimeError with CUDA's own words.
OUT_OF_MEMORY_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "cudaErrorMemoryAllocation",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(error: BaseException) -> bool:
    """A device OOM, raised by PyTorch or by a library beneath it, also when wrapped in another error."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:  # a hand-made cause cycle must not loop forever
        chain.append(current)
        current = current.__cause__ or current.__context__
    return any(
        isinstance(link, torch.OutOfMemoryError)
        or (isinstance(link, RuntimeError) and any(marker in str(link) for marker in OUT_OF_MEMORY_MARKERS))
        for link in chain
    )


def is_lost_peer(error: BaseException) -> bool:
    """A failed or timed-out collective: another rank vanished (transient: the whole group restarts)."""
    if isinstance(error, torch.distributed.DistError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in LOST_PEER_MARKERS)


def sft_metadata(config: SFTConfig, summary: RunSummary, data_stats: dict[str, Any]) -> dict[str, Any]:
    """`final/sft.json`: how to prompt the model (the data block) and what training did."""
    return {
        "format": config.data.format,
        "prompt_template": config.data.prompt_template,
        "chat_prompt_tokens": config.data.chat_prompt_tokens.model_dump(),
        "data": config.data.model_dump(mode="json"),
        "chat": data_stats.get("chat"),  # generation defaults: the system prompt and label training used most
        "training": {
            "name": config.name,
            "steps": summary.step,
            "total_steps": summary.total_steps,
            "last_loss": summary.last_loss,
            "best_val_loss": summary.best_val_loss,
            "global_batch_size": config.trainer.global_batch_size,
            "micro_batch_size": config.trainer.micro_batch_size,
            "lr": config.optim.lr,
            "precision": config.trainer.precision,
            "model_source": config.model.source,
            "model_path": config.model.path,
            "data_stats": data_stats,
        },
    }


def chat_template_for_export(config: SFTConfig, stats: dict[str, Any]) -> str | None:
    """The chat template `final/` carries so it stands alone: hf_chat's (from `data.chat_template` or the
    tokenizer), or a Jinja rendering of the NeMo chat format with the training defaults; None otherwise."""
    data = config.data
    if data.format == "hf_chat" and data.chat_template:
        return Path(data.chat_template).read_text(encoding="utf-8")
    if data.format == "nemo_chat":
        from sft_trainer.data.chat_context import ChatDefaults
        from sft_trainer.data.nemo_chat import nemo_chat_jinja

        return nemo_chat_jinja(data, ChatDefaults.from_stats(stats.get("chat")))
    return None


def export_final(
    backend: Backend, tokenizer: Any, config: SFTConfig, summary: RunSummary, env: DistributedEnv, stats: dict[str, Any]
) -> Path:
    """Write `final/`: Hugging Face weights + config, tokenizer files and sft.json (atomically)."""
    final = Path(config.output_dir) / FINAL_DIR
    staging = Path(config.output_dir) / f".{FINAL_DIR}.tmp"
    if env.is_rank_zero:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    backend.export_hf(staging)
    if env.is_rank_zero:
        template = chat_template_for_export(config, stats)
        if template is not None:
            tokenizer.chat_template = template
        tokenizer.save_pretrained(str(staging))
        metadata = sft_metadata(config, summary, stats)
        (staging / "sft.json").write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    barrier()
    return final


def run_training(config: SFTConfig, env: DistributedEnv) -> RunSummary:
    """A whole run in this process: set up, (demo accuracy), train, export, report. Never raises.

    Every ending becomes a `RunSummary` whose `exit_code` follows `sft_trainer.exit_codes`.
    """
    from sft_trainer.distributed import destroy_process_group, init_process_group, pick_device
    from sft_trainer.report import build_reporters

    device = pick_device(env)
    reporters = build_reporters(config, env.is_rank_zero)
    total = config.trainer.max_steps
    try:
        try:
            init_process_group(env, device, config.parallelism.distributed_timeout_seconds)
            summary = _train(config, env, device, reporters)
        except Exception as error:
            code = exit_code_for(error)
            if code == ExitCode.UNEXPECTED:
                log.exception("training failed")
            summary = RunSummary(outcome="failed", step=0, total_steps=total, exit_code=int(code), message=str(error))
            latest = ckpt.list_checkpoints(Path(config.output_dir) / ckpt.CHECKPOINTS_DIR)
            if latest:
                summary = replace(summary, step=latest[-1].step, latest_checkpoint=str(latest[-1].path))
        if config.evaluation is not None and summary.final_model and env.is_rank_zero:
            summary = evaluate_final(config, Path(summary.final_model), device, summary)  # the trained model is freed
        reporters.finish(summary)
    finally:  # also on KeyboardInterrupt / SystemExit: no communicator outlives the run
        destroy_process_group()
    return summary


def _train(config: SFTConfig, env: DistributedEnv, device: torch.device, reporters: FanOut) -> RunSummary:
    from sft_trainer.backends import create_backend
    from sft_trainer.data import build_datasets, collate
    from sft_trainer.demo import DemoAccuracy
    from sft_trainer.tokenization import load_tokenizer

    seed_everything(config.trainer.seed)
    tokenizer = load_tokenizer(config.model.tokenizer, config.model.path)
    if env.is_rank_zero:  # rank 0 fills the tokenized cache; the others read it
        splits = build_datasets(config, tokenizer)
    barrier()
    if not env.is_rank_zero:
        splits = build_datasets(config, tokenizer)
    if env.is_rank_zero:
        from sft_trainer.data.inspect import counts_line

        log.info("data: %s", counts_line(splits.stats))
    backend = create_backend(config, tokenizer, env, device)
    demo = DemoAccuracy(config, tokenizer) if config.data.synthetic is not None and env.is_rank_zero else None
    if demo is not None:
        demo.before()
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    trainer = Trainer(config, env, backend, splits.train, splits.validation, collate, pad_id, reporters, device)
    summary = trainer.run(trainer.resume())
    summary = replace(summary, last_loss=trainer.last_loss)
    if summary.exit_code != ExitCode.OK:
        return summary
    final = export_final(backend, tokenizer, config, summary, env, splits.stats)
    summary = replace(summary, final_model=str(final))
    if demo is not None:
        demo.after(final)
    return summary


def evaluate_final(config: SFTConfig, final: Path, device: torch.device, summary: RunSummary) -> RunSummary:
    """The `evaluation` step: `sft eval` of final/ into `<output_dir>/eval.json` and the summary's
    `eval_metrics`. A failing evaluation is logged; the trained model stays and the run succeeds."""
    from sft_trainer.data.build import data_files
    from sft_trainer.evaluate import EVAL_FILE, evaluate, status_metrics, write_result

    assert config.evaluation is not None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the training model and optimizer are gone; final/ is loaded afresh
    file = config.evaluation.file or data_files(config)[1]  # a synthetic task's held-out file too
    if file is None:
        log.error("evaluation: no evaluation.file and no validation file; skipped")
        return summary
    try:
        result = evaluate(final, file, config.evaluation, device=device)
        write_result(Path(config.output_dir) / EVAL_FILE, result)
    except Exception as error:
        log.exception("evaluation of %s on %s failed", final, file)
        return replace(summary, message=f"{summary.message}; evaluation failed: {error}")
    metrics = status_metrics(result)
    log.info("evaluation on %s: %s", file, ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
    return replace(summary, eval_metrics=metrics)
