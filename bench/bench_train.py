"""Training throughput benchmark (issue 10): our trainer vs TRL's SFTTrainer, on the GPU device.

Data: T0 (55,185 prompt/completion pairs), GPT-2 tokenizer, answer-only loss, max_seq_length 4096.
Models: random-init real shapes `llama-1b` (Llama-3.2-1B) and `llama-8b` (Llama-3-8B).

- ours: the real trainer path. `build_datasets` (tokenize, mask, pack into 4096-token rows, cache)
  -> `loop.Trainer` (global batches, collate, data-wait measurement) -> `MegatronBackend` (every
  micro-batch one packed THD stream, TE attention with `cu_seqlens`, bf16 or FP8). The model is
  built with megatron's own random init on the GPU (`hf_state_dict=None`) instead of a CPU
  Hugging Face init: same shapes, minutes less per run. No checkpoints are written.
- peer: TRL 1.16 `SFTTrainer`, sdpa, bf16, completion-only loss, max_length 4096: padded batches,
  `packing=True` (bfd, padding-free) and `packing_strategy="wrapped"`, several batch sizes each.
- LoRA: `llama-8b`, `training.method: lora`, one GPU, through `backends.create_backend` (whatever
  backend the project picks for LoRA) and the same loop.

Each configuration runs a fixed number of steps; the first `--warmup` are dropped. Independent
single-GPU runs go to separate GPUs at once. Results: `$OUT/train-<card>.json` (or
bench/results/), a table at the end of the output.

    python -m bench.bench_train                      # every stage (make bench-train)
    python -m bench.bench_train --stages s1,s2       # some stages
    python -m bench.bench_train worker ours --model llama-1b --mbs 1,2 ...   # one worker (used by the above)
"""

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import train_metrics as tm

REPO = Path(__file__).resolve().parents[1]
SEQ = 4096
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/bench-train"))
T0_NAME = "t0_prompt_completion_55k.jsonl.gz"


# ---------------------------------------------------------------------------- data locations


def find_data(name: str) -> Path:
    """A data file from `.gpudata/` (what travels to the device) or `../shared/data`."""
    for root in (REPO / ".gpudata", REPO.parent / "shared" / "data"):
        for candidate in (root / name, root / "instruct" / name, root / "tokenizers" / "gpt2" / name):
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"{name}: not in .gpudata/ or ../shared/data")


def tokenizer_dir() -> Path:
    """The directory holding the GPT-2 `encoder.json` + `vocab.bpe`."""
    return find_data("encoder.json").parent


# ---------------------------------------------------------------------------- configs


def sft_config(
    model: str,
    *,
    mbs: int,
    gbs: int,
    steps: int,
    world: int,
    tp: int = 1,
    sp: bool = False,
    fp8: str = "none",
    fp8_recipe: str = "tensorwise",
    packing: bool = True,
    method: str = "full",
    backend: str = "megatron",
    run: str = "run",
) -> Any:
    """The run's `SFTConfig`: T0, GPT-2 BPE, answer-only loss, 4096-token packing, the model's real shape."""
    from sft_trainer.config.schema import SFTConfig

    shape = tm.MODELS[model]
    arch = {
        "hidden_size": shape["hidden_size"],
        "num_layers": shape["num_layers"],
        "num_attention_heads": shape["num_attention_heads"],
        "num_key_value_heads": shape["num_key_value_heads"],
        "intermediate_size": shape["intermediate_size"],
        "vocab_size": shape["vocab_size"],
        "tie_word_embeddings": shape["tie_word_embeddings"],
        "rope_theta": shape["rope_theta"],
        "max_position_embeddings": SEQ,
    }
    return SFTConfig.model_validate(
        {
            "name": "bench",
            "output_dir": str(WORK / "runs" / run),
            "model": {
                "source": "random",
                "architecture": arch,
                "tokenizer": {"type": "gpt2_bpe", "path": str(tokenizer_dir())},
            },
            "data": {
                "train_file": str(find_data(T0_NAME)),
                "prompt_template": "{prompt}{completion}",
                "label_key": "completion",
                "truncation_field": "prompt",
                "max_seq_length": SEQ,
                "answer_only_loss": True,
                "packing": packing,
                "cache_dir": str(WORK / "cache"),
            },
            "trainer": {
                "max_steps": steps,
                "micro_batch_size": mbs,
                "global_batch_size": gbs,
                "devices": world,
                "val_check_interval": 100_000,
                "save_interval": 100_000,
                "precision": "bf16",
            },
            "optim": {"lr": 1e-5},
            "training": {"method": method},
            "parallelism": {
                "backend": backend,
                "tensor_model_parallel_size": tp,
                "sequence_parallel": sp,
                "fp8": fp8,
                "fp8_recipe": fp8_recipe,
            },
            "checkpoint": {"resume": "never"},
            "logging": {"progress": "none"},
        }
    )


