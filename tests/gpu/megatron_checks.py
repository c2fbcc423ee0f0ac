"""GPU checks of the megatron backend, shared by `tests/gpu/test_megatron.py` and the device runner.

Each `check_*` function returns a dict of measured numbers (and `ok`); the pytest tests assert on
them and `python -m tests.gpu.megatron_checks ...` runs them in one process and writes JSON, so one
device call measures everything (see `tests/gpu/run_on_device.sh`).

Data: GSM8K rows (question -> answer, answer-only loss) tokenised with the GPT-2 BPE, from
`$KUBE_SFT_DATA` (default `../shared/data`; the device runner copies the files to `.gpudata/`).
"""

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft_trainer.backends.base import StepResult
from sft_trainer.config.schema import SFTConfig
from sft_trainer.data.collate import collate
from sft_trainer.data.types import IGNORE_INDEX, MicroBatch, Sample

# A small Llama shape (GQA, untied, GPT-2 vocabulary): ~77 M parameters, seconds per 100 steps.
SMALL = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
}
MAX_LEN = 512
ROWS_PER_STEP = 16
MICRO_ROWS = 4


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """Where gsm8k_train.jsonl, encoder.json and vocab.bpe are."""
    for candidate in (os.environ.get("KUBE_SFT_DATA"), ".gpudata", "../shared/data"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError("no data directory: set KUBE_SFT_DATA")


def _find(name: str) -> Path:
    root = data_dir()
    hits = [root / name, root / "instruct" / name, root / "tokenizers" / "gpt2" / name]
    for hit in hits:
        if hit.exists():
            return hit
    raise FileNotFoundError(f"{name} not under {root}")


def gpt2_tokenizer() -> Any:
    """The GPT-2 BPE (50,257 tokens) from encoder.json + vocab.bpe."""
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer(vocab=str(_find("encoder.json")), merges=str(_find("vocab.bpe")))


def gsm8k_samples(count: int, max_len: int = MAX_LEN) -> list[Sample]:
    """The first `count` GSM8K rows as single-example samples: loss on the answer and the final EOS."""
    tokenizer = gpt2_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    samples: list[Sample] = []
    with open(_find("gsm8k_train.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            prompt = tokenizer.encode(f"Question: {row['question']}\nAnswer:", add_special_tokens=False)
            answer = [*tokenizer.encode(" " + row["answer"], add_special_tokens=False), eos]
            ids = (prompt + answer)[:max_len]
            targets = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            # position t predicts token t+1: the loss covers answer tokens (and EOS)
            for t in range(len(prompt) - 1, len(ids) - 1):
                targets[t] = ids[t + 1]
            samples.append(
                Sample(
                    input_ids=np.asarray(ids, dtype=np.int32),
                    labels=targets,
                    position_ids=np.arange(len(ids), dtype=np.int32),
                    seq_lens=np.asarray([len(ids)], dtype=np.int32),
                )
            )
            if len(samples) == count:
                break
    return samples


def pack(samples: Sequence[Sample], capacity: int) -> list[Sample]:
    """First-fit packing of whole examples into rows of at most `capacity` tokens (order kept per row)."""
    bins: list[list[Sample]] = []
    for sample in sorted(samples, key=lambda s: -len(s.input_ids)):
        for row in bins:
            if sum(len(s.input_ids) for s in row) + len(sample.input_ids) <= capacity:
                row.append(sample)
                break
        else:
            bins.append([sample])
    return [
        Sample(
            input_ids=np.concatenate([s.input_ids for s in row]),
            labels=np.concatenate([s.labels for s in row]),
            position_ids=np.concatenate([s.position_ids for s in row]),
            seq_lens=np.concatenate([s.seq_lens for s in row]),
        )
        for row in bins
    ]


def step_batches(
    samples: Sequence[Sample], steps: int, packed: bool, dp_rank: int = 0, dp_size: int = 1
) -> list[list[MicroBatch]]:
    """Per optimizer step, this DP rank's micro-batches; the same examples form each step either way."""
    out = []
    for step in range(steps):
        rows = list(samples[step * ROWS_PER_STEP : (step + 1) * ROWS_PER_STEP])
        mine = rows[dp_rank::dp_size]
        if packed:
            bins = pack(mine, 2 * MAX_LEN)
            out.append([collate([b], pad_id=0) for b in bins])
        else:
            out.append([collate(mine[i : i + MICRO_ROWS], pad_id=0) for i in range(0, len(mine), MICRO_ROWS)])
    return out


def global_tokens(samples: Sequence[Sample], step: int) -> int:
    """Loss tokens of a whole step (all ranks)."""
    return sum(s.num_loss_tokens for s in samples[step * ROWS_PER_STEP : (step + 1) * ROWS_PER_STEP])


def lr_at(step: int, peak: float = 3e-4, warmup: int = 10) -> float:
    """Linear warmup then constant."""
    return peak * min(1.0, (step + 1) / warmup)


# ---------------------------------------------------------------------------------------------
# models and backends
# ---------------------------------------------------------------------------------------------


def hf_config(kind: str = "llama", vocab: int = 50257, **overrides: Any) -> Any:
    """A small HF config of one family."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    args = {**SMALL, "vocab_size": vocab, **overrides}
    if kind == "llama":
        return LlamaConfig(**args, architectures=["LlamaForCausalLM"])
    if kind == "llama-tied":
        return LlamaConfig(**args, tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    if kind == "llama3-rope":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256, "rope_theta": 500000.0}  # fmt: skip
        return LlamaConfig(**args, rope_parameters=rope, architectures=["LlamaForCausalLM"])
    if kind == "qwen2":
        return Qwen2Config(**args, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])
    if kind == "mistral":
        return MistralConfig(**args, sliding_window=None, architectures=["MistralForCausalLM"])
    raise ValueError(kind)


def hf_model(config: Any, seed: int = 1234) -> Any:
    """A randomly initialised HF causal LM in float32 on the CPU (norms and biases randomised too)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
    return model.eval()


def sft_config(tp: int = 1, pp: int = 1, vpp: int | None = None, world: int = 1, **parallel: Any) -> SFTConfig:
    """An SFTConfig for the checks (the data block is not read: batches are built here)."""
    dp = world // (tp * pp * parallel.get("context_parallel_size", 1))
    return SFTConfig.model_validate(
        {
            "model": {"source": "random", "architecture": {"hidden_size": 512}, "tokenizer": {"type": "byte"}},
            "data": {"train_file": "unused.jsonl", "max_seq_length": MAX_LEN},
            "trainer": {
                "micro_batch_size": MICRO_ROWS,
                "global_batch_size": ROWS_PER_STEP if ROWS_PER_STEP % (MICRO_ROWS * dp) == 0 else MICRO_ROWS * dp,
                "devices": world,
                "gradient_clip_val": 1.0,
                "precision": "bf16",
                "seed": 1234,
            },
            "optim": {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.98], "eps": 1e-8},
            "parallelism": {
                "backend": "megatron",
                "tensor_model_parallel_size": tp,
                "pipeline_model_parallel_size": pp,
                "virtual_pipeline_model_parallel_size": vpp,
                "distributed_timeout_seconds": 60,
                **parallel,
            },
        }
    )


def megatron_backend(config: SFTConfig, model: Any | None, hf_cfg: Any | None = None) -> Any:
    """A MegatronBackend starting from `model`'s weights (None: megatron's random init)."""
    from sft_trainer.backends.megatron import MegatronBackend

    if model is None:
        return MegatronBackend(config, hf_cfg, None)
    return MegatronBackend(config, hf_cfg if hf_cfg is not None else model.config, model.state_dict())


def train(
    backend: Any, batches: list[list[MicroBatch]], samples: Sequence[Sample], first_step: int = 0
) -> list[StepResult]:
    """Drive `train_step` over prepared batches (step index offset by `first_step`)."""
    results = []
    for index, micro in enumerate(batches):
        step = first_step + index
        results.append(backend.train_step(micro, global_tokens(samples, step), lr_at(step)))
    return results


def rel_errors(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """max |a-b| / max |ref|, mean |a-b| / mean |ref| and ||a-b|| / ||ref||."""
    diff = (ours.double() - ref.double()).abs()
    ref = ref.double().abs()
    return {
        "max_rel": float(diff.max() / ref.max()),
        "mean_rel": float(diff.mean() / ref.mean()),
        "norm_rel": float(diff.norm() / ref.norm()),
    }


def _free(*objects: Any) -> None:
    del objects
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# checks (single GPU)
# ---------------------------------------------------------------------------------------------


def check_logits(kind: str, seq: int = 256, batch: int = 2) -> dict[str, Any]:
    """HF (fp32 and bf16) vs megatron (bf16, TE) logits on the same random tokens."""
    cfg = hf_config(kind)
    model = hf_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.no_grad():
        ref = model.cuda()(ids.cuda()).logits.float()
        hf_bf16 = model.to(torch.bfloat16)(ids.cuda()).logits.float()
    model.float().cpu()
    backend = megatron_backend(sft_config(), model)
    ours = backend.logits(ids.cuda())
    result: dict[str, Any] = {
        "model": kind,
        "megatron_vs_hf_fp32": rel_errors(ours, ref),
        "hf_bf16_vs_hf_fp32": rel_errors(hf_bf16, ref),
        "megatron_vs_hf_bf16": rel_errors(ours, hf_bf16),
    }
    meg, base = result["megatron_vs_hf_fp32"]["norm_rel"], result["hf_bf16_vs_hf_fp32"]["norm_rel"]
    result["ok"] = meg < 2e-2 and meg < 3 * base + 1e-3
    _free(backend, model)
    return result


def check_packed(lengths: Sequence[int] = (37, 200, 61, 5)) -> dict[str, Any]:
    """Logits of examples packed into one THD row == logits of each example alone."""
    cfg = hf_config("llama")
    model = hf_model(cfg)
    backend = megatron_backend(sft_config(), model)
    seqs = [torch.randint(0, cfg.vocab_size, (n,)) for n in lengths]
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    packed = backend.logits(torch.cat(seqs)[None].cuda(), cu_seqlens=cu)[0]
    diffs, rels = [], []
    for index, seq in enumerate(seqs):
        alone = backend.logits(seq[None].cuda())[0]
        part = packed[int(cu[index]) : int(cu[index + 1])]
        diffs.append(float((part - alone).abs().max()))
        rels.append(rel_errors(part, alone)["max_rel"])
    _free(backend, model)
    return {"lengths": list(lengths), "max_abs_diff": max(diffs), "max_rel": max(rels), "ok": max(rels) < 1e-2}


def torch_backend(config: SFTConfig, model: Any) -> Any:
    """The trainer's torch backend on this GPU (same init as the megatron one)."""
    from sft_trainer.backends.torch_backend import TorchBackend
    from sft_trainer.distributed import current_env

    return TorchBackend(config, model, current_env(), torch.device("cuda", torch.cuda.current_device()))


def _curve_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    rel = [abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)]
    return {
        "max_step_rel": max(rel),
        "mean_step_rel": float(np.mean(rel)),
        "last10_mean_rel": abs(float(np.mean(a[-10:])) - float(np.mean(b[-10:]))) / float(np.mean(b[-10:])),
    }


def check_training_parity(steps: int = 100) -> dict[str, Any]:
    """Megatron vs torch backend (unpacked), and megatron packed vs unpacked, same examples per step."""
    samples = gsm8k_samples(steps * ROWS_PER_STEP)
    cfg = hf_config("llama")
    unpacked = step_batches(samples, steps, packed=False)
    packed = step_batches(samples, steps, packed=True)
    curves: dict[str, list[float]] = {}
    timing: dict[str, float] = {}
    runs: list[tuple[str, Callable[[], Any], list[list[MicroBatch]]]] = [
        ("megatron", lambda: megatron_backend(sft_config(), hf_model(cfg)), unpacked),
        ("megatron_packed", lambda: megatron_backend(sft_config(), hf_model(cfg)), packed),
        ("torch", lambda: torch_backend(sft_config(), hf_model(cfg)), unpacked),
    ]
    for name, make, batches in runs:
        try:
            backend = make()
        except ImportError as error:  # the torch backend is another engineer's; report, don't crash
            curves[name] = []
            timing[name] = math.nan
            print(f"{name}: {error}", file=sys.stderr)
            continue
        torch.cuda.synchronize()
        start = time.perf_counter()
        curves[name] = [r.loss for r in train(backend, batches, samples)]
        torch.cuda.synchronize()
        timing[name] = time.perf_counter() - start
        _free(backend)
    result: dict[str, Any] = {
        "steps": steps,
        "rows_per_step": ROWS_PER_STEP,
        "losses": curves,
        "seconds": timing,
        "first_last": {k: (v[0], v[-1]) for k, v in curves.items() if v},
    }
    result["megatron_packed_vs_unpacked"] = _curve_stats(curves["megatron_packed"], curves["megatron"])
    if curves["torch"]:
        result["megatron_vs_torch"] = _curve_stats(curves["megatron"], curves["torch"])
    ok = result["megatron_packed_vs_unpacked"]["max_step_rel"] < 1e-2
    if "megatron_vs_torch" in result:
        ok = ok and result["megatron_vs_torch"]["max_step_rel"] < 1e-2
    result["ok"] = ok
    return result


def check_checkpoint_and_export(steps: int = 10, save_after: int = 5) -> dict[str, Any]:
    """Resume exact to the step; HF export loads in transformers and gives the same logits."""
    from transformers import AutoModelForCausalLM

    samples = gsm8k_samples(steps * ROWS_PER_STEP)
    batches = step_batches(samples, steps, packed=True)
    cfg = hf_config("llama")
    with tempfile.TemporaryDirectory() as tmp:
        first = megatron_backend(sft_config(), hf_model(cfg))
        before = train(first, batches[:save_after], samples)
        start = time.perf_counter()
        first.save_checkpoint(Path(tmp) / "ckpt")
        save_seconds = time.perf_counter() - start
        continued = [r.loss for r in train(first, batches[save_after:], samples, save_after)]
        first.export_hf(Path(tmp) / "final")
        ids = torch.randint(0, cfg.vocab_size, (2, 128))
        ours = first.logits(ids.cuda())
        _free(first)
        resumed_backend = megatron_backend(sft_config(), None, hf_cfg=cfg)
        resumed_backend.load_checkpoint(Path(tmp) / "ckpt")
        resumed = [r.loss for r in train(resumed_backend, batches[save_after:], samples, save_after)]
        _free(resumed_backend)
        exported: Any = AutoModelForCausalLM.from_pretrained(Path(tmp) / "final", dtype=torch.bfloat16)
        exported = exported.cuda().eval()
        with torch.no_grad():
            theirs = exported(ids.cuda()).logits.float()
        files = sorted(p.name for p in (Path(tmp) / "final").iterdir())
    resume_diff = max(abs(a - b) for a, b in zip(continued, resumed, strict=True))
    export_err = rel_errors(ours, theirs)
    return {
        "losses_before_save": [r.loss for r in before],
        "continued": continued,
        "resumed": resumed,
        "resume_max_abs_diff": resume_diff,
        "save_seconds": save_seconds,
        "export_files": files,
        "export_logits_vs_megatron": export_err,
        "ok": resume_diff < 1e-6 * max(continued) + 1e-5 and export_err["norm_rel"] < 2e-2,
    }


def check_failures() -> dict[str, Any]:
    """A NaN weight gives a skipped step (not applied); an impossible batch raises torch.OutOfMemoryError."""
    samples = gsm8k_samples(ROWS_PER_STEP)
    batches = step_batches(samples, 1, packed=True)
    backend = megatron_backend(sft_config(), hf_model(hf_config("llama")))
    with torch.no_grad():
        backend.chunks[0].decoder.layers[0].mlp.linear_fc2.weight.fill_(float("nan"))
    nan_step = train(backend, batches, samples)[0]
    n, piece = 2_000_000, 1000  # 2 M tokens in 1000-token examples: activations alone need > 200 GB
    huge = collate(
        [
            Sample(
                input_ids=np.zeros(n, dtype=np.int32),
                labels=np.zeros(n, dtype=np.int32),
                position_ids=np.tile(np.arange(piece, dtype=np.int32), n // piece),
                seq_lens=np.full(n // piece, piece, dtype=np.int32),
            )
        ],
        pad_id=0,
    )
    oom = "none"
    try:
        backend.train_step([huge], n, 1e-4)
    except torch.OutOfMemoryError as error:
        oom = f"torch.OutOfMemoryError: {str(error).splitlines()[0][:120]}"
    _free(backend)
    return {
        "nan_step": {"loss": nan_step.loss, "grad_norm": nan_step.grad_norm, "skipped": nan_step.skipped},
        "oom": oom,
        "ok": nan_step.skipped and oom.startswith("torch.OutOfMemoryError"),
    }


# ---------------------------------------------------------------------------------------------
# multi-GPU layouts (one process per GPU under torchrun)
# ---------------------------------------------------------------------------------------------


def run_layout(
    tp: int,
    pp: int,
    vpp: int | None,
    steps: int,
    save_at: int | None,
    load: str | None,
    save: str | None,
    **parallel: Any,
) -> dict[str, Any]:
    """Train `steps` steps under a layout; optionally save after `save_at` or start from `load`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    samples = gsm8k_samples(steps * ROWS_PER_STEP)
    cfg = hf_config("llama")
    config = sft_config(tp=tp, pp=pp, vpp=vpp, world=world, **parallel)
    backend = megatron_backend(config, None if load else hf_model(cfg), hf_cfg=cfg)
    batches = step_batches(
        samples, steps, packed=True, dp_rank=backend.data_parallel_rank, dp_size=backend.data_parallel_size
    )
    first = 0
    if load:
        backend.load_checkpoint(Path(load))
        first = save_at or 0
    losses: list[float] = []
    extra: dict[str, Any] = {}
    if parallel.get("context_parallel_size", 1) > 1:
        extra["cp_indices_match_te"] = cp_indices_match_te(backend, batches[first])
    start = time.perf_counter()
    for step in range(first, steps):
        losses.append(backend.train_step(batches[step], global_tokens(samples, step), lr_at(step)).loss)
        if save and save_at is not None and step + 1 == save_at:
            backend.save_checkpoint(Path(save))
    seconds = time.perf_counter() - start
    return {
        "tp": tp,
        "pp": pp,
        "vpp": vpp,
        "dp": backend.data_parallel_size,
        "first_step": first,
        "losses": losses,
        "seconds": seconds,
        **parallel,
        **extra,
    }


def cp_indices_match_te(backend: Any, micro_batches: list[MicroBatch]) -> bool:
    """`thd.cp_partition_indices` (numpy) == TE's `thd_get_partitioned_indices` on this step's streams."""
    import transformer_engine_torch as tex
    from megatron.core import parallel_state as ps

    from sft_trainer.backends.megatron.thd import cp_partition_indices

    cp, rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    for thd in backend._thd_batches(micro_batches):
        cu = torch.from_numpy(thd.cu_seqlens).cuda()
        theirs = tex.thd_get_partitioned_indices(cu, len(thd.tokens), cp, rank).cpu().numpy()
        if not np.array_equal(theirs, cp_partition_indices(thd.cu_seqlens, cp, rank)):
            return False
    return True


def device_name() -> str:
    """The card, e.g. 'NVIDIA H100 80GB HBM3'."""
    return torch.cuda.get_device_name(0)


def main(argv: Sequence[str] | None = None) -> int:
    """`single OUT.json` runs the single-GPU checks; `layout ...` runs one layout (under torchrun)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    single = sub.add_parser("single")
    single.add_argument("out")
    single.add_argument("--only", default="")
    layout = sub.add_parser("layout")
    layout.add_argument("out")
    layout.add_argument("--tp", type=int, default=1)
    layout.add_argument("--pp", type=int, default=1)
    layout.add_argument("--cp", type=int, default=1)
    layout.add_argument("--vpp", type=int, default=None)
    layout.add_argument("--steps", type=int, default=40)
    layout.add_argument("--save-at", type=int, default=None)
    layout.add_argument("--save", default=None)
    layout.add_argument("--load", default=None)
    layout.add_argument("--sequence-parallel", action="store_true")
    layout.add_argument("--fp8", default="none")
    layout.add_argument("--recompute", default="none")
    args = parser.parse_args(argv)
    from sft_trainer.backends.megatron.backend import prefer_torch_cudnn

    prefer_torch_cudnn()
    print("CUDNN_HOME", os.environ.get("CUDNN_HOME"), flush=True)
    import megatron.core  # noqa: F401  (TE before any cuDNN use by PyTorch: see prefer_torch_cudnn)

    if args.command == "layout":
        extra = {
            "sequence_parallel": args.sequence_parallel,
            "fp8": args.fp8,
            "activation_recompute": args.recompute,
            "context_parallel_size": args.cp,
        }
        try:
            try:
                result = run_layout(args.tp, args.pp, args.vpp, args.steps, args.save_at, args.load, args.save, **extra)
            except Exception:
                import traceback

                Path(f"{args.out}.rank{os.environ.get('RANK', '0')}.err").write_text(traceback.format_exc())
                raise
            if torch.distributed.get_rank() == 0:
                result["device"] = device_name()
                Path(args.out).write_text(json.dumps(result, indent=1))
                print(
                    json.dumps({k: v for k, v in result.items() if k != "losses"}),
                    "losses[0,-1]",
                    result["losses"][0],
                    result["losses"][-1],
                )
            torch.distributed.barrier()
        finally:
            if torch.distributed.is_initialized():  # on every exit: no gloo/NCCL thread left at exit
                torch.distributed.destroy_process_group()
        return 0
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        **{
            f"logits_{k}": functools.partial(check_logits, k)
            for k in ("llama", "llama-tied", "llama3-rope", "qwen2", "mistral")
        },
        "packed_thd": check_packed,
        "training_parity": check_training_parity,
        "checkpoint_export": check_checkpoint_and_export,
        "failures": check_failures,
    }
    wanted = [name for name in checks if not args.only or any(part in name for part in args.only.split(","))]
    results: dict[str, Any] = {"device": device_name()}
    for name in wanted:
        start = time.perf_counter()
        try:
            results[name] = checks[name]()
        except Exception as error:  # keep going: one device call measures everything
            import traceback

            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
        results[name]["wall_s"] = round(time.perf_counter() - start, 1)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
        print(f"== {name}: ok={results[name].get('ok')} ({results[name]['wall_s']} s)", flush=True)
    print("\n| check | ok | numbers |\n| --- | --- | --- |")
    for name in wanted:
        numbers = {
            k: v
            for k, v in results[name].items()
            if k not in ("losses", "ok", "continued", "resumed", "losses_before_save")
        }
        print(f"| {name} | {results[name].get('ok')} | {json.dumps(numbers, default=str)[:600]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
