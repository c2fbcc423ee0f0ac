"""The workers that run this project's trainer: `ours` (megatron backend through the real loop), `torch`
(the Hugging Face/PyTorch backend) and `lora`; each returns its measured steps as a result dict."""

import argparse
import gc
import json
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import train_metrics as tm
from bench.train_throughput.data import SEQ, WORK, lengths_of, sft_config


class StepCapture:
    """A loop reporter that keeps every step's report (rank 0)."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def step(self, report: Any) -> None:
        """Keep the step."""
        self.steps.append(report)

    def validation(self, report: Any) -> None:
        """Unused (no validation set)."""

    def checkpoint(self, report: Any) -> None:
        """Unused (no checkpoints)."""

    def finish(self, summary: Any) -> None:
        """Unused."""


class ProfiledBackend:
    """Wraps a backend: `torch.profiler` (CUDA kernels) around train steps `start`..`start + count - 1`."""

    def __init__(self, inner: Any, start: int, count: int, trace: Path) -> None:
        self.inner, self.start, self.count, self.trace = inner, start, count, trace
        self.calls = 0
        self.profiler: Any = None
        self.summary: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def train_step(self, micro_batches: Any, global_loss_tokens: int, lr: float) -> Any:
        """The inner step, profiled when due."""
        import torch

        self.calls += 1
        if self.calls == self.start:
            torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
        result = self.inner.train_step(micro_batches, global_loss_tokens, lr)
        if self.profiler is not None and self.calls == self.start + self.count - 1:
            torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
            self.profiler.export_chrome_trace(str(self.trace))
            self.summary = tm.kernel_summary(tm.trace_kernels(json.loads(self.trace.read_text())))
            self.summary["steps"] = self.count
            self.profiler = None
        return result


def run_loop(config: Any, backend: Any, train: Any, pad_id: int, env: Any) -> list[Any]:
    """The project's training loop for `config.trainer.max_steps` steps; returns rank 0's step reports."""
    import torch

    from sft_trainer.data import collate
    from sft_trainer.loop import LoopState, Trainer
    from sft_trainer.report import FanOut

    class BenchTrainer(Trainer):
        def save(self, state: LoopState) -> Path:  # the benchmark measures steps, not checkpoints
            return self.checkpoint_root

    capture = StepCapture()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    trainer = BenchTrainer(config, env, backend, train, None, collate, pad_id, FanOut([capture]), device)
    trainer.run(LoopState())
    return capture.steps


def peak_memory_gb() -> float:
    """Largest peak allocated GPU memory over the ranks, in GB (all-reduce MAX when distributed)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([torch.cuda.max_memory_allocated() / 1e9], device="cuda")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return round(float(value), 2)


def measured(steps: Sequence[Any], warmup: int, world: int, flops_token: float, epoch_tokens: int) -> dict[str, Any]:
    """Throughput numbers of a list of loop step reports."""
    seconds = [r.tokens / r.tokens_per_s for r in steps]
    stats = tm.summarize_steps(seconds, [r.tokens for r in steps], [r.data_wait_s for r in steps], warmup)
    out: dict[str, Any] = dict(tm.throughput(stats, world, flops_token, epoch_tokens))
    out.update(steps=stats.steps, median_step_s=round(stats.median_step_s, 4), tokens_measured=stats.tokens)
    out["loss_first_last"] = [round(steps[0].loss, 4), round(steps[-1].loss, 4)]
    return out