def dataset_lengths(config: Any) -> dict[str, Any]:
    """`lengths_of` the run's training set (built, or read from the cache)."""
    from sft_trainer.data import build_datasets
    from sft_trainer.tokenization import load_tokenizer

    return lengths_of(build_datasets(config, load_tokenizer(config.model.tokenizer)).train)


def lengths_of(train: Any) -> dict[str, Any]:
    """Token counts of the epoch and the effective attention lengths for the FLOP formula."""
    from sft_trainer.flops import effective_sequence_length

    examples = [int(n) for n in train.store.lengths]
    rows = [int(n) for n in train.lengths]
    return {
        "examples": len(examples),
        "epoch_tokens": int(sum(examples)),
        "loss_fraction": round(int(train.store.loss_tokens.sum()) / max(sum(examples), 1), 4),
        "rows": len(rows),
        "seq_per_example": effective_sequence_length(examples),
        "seq_per_row": effective_sequence_length(rows),
    }


# ---------------------------------------------------------------------------- our trainer


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
        runs.append(result)
        print(f"[{args.name}] mbs {mbs}: {json.dumps(result)}", flush=True)
    return {
        "system": "ours-torch",
        "model": args.model,
        "gpus": 1,
        "precision": args.precision,
        "configuration": (
            f"torch backend, Hugging Face Llama, fp32 master weights + {args.precision} autocast"
            f"{' + GradScaler' if backend.scaler.is_enabled() else ''}, packed rows, "
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


# ---------------------------------------------------------------------------- TRL peer


def trl_subset(rows: int, seed: int = 0) -> Path:
    """A random `rows`-row sample of T0 as JSONL (the peer's steps draw from the same length mix)."""
    import gzip

    target = WORK / f"t0-sample-{rows}.jsonl"
    if target.exists():
        return target
    with gzip.open(find_data(T0_NAME), "rt", encoding="utf-8") as handle:
        lines = handle.readlines()
    chosen = random.Random(seed).sample(lines, rows)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text("".join(chosen), encoding="utf-8")
    tmp.replace(target)
    return target


# name -> (attention implementation, extra SFTConfig fields)
TRL_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "padded": ("sdpa", {"packing": False}),
    "bfd": ("sdpa", {"packing": True, "packing_strategy": "bfd"}),
    "wrapped": ("sdpa", {"packing": True, "packing_strategy": "wrapped"}),
    # TRL's documented speed options that work offline: padding-free best-fit-decreasing packing with an
    # attention that keeps the packed examples apart without a dense mask (flex attention; flash-attn has
    # no wheel here), Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy), fused AdamW
    "best": (
        "flex_attention",
        {
            "packing": True,
            "packing_strategy": "bfd",
            "padding_free": True,
            "use_liger_kernel": True,
            "optim": "adamw_torch_fused",
        },
    ),
}


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL SFTTrainer (sdpa, bf16, completion-only loss) at each batch size; real tokens/s per step."""
    import datasets
    import torch
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sft_trainer.models import llama_config
    from sft_trainer.tokenization import load_tokenizer

    datasets.disable_progress_bars()
    torch.cuda.set_device(0)
    base = sft_config(args.model, mbs=1, gbs=1, steps=1, world=1)
    tokenizer = load_tokenizer(base.model.tokenizer)
    data = datasets.load_dataset("json", data_files=str(trl_subset(args.trl_rows)), split="train")
    lengths = dataset_lengths(base)
    flops = tm.model_flops_per_token(args.model, lengths["seq_per_example"])

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if not self.marks:
                torch.cuda.synchronize()
                self.marks.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    class TimedSFTTrainer(SFTTrainer):
        real_tokens: ClassVar[list[int]] = []

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            self.real_tokens.append(real_tokens(inputs))
            return super().training_step(model, inputs, num_items_in_batch)

    runs = []
    for batch in [int(b) for b in args.batch.split(",")]:
        model = trainer = None
        try:
            with torch.device("cuda"):
                model = LlamaForCausalLM(llama_config(base.model.architecture, 50257))
            model = model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]
            attention, options = TRL_MODES[args.trl_mode]
            model.set_attn_implementation(attention)
            static: dict[str, Any] = {"pad_to_multiple_of": batch * SEQ} if args.trl_mode == "best" else {}
            sft_args = SFTConfig(
                output_dir=str(WORK / "trl" / f"{args.name}-{batch}"),
                max_length=SEQ,
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=1,
                max_steps=args.warmup + args.steps,
                learning_rate=1e-5,
                lr_scheduler_type="constant",
                bf16=True,
                gradient_checkpointing=False,
                completion_only_loss=True,
                logging_steps=100_000,
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                dataset_num_proc=8,
                seed=1234,
                **options,
                **static,
            )
            timer = Timer()
            TimedSFTTrainer.real_tokens = []
            trainer = TimedSFTTrainer(
                model=model, args=sft_args, train_dataset=data, processing_class=tokenizer, callbacks=[timer]
            )
            torch.cuda.reset_peak_memory_stats()
            trainer.train()
            seconds = [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)]
            tokens = TimedSFTTrainer.real_tokens[: len(seconds)]
            stats = tm.summarize_steps(seconds, tokens, [0.0] * len(seconds), args.warmup)
            result: dict[str, Any] = tm.throughput(stats, 1, flops, lengths["epoch_tokens"])
            result.update(batch=batch, steps=stats.steps, median_step_s=round(stats.median_step_s, 4))
            result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            result["data_wait_pct"] = None  # not separated from the step for the peer
        except torch.OutOfMemoryError as error:
            result = {"batch": batch, "error": f"OOM: {str(error)[:160]}"}
        runs.append(result)
        print(f"[{args.name}] batch {batch}: {json.dumps(result)}", flush=True)
        del model, trainer
        gc.collect()
        torch.cuda.empty_cache()
    import trl

    attention, options = TRL_MODES[args.trl_mode]
    return {
        "system": "trl",
        "model": args.model,
        "gpus": 1,
        "mode": args.trl_mode,
        "configuration": {
            "trl": trl.__version__,
            "attn_implementation": attention,
            "weights": "bf16 (no fp32 master copy)",
            "completion_only_loss": True,
            "max_length": SEQ,
            "gradient_checkpointing": False,
            **options,
            **(
                {"pad_to_multiple_of": "batch x max_length (one static shape: flex attention compiles once)"}
                if args.trl_mode == "best"
                else {}
            ),
        },
        "trl_rows": args.trl_rows,
        "cross_example_attention": args.trl_mode == "wrapped",
        "flops_per_token": flops,
        "runs": runs,
    }


def real_tokens(inputs: Any) -> int:
    """Non-padding tokens of a TRL batch (on the host, before the step): the attention mask's ones; for a
    padding-free row, its length before the right padding (padding has position 0, and every example's
    later tokens positions > 0)."""
    mask = inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    positions = inputs.get("position_ids")
    if positions is None:
        return int(inputs["input_ids"].numel())
    flat = positions.reshape(-1)
    nonzero = flat.nonzero().flatten()
    return int(nonzero[-1]) + 1 if len(nonzero) else 0


# ---------------------------------------------------------------------------- orchestration


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
        "s1": [  # llama-1b on one GPU: ours (bf16, FP8, and the full-head reference) and TRL at its best
            ("ours-1b-1gpu", [*ours_1b, "--profile"], 1),
            ("trl-best", [*trl_best, "--trl-mode", "best", "--batch", "4,8,16,32"], 1),
            ("ours-1b-1gpu-fp8", [*ours_1b, "--fp8", "hybrid"], 1),
            ("ours-1b-1gpu-fullhead", [*ours_1b, "--full-head"], 1),
        ],
        "s1r": [  # the peer's other configurations, references (padded: slowest; wrapped: crosses examples)
            ("trl-bfd", [*trl, "--trl-mode", "bfd", "--batch", "2"], 1),
            ("trl-wrapped", [*trl, "--trl-mode", "wrapped", "--batch", "8"], 1),
            ("trl-padded", [*trl, "--trl-mode", "padded", "--batch", "16"], 1),
        ],
        "s1t": [  # the torch backend on the GPU: bf16 autocast at several micro-batches, fp16 + GradScaler once
            ("torch-1b-1gpu-bf16", [*torch_1b, "--mbs", "1,2,4"], 1),
            ("torch-1b-1gpu-fp16", [*torch_1b, "--mbs", "2", "--precision", "fp16"], 1),
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


def prepare_data() -> None:
    """Tokenize + pack T0 once into the shared cache (workers then hit it)."""
    config = sft_config("llama-1b", mbs=1, gbs=1, steps=1, world=1)
    started = time.perf_counter()
    info = dataset_lengths(config)
    print(f"[bench] data ready in {time.perf_counter() - started:.1f}s: {json.dumps(info)}", flush=True)


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


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured configuration."""
    rows = []
    for name, result in results.items():
        for run in result.get("runs", []):
            if "error" in run:
                continue
            knob = f"mbs {run['mbs']}" if "mbs" in run else f"batch {run.get('batch')}"
            row = {"system": result["system"], "config": f"{name} {knob}", "gpus": result["gpus"], **run}
            if run.get("tokens_measured") and run.get("median_step_s"):
                rate = tm.median_rate(run["tokens_measured"], run["steps"], run["median_step_s"], result["gpus"])
                row["tokens_per_s_per_gpu_median"] = round(rate, 1)
                row["mfu_median"] = round(run["mfu"] * rate / run["tokens_per_s_per_gpu"], 4)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="s1,s1t,s1b,s1r,s2,s3,s4,s5")
    parser.add_argument("--mbs-1b", default="4,8")
    parser.add_argument("--mbs-8b", default="1,2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stage-timeout", type=float, default=240.0)
    parser.add_argument("--output", type=Path, default=None, help="default: $OUT or bench/results")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine results JSONs of several calls, no run")
    options = parser.parse_args(argv)
    if options.merge:
        merge_reports(options.merge, options.output or REPO / "bench" / "results" / "train-merged.json")
        return
    WORK.mkdir(parents=True, exist_ok=True)
    card, gpus, gib = cards()
    plan = stage_plan(options.mbs_1b, options.steps, options.warmup, gpus, card_gib=gib, mbs_8b=options.mbs_8b)
    print(f"[bench] {gpus} x {card} ({gib:.0f} GiB)", flush=True)
    started = time.perf_counter()
    prepare_data()
    names: list[str] = []
    timings: dict[str, Any] = {}
    for stage in options.stages.split(","):
        stage_started = time.perf_counter()
        for wave in waves(plan[stage], gpus):
            procs = [launch(name, devices, args, need) for name, args, need, devices in wave]
            names += [name for name, *_ in wave]
            wait_all(procs, options.stage_timeout)
            write_report(names, card, gpus, timings, options.output)  # after every wave: a cut-off call keeps it
        timings[stage] = round(time.perf_counter() - stage_started, 1)
        print(f"[bench] stage {stage} done in {timings[stage]}s", flush=True)
    report, path = write_report(names, card, gpus, timings, options.output)
    print(tm.format_table(report["table"]))
    for line in report["goals"]:
        print(f"goal {'MET ' if line['met'] else 'MISS'} {line['goal']}: {line['measured']} (target {line['target']})")
    print(f"[bench] {time.perf_counter() - started:.0f}s -> {path}", flush=True)


