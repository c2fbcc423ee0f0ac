"""LoRA on megatron, the pure part: which megatron layers carry adapters, their shapes and
tensor-parallel slicing, their names on both sides (megatron parameters, PEFT tensors), PEFT <->
megatron adapter shards, the seeded initialisation and the config check. No megatron-core needed.
(The design is described in `backends/megatron/lora.py`.)
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from sft_trainer.backends.megatron import params
from sft_trainer.backends.megatron.conversion import ModelShape, ShardKey, StateDict, layer_ranges
from sft_trainer.config.schema import LoraConfig, LoraTarget, SFTConfig

if TYPE_CHECKING:
    from sft_trainer.config import ConfigProblem

LORA_SUFFIX = "_lora"  # the adapter of `linear_qkv` is the sibling module `linear_qkv_lora`
ADAPTER_SUBDIR = "adapter"  # as the torch backend: <checkpoint>/adapter, final/adapter
Parallel = Literal["column", "row"]
Which = Literal["A", "B"]
WHICH: tuple[Which, ...] = ("A", "B")


@dataclass(frozen=True)
class AdaptedLayer:
    """One megatron linear layer that carries adapters, and the HF projections they stand for."""

    module: str  # path inside a TransformerLayer, e.g. "self_attention.linear_qkv"
    parallel: Parallel
    projections: tuple[str, ...]  # HF projection names, in the base layer's output order


# Our targets -> the HF projections they adapt; the megatron layer of each comes from `params.PARAMS`
# (`gate` and `up` share the fused linear_fc1).
TARGETS: dict[LoraTarget, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "out": ("o_proj",),
    "gate": ("gate_proj",),
    "up": ("up_proj",),
    "down": ("down_proj",),
}
_ORDER = params.PROJECTIONS


def adapted_layers(targets: Sequence[LoraTarget]) -> list[AdaptedLayer]:
    """The megatron layers that `training.lora.target_modules` selects, in layer order."""
    wanted = list(TARGETS) if "all" in targets else [t for t in targets if t != "all"]
    projections: dict[str, list[str]] = {}
    for target in wanted:
        for projection in TARGETS[target]:
            module = params.linear_of(projection)[0]
            if projection not in projections.setdefault(module, []):
                projections[module].append(projection)
    layers = [
        AdaptedLayer(module, parallel_of(projs[0]), tuple(sorted(projs, key=_ORDER.index)))
        for module, projs in projections.items()
    ]
    return sorted(layers, key=lambda layer: _ORDER.index(layer.projections[0]))


def peft_target_modules(layers: Iterable[AdaptedLayer]) -> list[str]:
    """The HF module names (peft `target_modules`) of the adapted projections."""
    return sorted((p for layer in layers for p in layer.projections), key=_ORDER.index)


def projection_features(projection: str, shape: ModelShape) -> tuple[int, int]:
    """(in_features, out_features) of one unsharded HF projection."""
    hidden, d = shape.hidden_size, shape.head_dim
    q_out, kv_out = shape.num_attention_heads * d, shape.num_key_value_heads * d
    return {
        "q_proj": (hidden, q_out),
        "k_proj": (hidden, kv_out),
        "v_proj": (hidden, kv_out),
        "o_proj": (q_out, hidden),
        "gate_proj": (hidden, shape.intermediate_size),
        "up_proj": (hidden, shape.intermediate_size),
        "down_proj": (shape.intermediate_size, hidden),
    }[projection]


def parallel_of(projection: str) -> Parallel:
    """Column-parallel (output sharded) or row-parallel (input sharded) base layer of a projection."""
    return "row" if params.linear_of(projection)[1] == "row" else "column"


def split_axis(projection: str, which: Which) -> int | None:
    """The axis along which a tensor-parallel rank holds a slice of `lora_<which>`, None if replicated.

    Column-parallel base: A `[r, in]` replicated, B `[out, r]` split on rows like the base.
    Row-parallel base: A `[r, in]` split on its input features like the base, B `[out, r]` replicated.
    """
    if parallel_of(projection) == "column":
        return 0 if which == "B" else None
    return 1 if which == "A" else None


def local_shape(projection: str, which: Which, shape: ModelShape, rank: int, tp: int) -> tuple[int, int]:
    """The shape of `lora_<which>` of one projection on one tensor-parallel rank."""
    fan_in, fan_out = projection_features(projection, shape)
    full = [rank, fan_in] if which == "A" else [fan_out, rank]
    axis = split_axis(projection, which)
    if axis is not None:
        if full[axis] % tp:
            raise ValueError(f"{projection}.lora_{which}: dimension {full[axis]} not divisible by TP {tp}")
        full[axis] //= tp
    return (full[0], full[1])


def tp_split_adapter(projection: str, which: Which, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """One full adapter matrix -> its `tp` tensor-parallel slices (copies of it where replicated)."""
    axis = split_axis(projection, which)
    if axis is None:
        return [tensor.clone() for _ in range(tp)]
    if tensor.shape[axis] % tp:
        raise ValueError(f"{projection}.lora_{which}: dimension {tensor.shape[axis]} not divisible by TP {tp}")
    return [t.clone() for t in tensor.chunk(tp, dim=axis)]


def tp_merge_adapter(projection: str, which: Which, shards: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of `tp_split_adapter`; replicated matrices must agree on every rank."""
    axis = split_axis(projection, which)
    if axis is not None:
        return torch.cat(list(shards), dim=axis)
    for other in shards[1:]:
        if not torch.equal(other, shards[0]):
            raise ValueError(f"replicated {projection}.lora_{which} differs between tensor-parallel ranks")
    return shards[0].clone()


