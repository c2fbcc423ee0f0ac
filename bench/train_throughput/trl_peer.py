"""The peer's worker: TRL's SFTTrainer on the same data and model shapes, in each documented mode
(padded, padding-free bfd packing, wrapped, and its best: flex attention at the largest batch that fits)."""

import argparse
import gc
import json
import random
import time
from pathlib import Path
from typing import Any, ClassVar

from bench import train_metrics as tm
from bench.train_throughput.data import SEQ, T0_NAME, WORK, dataset_lengths, find_data, sft_config


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