def worker_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Our trainer on this torchrun world: one backend, then one loop run per micro-batch size."""
    import torch

    from sft_trainer.backends.megatron.backend import MegatronBackend, MegatronTuning
    from sft_trainer.data import build_datasets
    from sft_trainer.distributed import current_env
    from sft_trainer.models import llama_config
    from sft_trainer.tokenization import load_tokenizer

    env = current_env()
    torch.cuda.set_device(env.local_rank)
    dp = env.world_size // args.tp
    mbs_list = [int(m) for m in args.mbs.split(",")]
    gbs = args.rows_per_gpu * dp
    steps = args.warmup + args.steps

    def config_for(mbs: int, n_steps: int = steps) -> Any:
        return sft_config(
            args.model, mbs=mbs, gbs=gbs, steps=n_steps, world=env.world_size, tp=args.tp, sp=args.sp,
            fp8=args.fp8, fp8_recipe=args.fp8_recipe, run=f"{args.name}-{env.rank}",
        )  # fmt: skip

    base = config_for(mbs_list[0])
    tuning = MegatronTuning(
        gradient_accumulation_fusion=args.gaf,
        grad_reduce_in_fp32=not args.bf16_grads,
        transformer_overrides=json.loads(args.overrides) if args.overrides else {},
        chunked_loss=not args.full_head,
    )
    started = time.perf_counter()
    backend = MegatronBackend(base, llama_config(base.model.architecture, 50257), None, tuning=tuning)
    init_s = time.perf_counter() - started
    tokenizer = load_tokenizer(base.model.tokenizer)
    splits = build_datasets(base, tokenizer)
    lengths = lengths_of(splits.train)
    flops_example = tm.model_flops_per_token(args.model, lengths["seq_per_example"])
    flops_row = tm.model_flops_per_token(args.model, lengths["seq_per_row"])
    pad_id = int(tokenizer.pad_token_id)
    runs: list[dict[str, Any]] = []
    for mbs in mbs_list:
        torch.cuda.reset_peak_memory_stats()
        try:
            reports = run_loop(config_for(mbs), backend, splits.train, pad_id, env)
        except torch.OutOfMemoryError as error:
            frames = traceback.extract_tb(error.__traceback__)[-6:]
            where = [f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}" for frame in frames]
            runs.append({"mbs": mbs, "error": f"OOM: {str(error)[:200]}", "where": where})
            gc.collect()
            torch.cuda.empty_cache()
            continue
        result = measured(reports, args.warmup, env.world_size, flops_example, lengths["epoch_tokens"])
        result["mfu_row_seq"] = round(result["mfu"] * flops_row / flops_example, 4)
        result["hfu"] = hardware_mfu(result["mfu"], args.model, flops_example, lengths, chunked=backend._chunked_loss)
        result.update(mbs=mbs, tokens_per_micro_batch=mbs * SEQ, peak_mem_gb=peak_memory_gb())
        runs.append(result)
        if env.rank == 0:
            print(f"[{args.name}] mbs {mbs}: {json.dumps(result)}", flush=True)
    profile: dict[str, Any] = {}
    good = [r for r in runs if "error" not in r]
    if args.profile and good:
        best_mbs = int(max(good, key=lambda r: float(r["tokens_per_s_per_gpu"]))["mbs"])
        trace = WORK / f"trace-{args.name}-rank{env.rank}.json"
        profiled = ProfiledBackend(backend, start=3, count=2, trace=trace)
        run_loop(config_for(best_mbs, 4), profiled, splits.train, pad_id, env)
        profile = {"mbs": best_mbs, **profiled.summary}
    return {
        "system": "ours",
        "model": args.model,
        "gpus": env.world_size,
        "layout": {"tp": args.tp, "sp": args.sp, "dp": dp, "fp8": args.fp8, "fp8_recipe": args.fp8_recipe},
        "tuning": {
            "gradient_accumulation_fusion": args.gaf,
            "bf16_grads": args.bf16_grads,
            "overrides": args.overrides,
            "chunked_loss": backend._chunked_loss,
        },
        "configuration": (
            f"megatron backend, {'FP8 ' + args.fp8 + ' ' + args.fp8_recipe if args.fp8 != 'none' else 'bf16'}, "
            f"packed THD (TE fused attention per example), "
            f"{'loss-positions-only chunked LM head' if backend._chunked_loss else 'full LM head + TE cross-entropy'}"
            f"{', gradient-accumulation fusion' if args.gaf else ''}, fp32 main weights/grads, distributed Adam"
        ),
        "rows_per_gpu_per_step": args.rows_per_gpu,
        "init_s": round(init_s, 1),
        "data": lengths,
        "flops_per_token": flops_example,
        "runs": runs,
        "profile": profile,
    }


def hardware_mfu(mfu: float, model: str, flops_token: float, lengths: dict[str, Any], chunked: bool) -> float:
    """The MFU of the FLOPs the GPU really did: the formula's, less the LM head of no-loss tokens when the
    head runs on loss positions only (`head_flops_skipped`)."""
    skipped = tm.head_flops_skipped(model, float(lengths["loss_fraction"])) if chunked else 0.0
    return round(mfu * (flops_token - skipped) / flops_token, 4)


def worker_torch(args: argparse.Namespace) -> dict[str, Any]:
    """The torch backend (Hugging Face model, fp32 master weights, autocast) on the same loop and data:
    packed rows, flex attention per example, loss-positions-only chunked LM head; one run per mbs."""
    import torch
    from transformers import LlamaForCausalLM

    from sft_trainer.backends.torch_backend import TorchBackend
    from sft_trainer.data import build_datasets
    from sft_trainer.distributed import current_env
    from sft_trainer.models import llama_config
    from sft_trainer.tokenization import load_tokenizer

    env = current_env()
    torch.cuda.set_device(env.local_rank)
    device = torch.device("cuda", env.local_rank)
    mbs_list = [int(m) for m in args.mbs.split(",")]

    def config_for(mbs: int) -> Any:
        config = sft_config(
            args.model, mbs=mbs, gbs=args.rows_per_gpu, steps=args.warmup + args.steps, world=1,
            backend="torch", run=f"{args.name}",
        )  # fmt: skip
        config.trainer.precision = args.precision
        config.parallelism.data_parallel = args.data_parallel
        return config

    base = config_for(mbs_list[0])
    tokenizer = load_tokenizer(base.model.tokenizer)
    splits = build_datasets(base, tokenizer)
    lengths = lengths_of(splits.train)
    flops = tm.model_flops_per_token(args.model, lengths["seq_per_example"])
    torch.manual_seed(0)
    with torch.device("cuda"):  # the same random init as the CPU path, minutes faster
        model = LlamaForCausalLM(llama_config(base.model.architecture, 50257))
    backend = TorchBackend(base, model, env, device)
    runs: list[dict[str, Any]] = []
    for mbs in mbs_list:
        torch.cuda.reset_peak_memory_stats()
        try:
            reports = run_loop(config_for(mbs), backend, splits.train, int(tokenizer.pad_token_id), env)
        except torch.OutOfMemoryError as error:
            runs.append({"mbs": mbs, "error": f"OOM: {str(error)[:200]}"})
            gc.collect()
            torch.cuda.empty_cache()
            continue
        result = measured(reports, args.warmup, 1, flops, lengths["epoch_tokens"])
        result["hfu"] = hardware_mfu(result["mfu"], args.model, flops, lengths, chunked=backend.chunked_head)
        result.update(mbs=mbs, tokens_per_micro_batch=mbs * SEQ, peak_mem_gb=peak_memory_gb())
        result["grad_scaler"] = bool(backend.scaler.is_enabled())
        result.update(liger=backend.liger, fsdp2_compute=str(backend.compute_dtype) if backend.compute_dtype else None)
        runs.append(result)
        print(f"[{args.name}] mbs {mbs}: {json.dumps(result)}", flush=True)
    return {
        "system": "ours-torch",
        "model": args.model,
        "gpus": 1,
        "precision": args.precision,
        "configuration": (
            f"torch backend, Hugging Face Llama, fp32 master weights + "
            f"{'FSDP2 bf16 compute weights' if backend.compute_dtype else args.precision + ' autocast'}"
            f"{' + GradScaler' if backend.scaler.is_enabled() else ''}, "
            f"{'Liger RMSNorm/RoPE/SwiGLU, ' if backend.liger else ''}packed rows, "
            f"{'flex attention (block-causal per example)' if backend.flex else 'dense 4-D mask'}, "
            f"{'loss-positions-only chunked LM head' if backend.chunked_head else 'full LM head'}, fused AdamW"
        ),
        "data": lengths,
        "flops_per_token": flops,
        "runs": runs,
    }


def worker_lora(args: argparse.Namespace) -> dict[str, Any]:
    """`training.method: lora` on the backend the project picks for it (`backends.choose_backend`), same loop.

    megatron: `MegatronLoraBackend` with megatron's random base init on the GPU (as the full runs);
    torch: `backends.create_backend` (Hugging Face init on the CPU, peft adapters).
    """
    import importlib.util

    import torch

    from sft_trainer.backends import choose_backend, create_backend
    from sft_trainer.data import build_datasets
    from sft_trainer.distributed import current_env
    from sft_trainer.models import llama_config
    from sft_trainer.tokenization import load_tokenizer

    env = current_env()
    torch.cuda.set_device(env.local_rank)
    device = torch.device("cuda", env.local_rank)
    picked = choose_backend("auto", True, importlib.util.find_spec("megatron.core") is not None, "lora")
    mbs = int(args.mbs.split(",")[0])
    config = sft_config(
        args.model, mbs=mbs, gbs=args.rows_per_gpu, steps=args.warmup + args.steps, world=1,
        packing=picked == "megatron", method="lora", backend=picked, run=f"{args.name}",
    )  # fmt: skip
    started = time.perf_counter()
    if picked == "megatron":
        from sft_trainer.backends.megatron.lora import MegatronLoraBackend

        backend: Any = MegatronLoraBackend(config, llama_config(config.model.architecture, 50257), None)
    else:
        backend = create_backend(config, load_tokenizer(config.model.tokenizer), env, device)
    init_s = time.perf_counter() - started
    tokenizer = load_tokenizer(config.model.tokenizer)
    splits = build_datasets(config, tokenizer)
    lengths = lengths_of(splits.train)
    flops = tm.model_flops_per_token(args.model, lengths["seq_per_example"])
    torch.cuda.reset_peak_memory_stats()
    reports = run_loop(config, backend, splits.train, int(tokenizer.pad_token_id), env)
    result = measured(reports, args.warmup, 1, flops, lengths["epoch_tokens"])
    result.update(mbs=mbs, peak_mem_gb=peak_memory_gb())
    modules = getattr(backend, "model", [])
    modules = modules if isinstance(modules, list) else [modules]
    trainable = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
    return {
        "system": "ours-lora",
        "model": args.model,
        "gpus": 1,
        "backend": type(backend).__name__,
        "backend_picked": picked,
        "packing": config.data.packing,
        "trainable_parameters": int(trainable),
        "init_s": round(init_s, 1),
        "note": "MFU counts the full-fine-tuning FLOPs (6 x params); LoRA skips the base weight gradients (~1/3)",
        "runs": [result],
    }
