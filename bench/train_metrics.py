"""Pure arithmetic of the training benchmark (`bench.bench_train`): no torch, no GPU.

Model shapes, FLOPs per token and MFU (through `sft_trainer.flops`, the NeMo causal formula),
step-time summaries after warm-up, epoch extrapolation, data-parallel scaling efficiency, the
issue-10 goals, and the kernel mix / exposed communication of a profiler trace.
"""

import itertools
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sft_trainer.flops import flops_per_token

PEAK_TFLOPS = 989.0  # H100 / H200 dense bf16, the issue's denominator for every MFU here

# Real shapes, random init (issue 10).
MODELS: dict[str, dict[str, Any]] = {
    "llama-1b": {  # Llama-3.2-1B
        "hidden_size": 2048,
        "num_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
    "llama-8b": {  # Llama-3-8B
        "hidden_size": 4096,
        "num_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    },
}
# Llama-3-8B's layer shape with half its layers: what one GPU computes in TP=1 x DP=N 8B training,
# for single-GPU measurements of MFU and FP8 (full 8B fine-tuning state does not fit on one card).
MODELS["llama-8b-half"] = {**MODELS["llama-8b"], "num_layers": 16}


def flops_config(model: str) -> SimpleNamespace:
    """The attributes `sft_trainer.flops` reads, for one of `MODELS`."""
    shape = MODELS[model]
    return SimpleNamespace(
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        intermediate_size=shape["intermediate_size"],
        vocab_size=shape["vocab_size"],
    )


def model_flops_per_token(model: str, sequence_length: float) -> float:
    """Training FLOPs per token: 6 x matmul params + 6 x layers x hidden x sequence (NeMo causal)."""
    return flops_per_token(flops_config(model), sequence_length)


def head_flops_skipped(model: str, loss_fraction: float) -> float:
    """Training FLOPs per token a loss-positions-only LM head does not do: 6 x hidden x vocabulary for
    the share of tokens that carry no loss (the formula above counts the head for every token)."""
    shape = MODELS[model]
    return 6.0 * shape["hidden_size"] * shape["vocab_size"] * (1.0 - loss_fraction)


@dataclass(frozen=True)
class StepStats:
    """Measured steps after warm-up, of one configuration."""

    steps: int
    tokens: int  # real (non-padding) tokens over the measured steps, all GPUs
    seconds: float  # wall time of the measured steps
    median_step_s: float
    data_wait_s: float  # time the steps waited for their input


def summarize_steps(
    step_seconds: Sequence[float], step_tokens: Sequence[int], data_wait: Sequence[float], warmup: int
) -> StepStats:
    """Drop the first `warmup` steps and add up the rest."""
    if not len(step_seconds) == len(step_tokens) == len(data_wait):
        raise ValueError("per-step lists differ in length")
    seconds, tokens, waits = step_seconds[warmup:], step_tokens[warmup:], data_wait[warmup:]
    if not seconds:
        raise ValueError(f"no step left after {warmup} warm-up steps")
    return StepStats(
        steps=len(seconds),
        tokens=int(sum(tokens)),
        seconds=float(sum(seconds)),
        median_step_s=float(statistics.median(seconds)),
        data_wait_s=float(sum(waits)),
    )


def throughput(
    stats: StepStats, gpus: int, flops_token: float, epoch_tokens: int, peak_tflops: float = PEAK_TFLOPS
) -> dict[str, float]:
    """Tokens/s/GPU, model TFLOP/s/GPU, MFU, hours per epoch and data-wait share of the step time."""
    per_gpu = stats.tokens / stats.seconds / gpus
    tflops = per_gpu * flops_token / 1e12
    return {
        "tokens_per_s_per_gpu": round(per_gpu, 1),
        "tflops_per_gpu": round(tflops, 1),
        "mfu": round(tflops / peak_tflops, 4),
        "epoch_hours": round(epoch_hours(epoch_tokens, per_gpu * gpus), 3),
        "data_wait_pct": round(100.0 * stats.data_wait_s / stats.seconds, 3),
    }


def median_rate(tokens: int, steps: int, median_step_s: float, gpus: int) -> float:
    """Tokens/s/GPU at the median step time (robust to a few slow steps in a short window)."""
    return tokens / steps / median_step_s / gpus if steps and median_step_s > 0 and gpus else 0.0


def epoch_hours(epoch_tokens: int, tokens_per_s: float) -> float:
    """Hours for one pass over `epoch_tokens` real tokens at `tokens_per_s` (all GPUs together)."""
    return epoch_tokens / tokens_per_s / 3600.0 if tokens_per_s > 0 else float("inf")


def scaling_efficiency(per_gpu_by_world: Mapping[int, float]) -> dict[str, float]:
    """Per-GPU throughput at each world size relative to the smallest one (1.0 = linear)."""
    if not per_gpu_by_world:
        return {}
    base_world = min(per_gpu_by_world)
    base = per_gpu_by_world[base_world]
    return {
        f"{base_world}->{world}": round(value / base, 4)
        for world, value in sorted(per_gpu_by_world.items())
        if world != base_world
    }


def step_efficiency(per_gpu_by_world: Mapping[int, float]) -> dict[str, float]:
    """Per-GPU throughput at each world size relative to the next smaller one (per added step)."""
    worlds = sorted(per_gpu_by_world)
    return {f"{a}->{b}": round(per_gpu_by_world[b] / per_gpu_by_world[a], 4) for a, b in itertools.pairwise(worlds)}


def best(results: Iterable[Mapping[str, Any]], key: str = "tokens_per_s_per_gpu") -> Mapping[str, Any] | None:
    """The result with the largest `key` (None if none has it)."""
    candidates = [r for r in results if r.get(key) is not None]
    return max(candidates, key=lambda r: r[key]) if candidates else None


def goal(
    name: str, measured: float | None, target: float, unit: str = "", lower_is_better: bool = False
) -> dict[str, Any]:
    """One goal line: met when the measured value reaches the target (or stays under it)."""
    met = measured is not None and (measured < target if lower_is_better else measured >= target)
    return {
        "goal": name,
        "target": target,
        "measured": None if measured is None else round(measured, 4),
        "unit": unit,
        "lower_is_better": lower_is_better,
        "met": met,
    }


# ---------------------------------------------------------------------------- profiles

KERNEL_CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("communication", re.compile(r"nccl", re.I)),
    ("attention", re.compile(r"fmha|flash|fused_attn|sdpa|attention|cudnn", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|nvjet|xmma|wgmma|cublas|sm90_|matmul", re.I)),
    ("optimizer", re.compile(r"multi_tensor|adam|l2norm", re.I)),
    ("cross_entropy", re.compile(r"cross_entropy|softmax|logsumexp", re.I)),
    ("norm_rope_act", re.compile(r"norm|rope|rotary|swiglu|silu|gelu|act", re.I)),
    ("fp8_cast", re.compile(r"cast|transpose|amax|quantize|fp8|scale", re.I)),
    ("copy_memset", re.compile(r"memcpy|memset|copy", re.I)),
]


def kernel_class(name: str) -> str:
    """The class of a GPU kernel by its name (first match in `KERNEL_CLASSES`, else `elementwise_other`)."""
    for label, pattern in KERNEL_CLASSES:
        if pattern.search(name):
            return label
    return "elementwise_other"


Interval = tuple[float, float]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, non-overlapping union of [start, end) intervals."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def covered(intervals: Iterable[Interval]) -> float:
    """Total length of the union of the intervals."""
    return sum(b - a for a, b in merge_intervals(intervals))


def uncovered(targets: Iterable[Interval], cover: Iterable[Interval]) -> float:
    """Length of the union of `targets` not inside the union of `cover` (exposed time)."""
    union_t, union_c = merge_intervals(targets), merge_intervals(cover)
    exposed, j = 0.0, 0
    for start, end in union_t:
        cursor = start
        while j < len(union_c) and union_c[j][1] <= cursor:
            j += 1
        k = j
        while k < len(union_c) and union_c[k][0] < end:
            a, b = union_c[k]
            if a > cursor:
                exposed += a - cursor
            cursor = max(cursor, b)
            if cursor >= end:
                break
            k += 1
        if cursor < end:
            exposed += end - cursor
    return exposed


def kernel_summary(kernels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Kernel mix and exposed communication from profiler kernel events (`name`, `ts`, `dur` in us).

    Shares are of summed kernel time; `busy_pct` is the union of all kernels over the profiled span;
    `exposed_comm_ms` is communication time during which no compute kernel ran.
    """
    if not kernels:
        return {}
    by_class: dict[str, float] = {}
    top: dict[str, float] = {}
    comm: list[Interval] = []
    compute: list[Interval] = []
    for k in kernels:
        start, dur = float(k["ts"]), float(k["dur"])
        label = kernel_class(str(k["name"]))
        by_class[label] = by_class.get(label, 0.0) + dur
        top[str(k["name"])[:90]] = top.get(str(k["name"])[:90], 0.0) + dur
        (comm if label == "communication" else compute).append((start, start + dur))
    total = sum(by_class.values())
    span = max(float(k["ts"]) + float(k["dur"]) for k in kernels) - min(float(k["ts"]) for k in kernels)
    busy = covered(comm + compute)
    return {
        "span_ms": round(span / 1e3, 3),
        "busy_pct": round(100.0 * busy / span, 2) if span else 0.0,
        "kernel_ms": round(total / 1e3, 3),
        "share_pct": {c: round(100.0 * t / total, 2) for c, t in sorted(by_class.items(), key=lambda x: -x[1])},
        "comm_ms": round(covered(comm) / 1e3, 3),
        "exposed_comm_ms": round(uncovered(comm, compute) / 1e3, 3),
        "top_kernels_ms": {n: round(t / 1e3, 3) for n, t in sorted(top.items(), key=lambda x: -x[1])[:12]},
    }


def trace_kernels(trace: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The GPU kernel events of a chrome trace written by `torch.profiler` (`cat` == `kernel`)."""
    return [
        {"name": e.get("name", ""), "ts": e["ts"], "dur": e["dur"]}
        for e in trace.get("traceEvents", [])
        if e.get("cat") == "kernel" and "dur" in e
    ]


# ---------------------------------------------------------------------------- report


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of the per-configuration results (the end of the device call's output)."""
    header = f"{'system':<8} {'config':<34} {'gpus':>4} {'tok/s/GPU':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GB':>8} {'epoch h':>8} {'wait%':>6}"
    lines = [header]
    for r in rows:
        mfu = r.get("mfu")
        lines.append(
            f"{r.get('system') or '':<8} {str(r.get('config') or '')[:34]:<34} {r.get('gpus') or 0:>4} "
            f"{r.get('tokens_per_s_per_gpu') or 0:>10.0f} {r.get('tflops_per_gpu') or 0:>8.1f} "
            f"{(mfu or 0) * 100:>5.1f}% {r.get('peak_mem_gb') or 0:>8.1f} {r.get('epoch_hours') or 0:>8.3f} "
            f"{r.get('data_wait_pct') or 0:>6.2f}"
        )
    return "\n".join(lines)
