"""The loop with a backend that saves in the background (megatron's async save, faked on CPU).

Contract: a checkpoint is published (meta.json + atomic rename) only when the backend finalises
the save on every rank; until then the previous checkpoint is the newest, so a crash mid-save
leaves it usable; one save is in flight at a time; the run ends with every save published.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft_trainer import checkpoint as ckpt
from sft_trainer.backends.base import Backend, EvalResult, StepResult
from sft_trainer.config import SFTConfig
from sft_trainer.data import collate
from sft_trainer.data.types import MicroBatch, Sample
from sft_trainer.distributed import DistributedEnv
from sft_trainer.loop import LoopState, Trainer
from sft_trainer.report import FanOut


class Rows:
    """A tiny training set: 64 rows of 4 tokens, 3 loss tokens each."""

    def __init__(self, count: int = 64) -> None:
        self.samples = [
            Sample(
                input_ids=np.arange(4, dtype=np.int32) + i,
                labels=np.asarray([-100, 1, 2, 3], dtype=np.int32),
                position_ids=np.arange(4, dtype=np.int32),
                seq_lens=np.asarray([4], dtype=np.int32),
            )
            for i in range(count)
        ]
        self.loss_tokens = np.full(count, 3)
        self.lengths = np.full(count, 4)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class AsyncFake(Backend):
    """A backend whose saves finish `lag` `finalize_saves` calls after they start (or when blocking)."""

    def __init__(self, lag: int = 2) -> None:
        self.lag = lag
        self.pending: list[tuple[int, Callable[[], None]]] = []
        self.steps = 0
        self.in_flight_max = 0

    model_config: Any = None
    data_parallel_rank = 0
    data_parallel_size = 1

    def train_step(self, micro_batches: list[MicroBatch], global_loss_tokens: int, lr: float) -> StepResult:
        self.steps += 1
        return StepResult(loss=1.0 / self.steps, grad_norm=1.0, skipped=False)

    def eval_step(self, micro_batch: MicroBatch) -> EvalResult:
        return EvalResult(loss_sum=0.0, loss_tokens=0)

    def save_checkpoint(self, directory: Path) -> None:
        raise AssertionError("the loop must use save_checkpoint_async")

    def save_checkpoint_async(self, directory: Path, finalize: Callable[[], None]) -> None:
        self.finalize_saves(blocking=True)
        (directory / "weights").write_text(str(self.steps))
        self.pending.append((self.lag, finalize))
        self.in_flight_max = max(self.in_flight_max, len(self.pending))

    def finalize_saves(self, blocking: bool = False) -> int:
        self.pending = [(calls - 1, fn) for calls, fn in self.pending]
        while self.pending and (blocking or self.pending[0][0] <= 0):
            self.pending.pop(0)[1]()
        return len(self.pending)

    def load_checkpoint(self, directory: Path) -> None:
        self.steps = int((directory / "weights").read_text())

    def export_hf(self, directory: Path) -> None:
        pass


class SyncFake(AsyncFake):
    """A backend without a background writer: the protocol's default `save_checkpoint_async` saves now."""

    save_checkpoint_async = Backend.save_checkpoint_async
    finalize_saves = Backend.finalize_saves

    def save_checkpoint(self, directory: Path) -> None:
        (directory / "weights").write_text(str(self.steps))


