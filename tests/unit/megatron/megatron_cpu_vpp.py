"""The megatron backend's training step under PP=2 with and without interleaving (VPP), on the CPU.

    PYTHONPATH=<megatron-core>:trainer_image:. python tests/unit/megatron/megatron_cpu_vpp.py \
        --rank R --world 2 --port P --pp 2 [--vpp 2] [--micro-batches 3] [--distributed-optimizer] [--overlap] \
        [--batched-p2p]

Run by `test_vpp_megatron_cpu.py` (one gloo process per pipeline stage) where megatron-core imports;
`--batched-p2p` keeps megatron's default `batch_p2p_comm=True` under VPP (the bug, for contrast).
Real megatron-core modules (local layer spec: no Transformer Engine on the CPU) and the backend's
own code paths:
`MegatronBackend._wrap_ddp`, `_make_optimizer`, `_install_schedule_hooks`, `_thd_batches` (with the
interleaving's padding micro-batches), `_run_schedule` and `train_step`, on an instance built without
`__init__` (which needs CUDA and TE). Only the pieces that need TE or CUDA are replaced:

- `_device_batch`: the THD stream stays on the CPU without `PackedSeqParams` (the local attention has
  no THD kernel); every micro-batch is one example, so a causal mask over the stream equals THD;
- `_forward_step`: passes that causal mask;
- CUDA-only calls in megatron, patched in `_patch_megatron_for_cpu` (see there).

A tiny Llama (4 layers, fp32) starts from the same HF weights (through `conversion.shard_for_rank`)
in every layout; the same rows every step (the loss must fall), Adam without clipping (megatron's
clipping asserts CUDA tensors); `--distributed-optimizer` (its constructor only accepts parameters
whose `type()` names CUDA: patched, see `_patch_tensor_type_for_distributed_optimizer`) and
`--overlap` (grad reduce and param gather) give the backend's defaults. Rank 0 prints one JSON line:
HF's own loss on the rows, the forward-only schedule's loss, the per-step losses and grad norms.
"""

import argparse
import contextlib
import json
import os
import types
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STEPS = 5
VOCAB = 256


def _patch_megatron_for_cpu() -> None:
    """Narrow CPU stand-ins for CUDA-only calls megatron makes on this path (harness only):

    - `torch.cuda.current_device()` -> "cpu" (p2p receive buffers, RoPE, buffers);
    - `torch.cuda.synchronize()` -> no-op (p2p after batched isend/irecv);
    - `torch.cuda.current_stream()` / `Stream` / `stream()` -> a stream that never waits (grad buckets);
    - the CUDA RNG tracker's `fork()` -> a null context (dropout is 0 here);
    - `schedules.torch.zeros(..., device="cuda")` (the token counter) -> on the CPU;
    - `torch.zeros` / `torch.tensor(..., device="cuda")` in `optimizer` (flags), `clip_grads` and `utils`
      (the grad norm)
      -> on the CPU (clipping itself is off here: it asserts CUDA tensors).
    """
    from megatron.core import utils as mutils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as mopt
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    torch.cuda.synchronize = lambda *a, **k: None
    null_stream = types.SimpleNamespace(wait_event=lambda *a: None, wait_stream=lambda *a: None)
    torch.cuda.current_stream = lambda *a, **k: null_stream  # type: ignore[assignment]
    torch.cuda.Stream = lambda *a, **k: null_stream  # type: ignore[assignment,misc]
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()

    def on_cpu(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "device": "cpu"} if str(kwargs.get("device", "")).startswith("cuda") else kwargs

    cpu_torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    cpu_torch.zeros = lambda *a, **k: torch.zeros(*a, **on_cpu(k))
    cpu_torch.tensor = lambda *a, **k: torch.tensor(*a, **on_cpu(k))
    schedules.torch = cpu_torch
    mopt.torch = cpu_torch
    clip_grads.torch = cpu_torch
    mutils.torch = cpu_torch


