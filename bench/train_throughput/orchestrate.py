"""Orchestration: the stages (name -> worker jobs), packing jobs onto the GPUs in waves, launching workers
(under torchrun when they need several GPUs), waiting for them, and collecting their result files."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.train_throughput.data import REPO, WORK


def worker_command(gpus: int, *worker_args: str) -> list[str]:
    """`python -m bench.bench_train worker ...`, under torchrun when `gpus` > 1."""
    if gpus == 1:
        return [sys.executable, "-m", "bench.bench_train", "worker", *worker_args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
        "-m", "bench.bench_train", "worker", *worker_args,
    ]  # fmt: skip


def launch(name: str, devices: str, args: list[str], gpus: int) -> tuple[str, subprocess.Popen[bytes]]:
    """Start one worker on `devices` (CUDA_VISIBLE_DEVICES); its log goes to WORK/<name>.log."""
    # TE's default (non-deterministic) attention backward. Under a caller's NVTE_ALLOW_NONDETERMINISTIC_ALGO=0
    # (the GPU parity tests set it) llama-8b-shaped runs died in cuDNN's fused attention backward asking
    # for 32 GiB at 4,096 tokens a micro-batch and 128 GiB at 8,192: a workspace quadratic in the row.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=devices, PYTHONUNBUFFERED="1", NVTE_ALLOW_NONDETERMINISTIC_ALGO="1")
    result = WORK / f"{name}.json"
    result.unlink(missing_ok=True)
    log = (WORK / f"{name}.log").open("wb")
    command = worker_command(gpus, *args, "--name", name, "--result", str(result))
    return name, subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: list[tuple[str, subprocess.Popen[bytes]]], timeout: float) -> None:
    """Wait for the stage's workers; kill (by pid) what outlives `timeout`."""
    deadline = time.monotonic() + timeout
    for name, proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[bench] {name}: timed out, killed", flush=True)
            proc.kill()
            proc.wait()
        if proc.returncode:
            tail = (WORK / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            print(f"[bench] {name}: exit {proc.returncode}\n  " + "\n  ".join(tail), flush=True)


Job = tuple[str, list[str], int]  # worker name, worker arguments, GPUs


OP_FUSER = '{"use_transformer_engine_op_fuser": true}'


def stage_plan(
    mbs_1b: str, steps: int, warmup: int, gpus: int, card_gib: float, mbs_8b: str = "1,2"
) -> dict[str, list[Job]]:
    """The stages: name -> jobs. Jobs of one stage run side by side on disjoint GPUs (see `waves`).

    llama-8b full fine-tuning runs on min(4, gpus) GPUs with TP=2 + sequence parallelism; on fewer
    than 4 cards of 80 GB its fp32 main grads do not fit beside a DP=1 optimizer, so it keeps them
    in bf16 there. On 4 cards of 120 GB or more it also runs as TP=1 x DP=4 (`s4dp`, `s5dp`).
    """
    small_cards = gpus < 4 and card_gib < 100
    dp_8b_fits = gpus >= 4 and card_gib >= 120
    common = ["--steps", str(steps), "--warmup", str(warmup)]
    ours_1b = ["ours", "--model", "llama-1b", "--rows-per-gpu", "16", "--mbs", mbs_1b, *common]
    trl = ["trl", "--model", "llama-1b", *common]
    n8 = min(4, gpus)
    ours_8b = ["ours", "--model", "llama-8b", "--tp", "2", "--sp", "--rows-per-gpu", "8", "--mbs", mbs_8b, *common]
    if small_cards:
        ours_8b.append("--bf16-grads")
    ours_8b_dp = ["ours", "--model", "llama-8b", "--rows-per-gpu", "8", "--mbs", mbs_8b, *common]
    ours_8b_half = ["ours", "--model", "llama-8b-half", "--rows-per-gpu", "8", "--mbs", mbs_8b, *common]
    # TRL's best: flex attention compiles in its first step (one static shape per batch size), so its window
    # is 2 warm-up + 6 measured steps
    trl_best = ["trl", "--model", "llama-1b", "--steps", str(min(steps, 6)), "--warmup", str(min(warmup, 2))]
    torch_1b = ["torch", "--model", "llama-1b", "--rows-per-gpu", "16", *common]
    return {
        "s1": [  # llama-1b on one GPU, 32k tokens a micro-batch: ours (megatron bf16 / FP8, torch) and TRL at its best
            ("ours-1b-1gpu", [*ours_1b, "--mbs", "8", "--profile"], 1),
            ("ours-1b-1gpu-opfuser", [*ours_1b, "--mbs", "8", "--overrides", OP_FUSER], 1),
            ("ours-1b-1gpu-fp8", [*ours_1b, "--mbs", "8", "--fp8", "hybrid"], 1),
            ("ours-1b-1gpu-fp8-delayed", [*ours_1b, "--mbs", "8", "--fp8", "hybrid", "--fp8-recipe", "delayed"], 1),
            ("torch-1b-1gpu-fsdp2", [*torch_1b, "--mbs", "8,16", "--data-parallel", "fsdp2"], 1),  # swept like the peer
            ("trl-best", [*trl_best, "--trl-mode", "best", "--batch", "8,16,32"], 1),
        ],
        "s1f": [  # the head before issue 18 (full logits + TE cross-entropy), at 16k and 32k tokens a micro-batch
            ("ours-1b-1gpu-fullhead", [*ours_1b, "--full-head"], 1),
        ],
        "s1r": [  # the peer's other configurations, references (padded: slowest; wrapped: crosses examples)
            ("trl-bfd", [*trl, "--trl-mode", "bfd", "--batch", "2"], 1),
            ("trl-wrapped", [*trl, "--trl-mode", "wrapped", "--batch", "8"], 1),
            ("trl-padded", [*trl, "--trl-mode", "padded", "--batch", "16"], 1),
        ],
        "s1t": [  # the torch backend on the GPU (Liger's kernels when installed): FSDP2 bf16 compute, autocast
            ("torch-1b-1gpu-fsdp2", [*torch_1b, "--mbs", "2,4,8", "--data-parallel", "fsdp2"], 1),
            ("torch-1b-1gpu-bf16", [*torch_1b, "--mbs", "4"], 1),
            ("torch-1b-1gpu-fp16", [*torch_1b, "--mbs", "2", "--precision", "fp16"], 1),  # + GradScaler
        ],
        "s1v": [  # megatron variants at 8 rows a micro-batch: TE's op fuser (fused MLP) with FP8, other FP8 recipes
            ("ours-1b-fp8-opfuser", [*ours_1b, "--mbs", "8", "--fp8", "hybrid", "--overrides", OP_FUSER], 1),
            ("ours-1b-fp8-blockwise", [*ours_1b, "--mbs", "8", "--fp8", "hybrid", "--fp8-recipe", "blockwise"], 1),
        ],
        "s1b": [
            ("ours-1b-1gpu-gaf", [*ours_1b, "--gaf"], 1),
            ("ours-1b-1gpu-fp8-gaf", [*ours_1b, "--gaf", "--fp8", "hybrid"], 1),
            ("lora-8b-1gpu", ["lora", "--model", "llama-8b", "--mbs", "2", "--rows-per-gpu", "8", *common], 1),
        ],
        "s2": [("ours-1b-dp2", [*ours_1b, "--profile"], 2)],
        "s3": [("ours-1b-dp4", [*ours_1b, "--profile"], 4)] if gpus >= 4 else [],
        "s4": [("ours-8b-tp2sp-bf16", [*ours_8b, "--profile"], n8)],
        "s5": [("ours-8b-tp2sp-fp8", [*ours_8b, "--fp8", "hybrid"], n8)],
        # TP=1 x DP=4 (141 GB cards): no TP collectives on the critical path (11% of the TP=2 step);
        # ~110 GB a GPU with the distributed optimizer sharding the fp32 state over 4
        "s4dp": [("ours-8b-dp4-bf16", [*ours_8b_dp, "--profile"], 4)] if dp_8b_fits else [],
        "s5dp": [("ours-8b-dp4-fp8", [*ours_8b_dp, "--fp8", "hybrid"], 4)] if dp_8b_fits else [],
        "s2x": [  # 1, 2 GPUs and the LoRA side by side (4-GPU hosts): scaling inside one call
            ("ours-1b-1gpu", ours_1b, 1),
            ("ours-1b-dp2", ours_1b, 2),
            ("lora-8b-1gpu", ["lora", "--model", "llama-8b", "--mbs", "2", "--rows-per-gpu", "8", *common], 1),
        ],
        "s7": [  # one GPU, TP=1, Llama-3-8B layers: bf16 vs FP8 without TP communication
            ("ours-8bhalf-1gpu-bf16", [*ours_8b_half, "--profile"], 1),
            ("ours-8bhalf-1gpu-fp8", [*ours_8b_half, "--fp8", "hybrid"], 1),
        ],
        "s6": [("lora-8b-1gpu", ["lora", "--model", "llama-8b", "--mbs", "2", "--rows-per-gpu", "8", *common], 1)],
    }


def waves(jobs: Sequence[Job], gpus: int) -> list[list[tuple[str, list[str], int, str]]]:
    """Jobs in order, grouped so each group fits the GPUs; each job gets its CUDA_VISIBLE_DEVICES."""
    groups: list[list[tuple[str, list[str], int, str]]] = []
    used = gpus
    for name, args, need in jobs:
        if need > gpus:
            continue
        if used + need > gpus:
            groups.append([])
            used = 0
        devices = ",".join(str(d) for d in range(used, used + need))
        groups[-1].append((name, args, need, devices))
        used += need
    return groups


def cards() -> tuple[str, int, float]:
    """(name, count, GiB each) of the GPUs, from nvidia-smi (the orchestrator never initialises CUDA)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        )
        lines = out.stdout.strip().splitlines()
        name, mib = lines[0].rsplit(",", 1)
        return name.strip(), len(lines), float(mib) / 1024
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return "unknown", 0, 0.0


def collect(names: Sequence[str]) -> dict[str, Any]:
    """Every worker result present under WORK."""
    results = {}
    for name in names:
        path = WORK / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results
