"""Hugging Face <-> megatron-core GPTModel (Transformer Engine layer spec) state-dict conversion.

Pure tensor code: no megatron, no Transformer Engine, no device. Every function takes and returns
plain `dict[str, torch.Tensor]` and only copies, slices, concatenates and reshapes, so
HF -> megatron -> HF is bit-exact for any tensor / pipeline / virtual-pipeline split.

Supported Hugging Face families: Llama (GQA, RoPE scaling, tied or untied embeddings), Mistral and
Qwen2 (QKV bias). They share one layout:

    model.embed_tokens.weight                      [V, H]
    model.layers.{i}.input_layernorm.weight        [H]
    model.layers.{i}.self_attn.{q,k,v}_proj.weight [nq*d | nkv*d, H]   (+ .bias for Qwen2)
    model.layers.{i}.self_attn.o_proj.weight       [H, nq*d]
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up}_proj.weight     [F, H]
    model.layers.{i}.mlp.down_proj.weight          [H, F]
    model.norm.weight                              [H]
    lm_head.weight                                 [V, H]   (untied only)

The megatron side (TE spec: the RMSNorms are fused into the following linear layer):

    embedding.word_embeddings.weight                          [Vp, H] vocab-parallel (dim 0)
    decoder.layers.{l}.self_attention.linear_qkv.layer_norm_weight   replicated
    decoder.layers.{l}.self_attention.linear_qkv.weight       [g*(q/g+2)*d, H] per query group
                                                              [q..., k, v], column-parallel
    decoder.layers.{l}.self_attention.linear_qkv.bias         same layout (Qwen2)
    decoder.layers.{l}.self_attention.linear_proj.weight      [H, nq*d] row-parallel (dim 1)
    decoder.layers.{l}.mlp.linear_fc1.layer_norm_weight       replicated
    decoder.layers.{l}.mlp.linear_fc1.weight                  [2F, H]: per TP rank [gate_r; up_r]
    decoder.layers.{l}.mlp.linear_fc2.weight                  [H, F] row-parallel (dim 1)
    decoder.final_layernorm.weight                            replicated, last stage
    output_layer.weight                                       [Vp, H] vocab-parallel, last stage

Both directions and the TP slicing are derived from one table, `params.PARAMS` (name pattern,
transform, TP split), which the LoRA mapping reads too.

RoPE needs no weight permutation: both sides use the rotate-half (non-interleaved) convention.
The vocabulary is zero-padded to `padded_vocab_size` on the way in and cut back on the way out.

A *sharded* megatron state is `{(pp_rank, vp_chunk, tp_rank): local_state_dict}` with layer
indices local to each model chunk, exactly what `GPTModel.state_dict()` holds on that rank
(minus Transformer Engine's `_extra_state` entries). With tied embeddings and more than one
pipeline stage, the last stage holds its own copy of the embedding as `output_layer.weight`
(megatron keeps the two in sync by all-reducing their gradients).
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sft_trainer.backends.megatron import params
from sft_trainer.backends.megatron.params import ParamMapping

StateDict = dict[str, torch.Tensor]
ShardKey = tuple[int, int, int]  # (pipeline rank, virtual-pipeline chunk, tensor rank)
ShardedState = dict[ShardKey, StateDict]

_HF_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class ModelShape:
    """The tensor shapes of a Llama-family decoder, as far as conversion needs them."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    padded_vocab_size: int | None = None

    @property
    def vocab_rows(self) -> int:
        """Rows of the megatron embedding / output layer (the padded vocabulary)."""
        return self.padded_vocab_size or self.vocab_size

    @property
    def queries_per_group(self) -> int:
        """Query heads sharing one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    """Smallest size >= vocab_size divisible by `multiple` x `tensor_parallel` (megatron's rule)."""
    step = multiple * tensor_parallel
    return -(-vocab_size // step) * step


def shape_from_hf_config(config: Any, padded_vocab: int | None = None) -> ModelShape:
    """Read a `ModelShape` from a Hugging Face config object (LlamaConfig, MistralConfig, Qwen2Config)."""
    architectures = set(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "llama")
    if architectures and not architectures & _HF_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {sorted(architectures)}; supported: {sorted(_HF_ARCHITECTURES)}")
    if model_type not in {"llama", "mistral", "qwen2"}:
        raise ValueError(f"unsupported model_type {model_type!r}: llama, mistral or qwen2")
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    qkv_bias = model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
    if getattr(config, "mlp_bias", False):
        raise ValueError("mlp_bias=True is not supported")
    return ModelShape(
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        intermediate_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        padded_vocab_size=padded_vocab,
    )


# ---------------------------------------------------------------------------------------------
# Building blocks (each one a small pure function, inverse pairs side by side)
# ---------------------------------------------------------------------------------------------


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """HF q/k/v (weights [n*d, H] or biases [n*d]) -> megatron's per-group interleaved QKV."""
    groups, d = shape.num_key_value_heads, shape.head_dim
    rest = q.shape[1:]
    per_group = [
        q.reshape(groups, shape.queries_per_group * d, *rest),
        k.reshape(groups, d, *rest),
        v.reshape(groups, d, *rest),
    ]
    return torch.cat(per_group, dim=1).reshape(-1, *rest)


def unpack_qkv(qkv: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `pack_qkv`."""
    groups, d = shape.num_key_value_heads, shape.head_dim
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, (shape.queries_per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [shape.queries_per_group * d, d, d], dim=1)
    return (
        q.reshape(-1, *rest).clone(),
        k.reshape(-1, *rest).clone(),
        v.reshape(-1, *rest).clone(),
    )


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad dim 0 to `rows` (the padded vocabulary)."""
    if tensor.shape[0] > rows:
        raise ValueError(f"cannot pad {tensor.shape[0]} rows down to {rows}")
    if tensor.shape[0] == rows:
        return tensor.clone()
    padding = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding], dim=0)


def _to_megatron(mapping: ParamMapping, tensors: list[torch.Tensor], shape: ModelShape) -> torch.Tensor:
    """The megatron tensor of one table entry from its HF tensors."""
    if mapping.transform == "pad_vocab":
        return pad_rows(tensors[0], shape.vocab_rows)
    if mapping.transform == "qkv":
        q, k, v = tensors
        return pack_qkv(q, k, v, shape)
    if mapping.transform == "gate_up":
        return torch.cat(tensors, dim=0)
    return tensors[0].clone()


def _to_hf(mapping: ParamMapping, tensor: torch.Tensor, shape: ModelShape) -> list[torch.Tensor]:
    """Inverse of `_to_megatron`: the HF tensors of one table entry."""
    if mapping.transform == "pad_vocab":
        return [tensor[: shape.vocab_size].clone()]
    if mapping.transform == "qkv":
        return list(unpack_qkv(tensor, shape))
    if mapping.transform == "gate_up":
        return [half.clone() for half in torch.chunk(tensor, 2, dim=0)]
    return [tensor.clone()]


def _instances(shape: ModelShape) -> Iterator[tuple[ParamMapping, int | None]]:
    return params.instances(shape.num_layers, shape.qkv_bias, shape.tie_word_embeddings)


# ---------------------------------------------------------------------------------------------
# Whole (unsharded) state dicts, global layer indices: both directions from `params.PARAMS`
# ---------------------------------------------------------------------------------------------


def hf_to_megatron(hf: Mapping[str, torch.Tensor], shape: ModelShape) -> StateDict:
    """A Hugging Face state dict -> the full (TP=PP=1) megatron GPTModel state dict."""
    return {
        params.named(m.megatron, i): _to_megatron(m, [hf[params.named(h, i)] for h in m.hf], shape)
        for m, i in _instances(shape)
    }


def megatron_to_hf(mg: Mapping[str, torch.Tensor], shape: ModelShape) -> StateDict:
    """Inverse of `hf_to_megatron`. A tied model gets no `lm_head.weight` (as `save_pretrained` writes it)."""
    out: StateDict = {}
    for m, i in _instances(shape):
        tensors = _to_hf(m, mg[params.named(m.megatron, i)], shape)
        out.update((params.named(h, i), t) for h, t in zip(m.hf, tensors, strict=True))
    return out


# ---------------------------------------------------------------------------------------------
# Tensor parallelism: how each parameter is split across TP ranks (`ParamMapping.tp`)
# ---------------------------------------------------------------------------------------------


def tp_split(name: str, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Split one full megatron parameter into its `tp` tensor-parallel shards."""
    split = params.tp_split_of(name)
    if split == "gated":
        gate, up = torch.chunk(tensor, 2, dim=0)
        return [torch.cat([g, u], dim=0) for g, u in zip(gate.chunk(tp), up.chunk(tp), strict=True)]
    if split == "column":
        _check_divisible(name, tensor.shape[0], tp)
        return [t.clone() for t in tensor.chunk(tp, dim=0)]
    if split == "row":
        _check_divisible(name, tensor.shape[1], tp)
        return [t.clone() for t in tensor.chunk(tp, dim=1)]
    return [tensor.clone() for _ in range(tp)]  # norms: replicated


def tp_merge(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `tp_split`. Replicated tensors must agree on every rank."""
    split = params.tp_split_of(name)
    if split == "gated":
        halves = [torch.chunk(s, 2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    if split == "column":
        return torch.cat(shards, dim=0)
    if split == "row":
        return torch.cat(shards, dim=1)
    for other in shards[1:]:
        if not torch.equal(other, shards[0]):
            raise ValueError(f"replicated tensor {name} differs between tensor-parallel ranks")
    return shards[0].clone()


def _check_divisible(name: str, size: int, tp: int) -> None:
    if size % tp:
        raise ValueError(f"{name}: dimension {size} is not divisible by tensor parallel size {tp}")


# ---------------------------------------------------------------------------------------------
# Pipeline (and virtual pipeline) parallelism: which layers live in which model chunk
# ---------------------------------------------------------------------------------------------


def layer_ranges(num_layers: int, pp: int, vpp: int | None = None) -> dict[tuple[int, int], range]:
    """Global layer indices of each (pipeline rank, virtual chunk), in megatron's interleaved order.

    Chunk `c` of rank `r` holds layers `c * L/vpp + r * L/(pp*vpp)` onwards (L/(pp*vpp) of them).
    """
    chunks = vpp or 1
    if num_layers % (pp * chunks):
        raise ValueError(f"{num_layers} layers do not divide into {pp} pipeline stages x {chunks} virtual chunks")
    per_chunk = num_layers // (pp * chunks)
    return {
        (rank, chunk): range(
            chunk * num_layers // chunks + rank * per_chunk, chunk * num_layers // chunks + (rank + 1) * per_chunk
        )
        for rank in range(pp)
        for chunk in range(chunks)
    }


def _layer_index(name: str) -> int | None:
    if not name.startswith("decoder.layers."):
        return None
    return int(name.split(".")[2])


def _relabel_layer(name: str, index: int) -> str:
    parts = name.split(".")
    parts[2] = str(index)
    return ".".join(parts)


def _chunk_keys(pp: int, vpp: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first chunk, last chunk) of the whole pipeline."""
    return (0, 0), (pp - 1, (vpp or 1) - 1)


def shard_for_rank(
    mg: Mapping[str, torch.Tensor], shape: ModelShape, key: ShardKey, tp: int = 1, pp: int = 1, vpp: int | None = None
) -> StateDict:
    """The local state dict of one rank `(pp_rank, vp_chunk, tp_rank)` from the full megatron state."""
    rank, chunk, tp_rank = key
    layers = layer_ranges(shape.num_layers, pp, vpp)[(rank, chunk)]
    first, last = _chunk_keys(pp, vpp)
    local: dict[str, torch.Tensor] = {}
    for name, tensor in mg.items():
        index = _layer_index(name)
        if index is not None and index in layers:
            local[_relabel_layer(name, index - layers.start)] = tensor
    if (rank, chunk) == first:
        local["embedding.word_embeddings.weight"] = mg["embedding.word_embeddings.weight"]
    if (rank, chunk) == last:
        local["decoder.final_layernorm.weight"] = mg["decoder.final_layernorm.weight"]
        if not shape.tie_word_embeddings:
            local["output_layer.weight"] = mg["output_layer.weight"]
        elif first != last:
            local["output_layer.weight"] = mg["embedding.word_embeddings.weight"]
    return {name: tp_split(name, tensor, tp)[tp_rank] for name, tensor in local.items()}


def shard(
    mg: Mapping[str, torch.Tensor], shape: ModelShape, tp: int = 1, pp: int = 1, vpp: int | None = None
) -> ShardedState:
    """Full megatron state -> per-rank local state dicts `{(pp_rank, vp_chunk, tp_rank): state}`."""
    keys = [(r, c, t) for (r, c) in layer_ranges(shape.num_layers, pp, vpp) for t in range(tp)]
    return {key: shard_for_rank(mg, shape, key, tp, pp, vpp) for key in keys}


def unshard(shards: Mapping[ShardKey, Mapping[str, torch.Tensor]], shape: ModelShape) -> StateDict:
    """Inverse of `shard`: re-assemble the full megatron state from every rank's local state."""
    tp = 1 + max(t for _, _, t in shards)
    pp = 1 + max(r for r, _, _ in shards)
    vpp_chunks = 1 + max(c for _, c, _ in shards)
    ranges = layer_ranges(shape.num_layers, pp, vpp_chunks)
    first, last = _chunk_keys(pp, vpp_chunks)
    out: StateDict = {}
    for (rank, chunk), layers in ranges.items():
        local = [shards[(rank, chunk, t)] for t in range(tp)]
        for name in local[0]:
            if name.endswith("_extra_state"):
                continue
            if name == "output_layer.weight" and shape.tie_word_embeddings:
                continue  # the last stage's copy of the tied embedding
            merged = tp_merge(name, [s[name] for s in local])
            index = _layer_index(name)
            out[name if index is None else _relabel_layer(name, layers.start + index)] = merged
    missing = {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight"} - out.keys()
    if missing:
        raise ValueError(f"shards lack {sorted(missing)}: first chunk {first}, last chunk {last}")
    return out


def hf_to_megatron_shards(
    hf: Mapping[str, torch.Tensor], shape: ModelShape, tp: int = 1, pp: int = 1, vpp: int | None = None
) -> ShardedState:
    """HF state dict -> every rank's local megatron state dict."""
    return shard(hf_to_megatron(hf, shape), shape, tp, pp, vpp)


def megatron_shards_to_hf(shards: Mapping[ShardKey, Mapping[str, torch.Tensor]], shape: ModelShape) -> StateDict:
    """Every rank's local megatron state dict -> HF state dict."""
    return megatron_to_hf(unshard(shards, shape), shape)


def strip_extra_state(state: Mapping[str, Any]) -> StateDict:
    """Drop Transformer Engine's `_extra_state` entries (FP8 metadata) and non-tensors."""
    return {k: v for k, v in state.items() if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)}


def expected_hf_keys(shape: ModelShape) -> Iterable[str]:
    """The HF parameter names `megatron_to_hf` produces, in order."""
    for m, i in _instances(shape):
        yield from (params.named(h, i) for h in m.hf)