def megatron_key(local_layer: int, layer: AdaptedLayer, projection: str, which: Which) -> str:
    """Parameter name of an adapter matrix inside a GPTModel chunk (local layer index)."""
    return f"decoder.layers.{local_layer}.{layer.module}{LORA_SUFFIX}.lora_{which}.{projection}"


def hf_key(layer: int, projection: str, which: Which) -> str:
    """Tensor name in a PEFT `adapter_model.safetensors` (global layer index)."""
    return f"base_model.model.model.layers.{layer}.{params.hf_module_of(projection)}.lora_{which}.weight"


def is_adapter_key(name: str) -> bool:
    """Whether a GPTModel state-dict key belongs to an adapter (never to the base)."""
    return f"{LORA_SUFFIX}." in name


def expected_hf_keys(shape: ModelShape, layers: Sequence[AdaptedLayer]) -> list[str]:
    """Every tensor name of the PEFT adapter of this model and these layers."""
    return [
        hf_key(i, p, which)
        for i in range(shape.num_layers)
        for layer in layers
        for p in layer.projections
        for which in WHICH
    ]


def scaling(config: LoraConfig) -> float:
    """peft's scaling of the adapter output: alpha / r."""
    return config.alpha / config.rank


def init_hf_adapter(shape: ModelShape, config: LoraConfig, seed: int) -> StateDict:
    """Fresh adapters in PEFT layout: A as peft draws it (kaiming-uniform, a=sqrt(5)), B = 0.

    Drawn on the CPU from `seed` for the full (unsharded) matrices, so every TP / PP layout starts
    from the same adapters, and the model's output is unchanged at step 0.
    """
    generator = torch.Generator().manual_seed(seed)
    out: StateDict = {}
    for i in range(shape.num_layers):
        for layer in adapted_layers(config.target_modules):
            for projection in layer.projections:
                fan_in, fan_out = projection_features(projection, shape)
                a = torch.empty(config.rank, fan_in)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
                out[hf_key(i, projection, "A")] = a
                out[hf_key(i, projection, "B")] = torch.zeros(fan_out, config.rank)
    return out


def check_hf_adapter(hf: Mapping[str, torch.Tensor], shape: ModelShape, config: LoraConfig) -> None:
    """A PEFT state must hold exactly this model's adapter tensors, with the full shapes."""
    layers = adapted_layers(config.target_modules)
    wanted = expected_hf_keys(shape, layers)
    missing, unexpected = sorted(set(wanted) - set(hf)), sorted(set(hf) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for i in range(shape.num_layers):
        for layer in layers:
            for p in layer.projections:
                for which in WHICH:
                    want = local_shape(p, which, shape, config.rank, 1)
                    got = tuple(hf[hf_key(i, p, which)].shape)
                    if got != want:
                        raise ValueError(f"{hf_key(i, p, which)}: shape {got}, expected {want}")


def hf_adapter_to_megatron_shard(
    hf: Mapping[str, torch.Tensor],
    shape: ModelShape,
    layers: Sequence[AdaptedLayer],
    key: ShardKey,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
) -> StateDict:
    """PEFT adapter tensors -> the local adapter state of rank `(pp_rank, vp_chunk, tp_rank)`."""
    rank, chunk, tp_rank = key
    global_layers = layer_ranges(shape.num_layers, pp, vpp)[(rank, chunk)]
    out: StateDict = {}
    for local, i in enumerate(global_layers):
        for layer in layers:
            for p in layer.projections:
                for which in WHICH:
                    out[megatron_key(local, layer, p, which)] = tp_split_adapter(p, which, hf[hf_key(i, p, which)], tp)[
                        tp_rank
                    ]
    return out


def megatron_adapter_shards_to_hf(
    shards: Mapping[ShardKey, Mapping[str, torch.Tensor]], shape: ModelShape, layers: Sequence[AdaptedLayer]
) -> StateDict:
    """Every rank's local adapter state `{(pp_rank, vp_chunk, tp_rank): state}` -> PEFT tensors."""
    tp = 1 + max(t for _, _, t in shards)
    pp = 1 + max(r for r, _, _ in shards)
    chunks = 1 + max(c for _, c, _ in shards)
    out: StateDict = {}
    for (rank, chunk), global_layers in layer_ranges(shape.num_layers, pp, chunks).items():
        for local, i in enumerate(global_layers):
            for layer in layers:
                for p in layer.projections:
                    for which in WHICH:
                        name = megatron_key(local, layer, p, which)
                        out[hf_key(i, p, which)] = tp_merge_adapter(
                            p, which, [shards[(rank, chunk, t)][name] for t in range(tp)]
                        )
    return out


def lora_config_problems(config: SFTConfig) -> list["ConfigProblem"]:
    """What the megatron backend cannot do with `training.method: lora`."""
    from sft_trainer.config import ConfigProblem

    problems = []
    if config.training.method == "lora" and config.parallelism.sequence_parallel:
        problems.append(
            ConfigProblem(
                "parallelism.sequence_parallel",
                "LoRA on the megatron backend does not support sequence parallelism; set it to false",
            )
        )
    return problems
