"""GPU checks of the megatron backend's LoRA (`backends/megatron/lora.py`), beside `megatron_checks.py`.

    python -m tests.gpu.lora_checks single OUT.json            # 1 GPU: parity with torch+peft, export, checkpoint
    torchrun ... -m tests.gpu.lora_checks layout OUT.json --tp 2  # one layout (TP / PP), adapters only train
    tests/gpu/run_on_device.sh lora                            # all of it on 4 GPUs in one device call

Same data, model shape and helpers as `megatron_checks.py` (GSM8K, GPT-2 BPE, the 77 M Llama shape).
LoRA: rank 8, alpha 16, all targets, no dropout, lr warm-up to 1e-3.
"""

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sft_trainer.config.schema import LoraConfig, SFTConfig, TrainingConfig
from tests.gpu.megatron_checks import (
    ROWS_PER_STEP,
    _curve_stats,
    _free,
    device_name,
    global_tokens,
    gsm8k_samples,
    hf_config,
    hf_model,
    lr_at,
    rel_errors,
    sft_config,
    step_batches,
    torch_backend,
)

LORA = {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["all"]}
PEAK_LR = 1e-3


def lora_config(**layout: Any) -> SFTConfig:
    """`sft_config` with `training.method: lora`."""
    base = sft_config(**layout)
    return base.model_copy(update={"training": TrainingConfig(method="lora", lora=LoraConfig(**LORA))})


def peft_init(model: Any, config: SFTConfig) -> dict[str, torch.Tensor]:
    """Fresh peft adapters for `model` (as the torch backend draws them), in PEFT naming."""
    import peft

    from sft_trainer import lora

    wrapped = lora.apply_lora(copy.deepcopy(model), config.training.lora)
    return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(wrapped).items()}


def lora_backend(config: SFTConfig, cfg: Any, base: Any, adapter: dict[str, torch.Tensor] | None = None) -> Any:
    """A MegatronLoraBackend on `base`'s HF weights (adapters: `adapter`, else the seeded init)."""
    from sft_trainer.backends.megatron.lora import MegatronLoraBackend

    return MegatronLoraBackend(config, cfg, base.state_dict(), adapter_state=adapter)


def train(backend: Any, batches: Sequence[Any], samples: Sequence[Any], first: int = 0) -> list[float]:
    """Losses of `train_step` over prepared batches (LoRA learning rate)."""
    return [
        backend.train_step(micro, global_tokens(samples, first + i), lr_at(first + i, peak=PEAK_LR)).loss
        for i, micro in enumerate(batches)
    ]


def _numel(params: Any) -> int:
    return int(sum(p.numel() for p in params))


def checkpoint_facts(directory: Path) -> dict[str, Any]:
    """Keys and bytes of a LoRA checkpoint: every tensor must belong to an adapter."""
    from megatron.core import dist_checkpointing

    keys = sorted(dist_checkpointing.load_tensors_metadata(str(directory / "megatron")))
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return {
        "tensor_keys": len(keys),
        "non_adapter_keys": [k for k in keys if "_lora." not in k][:10],
        "example_keys": keys[:3],
        "bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "files": files[:20],
    }


