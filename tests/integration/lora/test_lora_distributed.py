"""LoRA under DDP and FSDP2: two CPU processes (gloo) save, resume and export like one process does."""

import gc
import os
import socket
import threading
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.multiprocessing as mp
import tqdm

from sft_trainer import lora
from sft_trainer.distributed import DistributedEnv, barrier, destroy_process_group, init_process_group
from tests.integration.lora.test_lora_backend import CPU, VOCAB, config, micro_batches

DATA_PARALLEL = ("ddp", "fsdp2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _steps(b, seed: int) -> list[float]:  # type: ignore[no-untyped-def]
    losses = []
    for step in range(2):
        mine = micro_batches(seed + step, count=2)[b.env.rank :: 2]  # 2 micro-batches, one per rank
        tokens = sum(m.num_loss_tokens for m in micro_batches(seed + step, count=2))
        losses.append(b.train_step(mine, tokens, lr=1e-2).loss)
    return losses


def _save_resume_export(data_parallel: str, root: str, env: DistributedEnv) -> tuple[list[float], list[float]]:
    """One wrapper's round; its backends (and their DDP / FSDP communicators' users) die on return."""
    out = Path(root) / data_parallel
    run = config(out)
    run.parallelism.data_parallel = data_parallel  # type: ignore[assignment]
    first = backend_for(run, env)
    _steps(first, 0)
    first.save_checkpoint(out / "ckpt")
    expected = _steps(first, 10)
    resumed = backend_for(run, env)
    resumed.load_checkpoint(out / "ckpt")
    got = _steps(resumed, 10)
    resumed.export_hf(out / "final")
    return expected, got


def _worker(rank: int, port: int, root: str, queue: "mp.Queue[object]") -> None:
    """Both wrappers in one pair of processes (start-up is the slow part), then an orderly exit:
    every result flushed, every rank past the last collective before any leaves the group (rank 0
    hosts the store), the group destroyed, and no Python thread left beside the main one."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tqdm.tqdm.monitor_interval = 0  # no monitor thread behind the weight-loading progress bars
    env = DistributedEnv(rank=rank, world_size=2, local_rank=rank)
    init_process_group(env, CPU, timeout_seconds=60)
    try:
        for data_parallel in DATA_PARALLEL:
            expected, got = _save_resume_export(data_parallel, root, env)
            queue.put((data_parallel, rank, expected, got))
        gc.collect()
        barrier()
    finally:
        destroy_process_group()
        queue.close()
        queue.join_thread()  # the queue's feeder thread, which would otherwise outlive the worker
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    assert not alive, f"threads alive at exit: {alive}"


def backend_for(run, env):  # type: ignore[no-untyped-def]
    from sft_trainer.backends.torch_backend import TorchBackend
    from sft_trainer.models import load_model

    torch.manual_seed(0)  # the adapters' initial A (the loop seeds every rank alike before building)
    return TorchBackend(run, load_model(run.model, vocab_size=VOCAB, seed=run.trainer.seed), env, CPU)


@pytest.mark.slow
def test_two_ranks_save_resume_export(tmp_path: Path) -> None:
    queue: mp.Queue[object] = mp.get_context("spawn").Queue()
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), queue), nprocs=2, start_method="spawn", join=True)
    results: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for _ in range(2 * len(DATA_PARALLEL)):
        data_parallel, rank, losses, resumed = cast(tuple[str, int, list[float], list[float]], queue.get(timeout=10))
        results[data_parallel, rank] = (losses, resumed)
    for data_parallel in DATA_PARALLEL:
        (expected, got), (expected_1, _) = results[data_parallel, 0], results[data_parallel, 1]
        assert got == pytest.approx(expected, abs=1e-6), data_parallel  # resumed == uninterrupted
        assert expected == expected_1  # every rank reports the same global loss
        out = tmp_path / data_parallel
        assert (out / "ckpt" / lora.ADAPTER_SUBDIR / lora.ADAPTER_WEIGHTS).is_file()
        assert not (out / "ckpt" / "model").exists()
        assert torch.load(out / "ckpt" / "optimizer.pt", weights_only=True)["optimizer"]["state"]
        assert (out / "final" / "config.json").is_file()
        assert (out / "final" / lora.ADAPTER_SUBDIR / lora.ADAPTER_WEIGHTS).is_file()
    # both wrappers train the same adapters from the same start: the same losses
    assert results["ddp", 0][0] == pytest.approx(results["fsdp2", 0][0], abs=1e-5)