def _patch_tensor_type_for_distributed_optimizer() -> None:
    """`Tensor.type()` (no arguments) names CPU tensors as CUDA ones: megatron's distributed optimizer
    only accepts `torch.cuda.*Tensor` parameters (harness only, for `--distributed-optimizer`)."""
    original = torch.Tensor.type

    def cuda_named(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        name = original(self, *args, **kwargs)
        if args or kwargs or self.is_cuda:
            return name
        return str(name).replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = cuda_named  # type: ignore[method-assign,assignment]


def _micro_batches(count: int) -> list[Any]:
    """`count` one-example micro-batches (lengths 9..30, a loss-free "prompt" third), always the same rows."""
    from sft_trainer.data.types import IGNORE_INDEX, MicroBatch

    rng = np.random.default_rng(100)
    out = []
    for _ in range(count):
        n = int(rng.integers(9, 31))
        ids = rng.integers(0, VOCAB, n).astype(np.int64)
        labels = np.concatenate([ids[1:], [IGNORE_INDEX]]).astype(np.int64)
        labels[: n // 3] = IGNORE_INDEX  # a "prompt" without loss
        out.append(
            MicroBatch(
                input_ids=ids[None],
                labels=labels[None],
                position_ids=np.arange(n, dtype=np.int64)[None],
                segment_ids=np.ones((1, n), dtype=np.int32),
                cu_seqlens=np.asarray([0, n], dtype=np.int32),
                max_seqlen=n,
                num_loss_tokens=int((labels != IGNORE_INDEX).sum()),
            )
        )
    return out


def main(args: argparse.Namespace) -> None:
    """Train `STEPS` steps through the backend's step code; rank 0 prints the JSON line."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    from sft_trainer.backends.megatron import backend as mb
    from sft_trainer.backends.megatron import conversion as cv
    from sft_trainer.backends.megatron import step as ms
    from sft_trainer.backends.megatron.model import hf_inv_freq, pipeline_p2p_settings
    from sft_trainer.config.schema import SFTConfig

    rank, world, pp, vpp = args.rank, args.world, args.pp, args.vpp
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo")
    ps.initialize_model_parallel(1, pp, virtual_pipeline_model_parallel_size=vpp)
    _patch_megatron_for_cpu()
    if args.distributed_optimizer:
        _patch_tensor_type_for_distributed_optimizer()

    torch.manual_seed(0)
    hf_config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=256, architectures=["LlamaForCausalLM"],
        tie_word_embeddings=False,
    )  # fmt: skip
    base = LlamaForCausalLM(hf_config)
    shape = cv.shape_from_hf_config(hf_config, padded_vocab=256)
    config = SFTConfig.model_validate(
        {
            "model": {"source": "random", "architecture": {"hidden_size": 64}, "tokenizer": {"type": "byte"}},
            "data": {"train_file": "x.jsonl", "max_seq_length": 64},
            "trainer": {"devices": world, "precision": "fp32", "gradient_clip_val": 0.0},
            "optim": {"lr": 1e-2, "weight_decay": 0.01},
            "parallelism": {
                "backend": "megatron",
                "pipeline_model_parallel_size": pp,
                "virtual_pipeline_model_parallel_size": vpp,
                "distributed_optimizer": args.distributed_optimizer,
                "overlap_grad_reduce": args.overlap,
                "overlap_param_gather": args.overlap,
            },
        }
    )
    tconfig = TransformerConfig(  # the backend's model.transformer_config, minus the CUDA fusions
        num_layers=4, hidden_size=64, num_attention_heads=8, num_query_groups=4, kv_channels=8, ffn_hidden_size=96,
        normalization="RMSNorm", layernorm_epsilon=hf_config.rms_norm_eps, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, params_dtype=torch.float32, pipeline_dtype=torch.float32,
        bias_activation_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, variable_seq_lengths=False, calculate_per_token_loss=True,
        deallocate_pipeline_outputs=True,
        **({} if args.batched_p2p else pipeline_p2p_settings(config.parallelism)),
    )  # fmt: skip

    chunks = []
    full = cv.hf_to_megatron({k: v for k, v in base.state_dict().items() if "rotary" not in k}, shape)
    for c in range(vpp or 1):
        vp = c if vpp else None
        chunk = GPTModel(
            config=tconfig,
            transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
            vocab_size=256,
            max_sequence_length=256,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
            position_embedding_type="rope",
            share_embeddings_and_output_weights=False,
            vp_stage=vp,
        )
        chunk.rotary_pos_emb.inv_freq = hf_inv_freq(hf_config)
        local = {}
        for name, tensor in cv.shard_for_rank(
            full, shape, (ps.get_pipeline_model_parallel_rank(), c, 0), 1, pp, vpp
        ).items():
            name = name.replace("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight")
            local[name.replace("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight")] = tensor
        loaded = chunk.load_state_dict(local, strict=False)
        assert not [k for k in loaded.missing_keys if "extra_state" not in k] and not loaded.unexpected_keys, loaded
        chunks.append(chunk)

    class CpuBackend(mb.MegatronBackend):
        """The backend's step code with the CPU batch / forward stand-ins (module docstring)."""

        def _device_batch(self, thd: Any) -> Any:
            return ms.DeviceBatch(
                tokens=torch.from_numpy(thd.tokens)[None],
                position_ids=torch.from_numpy(thd.position_ids)[None],
                labels=torch.from_numpy(thd.labels)[None],
                loss_mask=torch.from_numpy(thd.loss_mask),
                packed=None,
            )

        def _forward_step(self, scale: float, data: Any, model: Any) -> Any:
            from functools import partial

            batch = next(data)
            n = batch.tokens.shape[1]
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)[None, None]
            output = model(batch.tokens, batch.position_ids, mask, labels=batch.labels)
            return output, partial(self._loss, batch.loss_mask, scale)

    backend = CpuBackend.__new__(CpuBackend)
    backend.config = config
    backend.tuning = mb.MegatronTuning(grad_reduce_in_fp32=True)
    backend.tconfig = tconfig
    backend.chunks = chunks
    backend.device = torch.device("cpu")
    backend._cp, backend._example_multiple, backend._token_multiple = 1, 1, 1
    backend._output_processor = None
    backend.model = backend._wrap_ddp()
    backend.optimizer = backend._make_optimizer()
    backend._install_schedule_hooks()

    rows = _micro_batches(args.micro_batches)
    tokens = sum(b.num_loss_tokens for b in rows)
    with torch.no_grad():  # the HF model's loss on the rows: what every layout must start from
        hf_sum = sum(
            torch.nn.functional.cross_entropy(
                base(input_ids=torch.from_numpy(b.input_ids)).logits[0].double(),
                torch.from_numpy(b.labels[0]),
                ignore_index=-100,
                reduction="sum",
            )
            for b in rows
        )
    forward_only = float(backend._run_schedule(rows, 1.0, forward_only=True)) / tokens
    results = [backend.train_step(rows, tokens, lr=1e-2) for _ in range(STEPS)]
    if rank == 0:
        result = {
            "pp": pp,
            "vpp": vpp,
            "hf_loss": float(hf_sum) / tokens,
            "forward_only_loss": forward_only,
            "losses": [r.loss for r in results],
            "grad_norms": [r.grad_norm for r in results],
        }
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--rank", "--world", "--port", "--pp"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--vpp", type=int, default=None)
    parser.add_argument("--micro-batches", type=int, default=3)  # 3: the interleaved path pads to 4
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--overlap", action="store_true")  # overlap_grad_reduce and overlap_param_gather
    parser.add_argument("--batched-p2p", action="store_true")
    main(parser.parse_args())
