"""Process-group set-up and the few collectives the loop needs.

`torchrun` (or the operator's pod env) sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `sft train`
is a world of one and initialises no process group, unless the backend needs one (megatron's
parallel state does). Every backend joins through `init_process_group`, and `run.run_training`
leaves through `destroy_process_group` on every exit path.
"""

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: NCCL settings read when the process group is created: tear the process down on a failed collective
#: (`TORCH_NCCL_ASYNC_ERROR_HANDLING=3`), and wait 4 x 1 s, not PyTorch's default 4 x 15 s, for debug
#: dumps first (measured: a lost rank ended the survivor at timeout + 60 s with the default).
NCCL_FAIL_FAST_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_WAIT_TIMEOUT_DUMP_MILSEC": "1000"}


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits among the trainer processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_rank_zero(self) -> bool:
        """Rank 0 writes files and reports progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def env_from(environ: Mapping[str, str]) -> DistributedEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (all default to a world of one)."""
    return DistributedEnv(
        rank=int(environ.get("RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
    )


def current_env() -> DistributedEnv:
    """The process's own distributed environment."""
    return env_from(os.environ)


def pick_device(env: DistributedEnv) -> torch.device:
    """CUDA device `local_rank` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_process_group(
    env: DistributedEnv, device: torch.device, timeout_seconds: int, world_of_one: bool = False
) -> None:
    """Join the process group (nccl on CUDA, gloo on CPU) with a short collective timeout.

    A lost rank then fails every collective after `timeout_seconds`, and with `NCCL_FAIL_FAST_ENV`
    PyTorch's NCCL watchdog tears the process down instead of hanging. A world of one creates no
    group unless `world_of_one` (on a local address); joining twice is a no-op.
    """
    for name, value in NCCL_FAIL_FAST_ENV.items():  # before the process group reads them
        os.environ.setdefault(name, value)
    if dist.is_initialized() or not (env.is_distributed or world_of_one):
        return
    if not env.is_distributed:  # torchrun's variables, for code that reads them (megatron's helpers)
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + (os.getpid() % 1000)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_seconds),
        device_id=device if device.type == "cuda" else None,
    )


def destroy_process_group() -> None:
    """Leave the process group and every subgroup (megatron's too), if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over all processes (float64, so token counts stay exact)."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def any_process(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on any process (e.g. one rank received SIGTERM)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def barrier() -> None:
    """Wait for every process (no-op for a world of one)."""
    if dist.is_initialized():
        dist.barrier()