def check_lora(steps: int = 100, save_at: int = 90) -> dict[str, Any]:
    """Megatron LoRA vs torch+peft LoRA (same base, same adapters), export to peft, adapter-only checkpoint."""
    import peft
    from transformers import AutoModelForCausalLM

    samples = gsm8k_samples(steps * ROWS_PER_STEP)
    batches = step_batches(samples, steps, packed=False)
    cfg = hf_config("llama")
    config = lora_config()
    base = hf_model(cfg)
    init = peft_init(base, config)
    result: dict[str, Any] = {"steps": steps, "lora": LORA, "peak_lr": PEAK_LR}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, final = Path(tmp) / "ckpt", Path(tmp) / "final"
        mg = lora_backend(config, cfg, base, init)
        params = [p for chunk in mg.chunks for p in chunk.parameters()]
        result["params"] = {
            "trainable": _numel(p for p in params if p.requires_grad),
            "frozen": _numel(p for p in params if not p.requires_grad),
            "adapters": _numel(mg.lora.parameters()),
            "optimizer": _numel(mg.optimizer.get_parameters()),
            "grad_buffers": int(sum(b.numel for m in mg.model for b in m.buffers)),
        }
        before = mg.gather_hf_state_dict()
        torch.cuda.synchronize()
        start = time.perf_counter()
        losses = train(mg, batches[:save_at], samples)
        mg.save_checkpoint(ckpt)
        losses += train(mg, batches[save_at:], samples, save_at)
        torch.cuda.synchronize()
        result["megatron_seconds"] = time.perf_counter() - start
        after = mg.gather_hf_state_dict()
        assert before is not None and after is not None
        result["base_max_abs_change"] = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
        mg.export_hf(final)
        ids = torch.randint(0, cfg.vocab_size, (2, 128))
        ours = mg.logits(ids.cuda())
        _free(mg)
        result["checkpoint"] = checkpoint_facts(ckpt)
        resumed_backend = lora_backend(config, cfg, hf_model(cfg))  # seeded adapters, replaced by the checkpoint
        resumed_backend.load_checkpoint(ckpt)
        resumed = train(resumed_backend, batches[save_at:], samples, save_at)
        _free(resumed_backend)
        result["resume_max_abs_diff"] = max(abs(a - b) for a, b in zip(losses[save_at:], resumed, strict=True))

        tb = torch_backend(config, hf_model(cfg))
        peft.set_peft_model_state_dict(tb.hf_model, init)
        now = peft.get_peft_model_state_dict(tb.hf_model)
        result["torch_init_max_abs_diff"] = max(float((now[k].cpu() - init[k]).abs().max()) for k in init)
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch_losses = train(tb, batches, samples)
        torch.cuda.synchronize()
        result["torch_seconds"] = time.perf_counter() - start
        _free(tb)

        result["losses"] = {"megatron": losses, "torch": torch_losses, "megatron_resumed_tail": resumed}
        result["first_last"] = {"megatron": (losses[0], losses[-1]), "torch": (torch_losses[0], torch_losses[-1])}
        result["megatron_vs_torch"] = _curve_stats(losses, torch_losses)

        result["export_files"] = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
        with torch.no_grad():
            hf_base = hf_model(cfg).cuda()
            reference = peft.PeftModel.from_pretrained(hf_base, str(final / "adapter")).eval()
            ref = reference(input_ids=ids.cuda()).logits.float()
            peft_bf16 = reference.to(torch.bfloat16)(input_ids=ids.cuda()).logits.float()
            merged: Any = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16)
            merged = merged.cuda().eval()
            merged_logits = merged(input_ids=ids.cuda()).logits.float()
        adapter_norm = float(
            sum(
                v.float().norm() ** 2
                for k, v in peft.load_peft_weights(str(final / "adapter")).items()
                if "lora_B" in k
            )
            ** 0.5
        )
        result["export"] = {
            "lora_B_norm": adapter_norm,
            "megatron_vs_peft_fp32": rel_errors(ours, ref),
            "peft_bf16_vs_peft_fp32": rel_errors(peft_bf16, ref),
            "merged_bf16_vs_peft_fp32": rel_errors(merged_logits, ref),
        }
    ok_parity = result["megatron_vs_torch"]["max_step_rel"] < 0.01
    ok_export = result["export"]["megatron_vs_peft_fp32"]["norm_rel"] < 2e-2 and adapter_norm > 0
    ok_ckpt = not result["checkpoint"]["non_adapter_keys"] and result["resume_max_abs_diff"] < 1e-4
    result["ok"] = ok_parity and ok_export and ok_ckpt and result["base_max_abs_change"] == 0.0
    return result


def run_lora_layout(tp: int, pp: int, steps: int, save_at: int | None, load: str | None, save: str | None) -> dict:
    """Train `steps` LoRA steps under a layout (seeded adapters: the same init for every layout)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    samples = gsm8k_samples(steps * ROWS_PER_STEP)
    cfg = hf_config("llama")
    backend = lora_backend(lora_config(tp=tp, pp=pp, world=world), cfg, hf_model(cfg))
    batches = step_batches(
        samples, steps, packed=True, dp_rank=backend.data_parallel_rank, dp_size=backend.data_parallel_size
    )
    first = 0
    if load:
        backend.load_checkpoint(Path(load))
        first = save_at or 0
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(first, steps):
        losses.append(backend.train_step(batches[step], global_tokens(samples, step), lr_at(step, PEAK_LR)).loss)
        if save and save_at is not None and step + 1 == save_at:
            backend.save_checkpoint(Path(save))
    return {
        "tp": tp,
        "pp": pp,
        "dp": backend.data_parallel_size,
        "first_step": first,
        "losses": losses,
        "seconds": time.perf_counter() - start,
        "trainable": _numel(p for chunk in backend.chunks for p in chunk.parameters() if p.requires_grad),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`single OUT.json` (one GPU) or `layout OUT.json --tp/--pp ...` (under torchrun)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    single = sub.add_parser("single")
    single.add_argument("out")
    single.add_argument("--steps", type=int, default=100)
    layout = sub.add_parser("layout")
    layout.add_argument("out")
    layout.add_argument("--tp", type=int, default=1)
    layout.add_argument("--pp", type=int, default=1)
    layout.add_argument("--steps", type=int, default=40)
    layout.add_argument("--save-at", type=int, default=None)
    layout.add_argument("--save", default=None)
    layout.add_argument("--load", default=None)
    args = parser.parse_args(argv)
    from sft_trainer.backends.megatron.backend import prefer_torch_cudnn

    prefer_torch_cudnn()
    import megatron.core  # noqa: F401  (TE before any cuDNN use by PyTorch)

    if args.command == "single":
        start = time.perf_counter()
        try:
            result = check_lora(args.steps)
        except Exception as error:
            import traceback

            traceback.print_exc()
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:3000]}
        result["device"] = device_name()
        result["wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}, default=str)[:4000])
        return 0 if result["ok"] else 1
    try:
        try:
            result = run_lora_layout(args.tp, args.pp, args.steps, args.save_at, args.load, args.save)
        except Exception:
            import traceback

            Path(f"{args.out}.rank{os.environ.get('RANK', '0')}.err").write_text(traceback.format_exc())
            raise
        if torch.distributed.get_rank() == 0:
            result["device"] = device_name()
            Path(args.out).write_text(json.dumps(result, indent=1))
            print(
                json.dumps({k: v for k, v in result.items() if k != "losses"}),
                result["losses"][0],
                result["losses"][-1],
            )
        torch.distributed.barrier()
    finally:
        if torch.distributed.is_initialized():  # on every exit: no gloo/NCCL thread left at exit
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
