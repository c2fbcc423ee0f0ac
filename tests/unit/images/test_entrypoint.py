"""The container entrypoint's argument building (pure functions)."""

import pytest

from sft_trainer.entrypoint import Launch, exit_code_of_failure, launch_from_env, trainer_command


def test_single_process_runs_sft_directly() -> None:
    launch = launch_from_env({})
    assert launch == Launch(nnodes=1, node_rank=0, nproc_per_node=1, master_addr="127.0.0.1", master_port=29500)
    assert trainer_command(launch, ["--config", "c.yaml"]) == ["sft", "train", "--config", "c.yaml"]


def test_multi_node_uses_torchrun_with_static_rendezvous() -> None:
    env = {
        "NNODES": "2",
        "NODE_RANK": "1",
        "NPROC_PER_NODE": "8",
        "MASTER_ADDR": "job-node-0.job",
        "MASTER_PORT": "23456",
    }
    command = trainer_command(launch_from_env(env), ["--config", "c.yaml", "trainer.max_steps=5"])
    assert command == [
        "torchrun",
        "--nnodes=2",
        "--node-rank=1",
        "--nproc-per-node=8",
        "--master-addr=job-node-0.job",
        "--master-port=23456",
        "--max-restarts=0",
        "--no-python",
        "sft",
        "train",
        "--config",
        "c.yaml",
        "trainer.max_steps=5",
    ]


def test_pet_aliases_are_read_when_plain_names_are_absent() -> None:
    launch = launch_from_env({"PET_NNODES": "4", "PET_NODE_RANK": "3", "PET_NPROC_PER_NODE": "2"})
    assert (launch.nnodes, launch.node_rank, launch.nproc_per_node, launch.world_size) == (4, 3, 2, 8)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNODES": "two"}, "NNODES='two' is not an integer"),
        ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 is not below NNODES=2"),
        ({"NPROC_PER_NODE": "0"}, "at least 1"),
        ({"MASTER_PORT": "-1"}, "must not be negative"),
    ],
)
def test_bad_env_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch_from_env(env)


def test_signal_deaths_map_to_shell_codes() -> None:
    assert exit_code_of_failure(-9) == 137
    assert exit_code_of_failure(-15) == 143
    assert exit_code_of_failure(13) == 13