def write_report(
    names: Sequence[str], card: str, gpus: int, timings: dict[str, Any], output: Path | None
) -> tuple[dict[str, Any], Path]:
    """Collect the workers' results so far and write `train-<card>.json` under `output` ($OUT or bench/results)."""
    report = summarize(collect(names), card, timings)
    report["gpus_on_host"] = gpus
    directory = output or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    directory.mkdir(parents=True, exist_ok=True)
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    path = directory / f"train-{slug}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report, path


def merge_reports(paths: Sequence[Path], output: Path) -> None:
    """One report from several device calls' JSONs.

    Results are keyed `<worker>@call<N>`; every goal is judged inside one call (ratios never mix
    cards or calls) and taken from the last call that measured it.
    """
    reports = [json.loads(path.read_text()) for path in paths]
    results: dict[str, Any] = {}
    for index, report in enumerate(reports):
        for name, result in report["results"].items():
            results[f"{name}@call{index + 1}"] = {**result, "call": index + 1, "card": report["card"]}
    cards = " + ".join(sorted({str(r["card"]) for r in reports}))
    merged = summarize(results, cards, {f"call{i + 1}": r["stage_seconds"] for i, r in enumerate(reports)})
    merged["goals"] = merge_goals([evaluate_goals(table_rows(r["results"])) for r in reports])
    merged["calls"] = [
        {"card": r["card"], "gpus_on_host": r.get("gpus_on_host"), "workers": sorted(r["results"])} for r in reports
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    print(tm.format_table(merged["table"]))
    for line in merged["goals"]:
        print(f"goal {'MET ' if line['met'] else 'MISS'} {line['goal']}: {line['measured']} (call {line.get('call')})")


def merge_goals(goals_by_call: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per goal (by position), the last call's line that has a measurement (else the last line), with its call;
    for a ceiling (`lower_is_better`), the worst call's line."""
    merged: list[dict[str, Any]] = []
    for position in range(max((len(g) for g in goals_by_call), default=0)):
        lines = [(call + 1, goals[position]) for call, goals in enumerate(goals_by_call) if position < len(goals)]
        measured = [(call, line) for call, line in lines if line.get("measured") is not None]
        if measured and measured[-1][1].get("lower_is_better"):  # a ceiling: the worst call decides
            measured.sort(key=lambda item: float(item[1]["measured"]))
        call, line = (measured or lines)[-1]
        merged.append({**line, "call": call})
    return merged


def summarize(results: dict[str, Any], card: str, timings: dict[str, Any]) -> dict[str, Any]:
    """The results JSON: card, per-config table, goals."""
    rows = with_peer_ratio(table_rows(results))
    return {
        "card": card,
        "data": "T0 55,185 prompt/completion pairs, GPT-2 BPE, answer-only loss, max_seq_length 4096",
        "peak_tflops": tm.PEAK_TFLOPS,
        "stage_seconds": timings,
        "table": rows,
        "goals": evaluate_goals(rows),
        "results": results,
    }


def _best_of(rows: Sequence[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    chosen = tm.best(r for r in rows if predicate(r))
    return dict(chosen) if chosen else None


PEER_CORRECT = ("trl-best", "trl-bfd", "trl-padded")  # TRL configurations that keep examples apart


def best_peer_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest llama-1b TRL row whose examples never attend to each other (wrapped rows excluded)."""
    return _best_of(rows, lambda r: str(r["config"]).startswith(PEER_CORRECT))


def with_peer_ratio(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `ratio_vs_best_peer` (tokens/s over the best peer row's) on every llama-1b row of ours."""
    peer = best_peer_row(rows)
    out = []
    for row in rows:
        row = dict(row)
        if peer is not None and str(row["config"]).startswith(("ours-1b-1gpu", "torch-1b")):
            row["ratio_vs_best_peer"] = round(
                float(row["tokens_per_s_per_gpu"]) / float(peer["tokens_per_s_per_gpu"]), 3
            )
            row["best_peer"] = peer["config"]
        out.append(row)
    return out


def evaluate_goals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 10's goals from the table rows (a goal whose run is missing reads `measured: null`)."""

    def named(prefix: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: str(r["config"]).startswith(prefix)

    ours_1 = _best_of(rows, lambda r: named("ours-1b-1gpu")(r) and "fp8" not in str(r["config"]))
    ours_fp8 = _best_of(rows, named("ours-1b-1gpu-fp8"))
    torch_1 = _best_of(rows, named("torch-1b-1gpu-bf16"))
    plain_1 = _best_of(rows, named("ours-1b-1gpu mbs"))  # no tuning variant: the same code as the DP runs
    ours_2 = _best_of(rows, named("ours-1b-dp2"))
    ours_4 = _best_of(rows, named("ours-1b-dp4"))
    best_peer = best_peer_row(rows)
    trl_wrapped = _best_of(rows, named("trl-wrapped"))
    # llama-8b: the best layout of each precision (TP=2 + SP, or TP=1 x DP on cards that hold it)
    bf16_8b = _best_of(rows, lambda r: named("ours-8b-")(r) and "-bf16" in str(r["config"]))
    fp8_8b = _best_of(rows, lambda r: named("ours-8b-")(r) and "-fp8" in str(r["config"]))

    def tps(row: dict[str, Any] | None) -> float | None:
        return None if row is None else float(row["tokens_per_s_per_gpu"])

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
        return None if a is None or b is None else tps(a) / tps(b)  # type: ignore[operator]

    per_gpu = {w: tps(r) for w, r in ((1, plain_1), (2, ours_2), (4, ours_4)) if r is not None}
    steps = tm.step_efficiency({w: v for w, v in per_gpu.items() if v is not None})
    waits = [float(r["data_wait_pct"]) for r in rows if str(r["system"]).startswith("ours")]
    return [
        tm.goal("llama-1b 1 GPU bf16 MFU", None if ours_1 is None else ours_1["mfu"], 0.60),
        tm.goal("llama-1b bf16 / best peer (TRL, examples kept apart)", ratio(ours_1, best_peer), 1.35, "x"),
        tm.goal("llama-1b FP8 / best peer (bf16)", ratio(ours_fp8, best_peer), 1.75, "x"),
        tm.goal("torch backend bf16 / best peer", ratio(torch_1, best_peer), 1.0, "x"),
        tm.goal("llama-1b vs TRL wrapped (crosses examples: reference)", ratio(ours_1, trl_wrapped), 1.3, "x"),
        tm.goal(
            f"llama-8b bf16 MFU ({'not run' if bf16_8b is None else bf16_8b['gpus']} GPUs; goal: 4)",
            None if bf16_8b is None else bf16_8b["mfu"],
            0.50,
        ),
        tm.goal("llama-8b FP8 / bf16 tokens/s", ratio(fp8_8b, bf16_8b), 1.3, "x"),
        tm.goal("llama-8b bf16 MFU at the median step", None if bf16_8b is None else bf16_8b.get("mfu_median"), 0.50),
        tm.goal(
            "llama-8b FP8 / bf16 at the median step",
            None
            if bf16_8b is None or fp8_8b is None
            else fp8_8b["tokens_per_s_per_gpu_median"] / bf16_8b["tokens_per_s_per_gpu_median"],
            1.3,
            "x",
        ),
        tm.goal("scaling 1->2 per-GPU efficiency", steps.get("1->2"), 0.90),
        tm.goal("scaling 2->4 per-GPU efficiency", steps.get("2->4"), 0.90),
        tm.goal("data wait % of step (worst of ours)", max(waits) if waits else None, 2.0, "%", lower_is_better=True),
    ]


def worker_main(argv: Sequence[str]) -> None:
    """One worker: run, then rank 0 writes its JSON to --result."""
    parser = argparse.ArgumentParser(prog="bench_train worker")
    parser.add_argument("kind", choices=["ours", "trl", "lora", "torch"])
    parser.add_argument("--model", default="llama-1b", choices=sorted(tm.MODELS))
    parser.add_argument("--name", default="worker")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--mbs", default="1")
    parser.add_argument("--rows-per-gpu", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--fp8", default="none", choices=["none", "hybrid", "e4m3"])
    parser.add_argument("--fp8-recipe", default="tensorwise", choices=["tensorwise", "delayed", "blockwise"])
    parser.add_argument("--gaf", action="store_true", help="gradient-accumulation fusion")
    parser.add_argument("--bf16-grads", action="store_true", help="main grads and their reduction in bf16")
    parser.add_argument("--overrides", default="", help="JSON of extra TransformerConfig fields")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--full-head", action="store_true", help="ours: full LM head + TE cross-entropy (no chunked loss)"
    )
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"], help="torch backend")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False, help="lora: pack rows")
    parser.add_argument("--trl-mode", default="padded", choices=sorted(TRL_MODES))
    parser.add_argument("--batch", default="8")
    parser.add_argument("--trl-rows", type=int, default=8000)
    args = parser.parse_args(argv)
    run = {"ours": worker_ours, "trl": worker_trl, "lora": worker_lora, "torch": worker_torch}[args.kind]
    started = time.perf_counter()
    try:
        result = run(args)
    except Exception as error:  # the orchestrator reports it; the other workers carry on
        traceback.print_exc()
        result = {"system": args.kind, "model": args.model, "gpus": 0, "error": repr(error)[:500], "runs": []}
    result["worker_s"] = round(time.perf_counter() - started, 1)
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        main()
