"""Container entrypoint: start the trainer on this pod from the env the operator injects.

One process per node (world of 1) runs `sft train` directly; otherwise torchrun starts
`NPROC_PER_NODE` ranks with static rendezvous on MASTER_ADDR:MASTER_PORT. The operator restarts
the whole gang on any failure, so torchrun never restarts ranks itself. torchrun collapses every
child failure into exit code 1; this entrypoint instead exits with the first failing rank's own
code (see `sft_trainer.contract`), so the operator can tell permanent from transient failures.
"""

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """Where this pod sits in the job."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        """Total trainer processes across all pods."""
        return self.nnodes * self.nproc_per_node


def _int_env(env: Mapping[str, str], names: Sequence[str], default: int) -> int:
    for name in names:
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
        if value < 0:
            raise ValueError(f"environment variable {name}={raw!r} must not be negative")
        return value
    return default


def launch_from_env(env: Mapping[str, str]) -> Launch:
    """Read the operator's torch-distributed env (PET_* aliases as Kubeflow's PyTorchJob sets them)."""
    launch = Launch(
        nnodes=_int_env(env, ["NNODES", "PET_NNODES"], 1),
        node_rank=_int_env(env, ["NODE_RANK", "PET_NODE_RANK"], 0),
        nproc_per_node=_int_env(env, ["NPROC_PER_NODE", "PET_NPROC_PER_NODE"], 1),
        master_addr=env.get("MASTER_ADDR") or env.get("PET_MASTER_ADDR") or "127.0.0.1",
        master_port=_int_env(env, ["MASTER_PORT", "PET_MASTER_PORT"], DEFAULT_MASTER_PORT),
    )
    if launch.nnodes < 1 or launch.nproc_per_node < 1:
        raise ValueError("NNODES and NPROC_PER_NODE must be at least 1")
    if launch.node_rank >= launch.nnodes:
        raise ValueError(f"NODE_RANK={launch.node_rank} is not below NNODES={launch.nnodes}")
    return launch


def trainer_command(launch: Launch, train_args: Sequence[str]) -> list[str]:
    """The argv that starts training: plain `sft train ...` for one process, torchrun otherwise."""
    if launch.world_size == 1:
        return ["sft", "train", *train_args]
    return [
        "torchrun",
        f"--nnodes={launch.nnodes}",
        f"--node-rank={launch.node_rank}",
        f"--nproc-per-node={launch.nproc_per_node}",
        f"--master-addr={launch.master_addr}",
        f"--master-port={launch.master_port}",
        "--max-restarts=0",
        "--no-python",
        "sft",
        "train",
        *train_args,
    ]


def exit_code_of_failure(exitcode: int) -> int:
    """A child's exit status as a shell would report it: signals become 128 + signal number."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _run_torchrun(argv: list[str]) -> int:
    # Run torchrun in-process so the first failing rank's own exit code is visible.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        return exit_code_of_failure(failure.exitcode)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sft_trainer.entrypoint --config /etc/kube-sft/config.yaml [overrides...]`."""
    train_args = list(sys.argv[1:] if argv is None else argv)
    try:
        launch = launch_from_env(os.environ)
    except ValueError as error:
        print(f"kube-sft entrypoint: {error}", file=sys.stderr)
        return 10  # ExitCode.CONFIG_ERROR: a bad pod spec does not heal on retry
    command = trainer_command(launch, train_args)
    print(f"kube-sft entrypoint: node {launch.node_rank}/{launch.nnodes}: {' '.join(command)}", flush=True)
    if command[0] == "sft":
        os.execvp("sft", command)
    return _run_torchrun(command[1:])


if __name__ == "__main__":
    sys.exit(main())
