"""`distributed.init_process_group`: the one way into the process group, for both backends."""

import os
import socket

import pytest
import torch
import torch.distributed as dist

from sft_trainer.distributed import NCCL_FAIL_FAST_ENV, DistributedEnv, destroy_process_group, init_process_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_world_of_one_joins_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NCCL_FAIL_FAST_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")  # restored afterwards: joining a world of one sets torchrun's variables
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    cpu = torch.device("cpu")
    init_process_group(DistributedEnv(), cpu, timeout_seconds=30)  # the torch backend: no group for one process
    assert not dist.is_initialized()
    assert all(os.environ[name] == value for name, value in NCCL_FAIL_FAST_ENV.items())  # set before any group
    try:
        init_process_group(DistributedEnv(), cpu, timeout_seconds=30, world_of_one=True)  # megatron's parallel state
        assert dist.is_initialized() and dist.get_world_size() == 1 and dist.get_backend() == "gloo"
        init_process_group(DistributedEnv(), cpu, timeout_seconds=30, world_of_one=True)  # joining twice: a no-op
    finally:
        destroy_process_group()
    assert not dist.is_initialized()