class Published:
    """A reporter that records every published checkpoint's step."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def checkpoint(self, report: Any) -> None:
        self.steps.append(report.step)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


def trainer(
    tmp_path: Path, backend: AsyncFake, reports: Published, max_steps: int = 6, save_interval: int = 2
) -> Trainer:
    config = SFTConfig.model_validate(
        {
            "output_dir": str(tmp_path),
            "model": {"source": "random", "tokenizer": {"type": "byte"}, "architecture": {"hidden_size": 32}},
            "data": {"synthetic": {}, "max_seq_length": 32},
            "trainer": {
                "max_steps": max_steps,
                "save_interval": save_interval,
                "val_check_interval": save_interval,
                "limit_val_batches": 0,
                "global_batch_size": 4,
                "micro_batch_size": 2,
                "precision": "fp32",
            },
            "checkpoint": {"save_top_k": 5},
        }
    )
    return Trainer(
        config,
        DistributedEnv(),
        backend,
        Rows(),
        None,
        collate,
        0,
        FanOut([reports]),
        torch.device("cpu"),
    )


def published(tmp_path: Path) -> list[int]:
    return [c.step for c in ckpt.list_checkpoints(tmp_path / ckpt.CHECKPOINTS_DIR)]


def test_async_saves_publish_only_when_finalised(tmp_path: Path) -> None:
    backend, reports = AsyncFake(lag=100), Published()  # never finishes on its own: only a blocking finalise
    run = trainer(tmp_path, backend, reports)
    run.save(LoopState(step=2))
    assert published(tmp_path) == [] and reports.steps == []  # written, not finalised: nothing to resume from
    assert ckpt.staging_dir(tmp_path / ckpt.CHECKPOINTS_DIR, 2).is_dir()
    run.save(LoopState(step=4))  # starting the next save first publishes the previous one
    assert published(tmp_path) == [2] and reports.steps == [2]
    # a crash now (step 4 in flight) leaves step 2 as the newest complete checkpoint
    assert ckpt.find_resume(tmp_path, "auto") == tmp_path / ckpt.CHECKPOINTS_DIR / "step-2"
    assert ckpt.staging_dir(tmp_path / ckpt.CHECKPOINTS_DIR, 4).is_dir()  # retention spared the live save
    run.finish_saves(blocking=True)
    assert published(tmp_path) == [4] and reports.steps == [2, 4]  # retention keeps the newest
    assert (tmp_path / ckpt.CHECKPOINTS_DIR / "step-4" / "weights").read_text() == "0"


def test_a_backend_without_async_saves_publishes_at_once(tmp_path: Path) -> None:
    backend, reports = SyncFake(), Published()
    run = trainer(tmp_path, backend, reports)
    run.save(LoopState(step=2))
    assert published(tmp_path) == [2] and reports.steps == [2]
    assert backend.finalize_saves(blocking=True) == 0


def test_run_overlaps_saves_and_ends_with_all_published(tmp_path: Path) -> None:
    backend, reports = AsyncFake(lag=2), Published()  # published one step after it starts
    summary = trainer(tmp_path, backend, reports).run(LoopState())
    assert summary.exit_code == 0
    assert reports.steps == [2, 4, 6] and published(tmp_path) == [6]
    assert backend.in_flight_max == 1 and backend.pending == []
    assert ckpt.read_meta(tmp_path / ckpt.CHECKPOINTS_DIR / "last").step == 6
    assert not list((tmp_path / ckpt.CHECKPOINTS_DIR).glob(".tmp-step-*"))


def test_a_vanished_peer_is_a_distributed_failure() -> None:
    from sft_trainer.contract import ExitCode
    from sft_trainer.failures import exit_code_for

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [::1]:1")
    assert exit_code_for(gloo) == ExitCode.DISTRIBUTED_TIMEOUT
    assert exit_code_for(torch.distributed.DistBackendError("NCCL error")) == ExitCode.DISTRIBUTED_TIMEOUT
    assert exit_code_for(RuntimeError("shape mismatch")) == ExitCode.UNEXPECTED


def test_a_device_oom_from_any_library_is_out_of_memory() -> None:
    from sft_trainer.contract import ExitCode
    from sft_trainer.failures import exit_code_for

    assert (
        exit_code_for(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        == ExitCode.OUT_OF_MEMORY
    )
    assert exit_code_for(RuntimeError("CUDA error: out of memory")) == ExitCode.OUT_OF_MEMORY
    assert exit_code_for(
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    ) == (ExitCode.OUT_OF_MEMORY)
    try:  # wrapped by a library that re-raises with its own message
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as oom:
            raise ValueError("forward failed") from oom
    except ValueError as wrapped:
        assert exit_code_for(wrapped) == ExitCode.OUT_OF_MEMORY
