"""LoRA adapters on megatron-core's Transformer Engine linear layers (TP / PP / DP).

megatron-core 0.19.2 ships no LoRA or adapter modules (NeMo and Megatron-Bridge carry their own),
so this module adds them, on the real Transformer Engine API:

- One `LoraAdapter` per adapted TE layer, registered beside it as `<layer>_lora` (e.g.
  `decoder.layers.3.self_attention.linear_qkv_lora`), and a forward hook on the TE layer that adds
  the adapter's output to the layer's output. The base modules, their names and their state are
  untouched, so HF <-> megatron weight conversion and the base checkpoint code see no difference.
- Every adapter keeps one A and one B *per Hugging Face projection* (q/k/v on the fused
  `linear_qkv`, gate/up on the fused `linear_fc1`), exactly peft's parameterisation: a PEFT
  adapter imports and exports bit-exactly, and training follows the same function as peft's.
- `linear_qkv` and `linear_fc1` are `TELayerNormColumnParallelLinear`: the RMSNorm is fused into
  them, so the adapter needs the normalised input. Megatron builds them with
  `return_layernorm_output=False`; TE reads the attribute at every forward, so `attach` sets
  `return_layernorm_output = True` on them and the layer returns `(out, ln_out)`. TE adds the
  gradient of `ln_out` to its input gradient *after* its tensor-parallel all-reduce, which is why
  the adapter's own input gradient must be complete on every rank (see `LoraAdapter`).
- Tensor parallelism, column-parallel base (`linear_qkv`, `linear_fc1`): A replicated `[r, H]`,
  B split like the base's output rows (`[out/T, r]`). `h = A x` is computed on every rank and goes
  through megatron's `copy_to_tensor_model_parallel_region` (identity forward, all-reduce of the
  r-wide gradient backward), so A's gradient and the input gradient are complete and identical on
  every rank. Each rank adds `B_t h` to its own output shard, in the base's layout (per query group
  `[q; k; v]`, per rank `[gate_t; up_t]`).
- Tensor parallelism, row-parallel base (`linear_proj`, `linear_fc2`): A split on its input
  features (`[r, in/T]`), B replicated `[H, r]`. The partial products `A_t x_t` are summed with
  `reduce_from_tensor_model_parallel_region` (an all-reduce of r values per token, much less than
  reducing the H-wide adapter output together with the base's), then B runs on the full sum.
- Sequence parallelism is refused (`lora_config_problems`): its gathered layer-norm output and
  reduce-scattered row outputs would need their own handling, not built.
- Pipeline parallelism: adapters are children of their transformer layer, so they live on its stage.

The first half of the module is pure (names, shapes, sharding, HF <-> megatron adapter tensors,
initialisation, merging) and runs anywhere; the second half needs megatron-core, imported inside
functions.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from sft_trainer import lora as torch_lora
from sft_trainer.backends.megatron.backend import CHECKPOINT_SUBDIR, MegatronBackend
from sft_trainer.backends.megatron.conversion import (
    ModelShape,
    ShardKey,
    StateDict,
    layer_ranges,
    megatron_shards_to_hf,
    strip_extra_state,
)
from sft_trainer.config.schema import LoraConfig, LoraTarget, SFTConfig

if TYPE_CHECKING:
    import peft

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


# Our targets -> (megatron layer, HF projections). `gate` and `up` share the fused linear_fc1.
TARGETS: dict[LoraTarget, tuple[str, tuple[str, ...]]] = {
    "qkv": ("self_attention.linear_qkv", ("q_proj", "k_proj", "v_proj")),
    "out": ("self_attention.linear_proj", ("o_proj",)),
    "gate": ("mlp.linear_fc1", ("gate_proj",)),
    "up": ("mlp.linear_fc1", ("up_proj",)),
    "down": ("mlp.linear_fc2", ("down_proj",)),
}
_PARALLEL: dict[str, Parallel] = {
    "self_attention.linear_qkv": "column",
    "mlp.linear_fc1": "column",
    "self_attention.linear_proj": "row",
    "mlp.linear_fc2": "row",
}
_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HF_MODULE = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


# ---------------------------------------------------------------------------------------------
# Pure: which layers, which shapes, which names
# ---------------------------------------------------------------------------------------------


def adapted_layers(targets: Sequence[LoraTarget]) -> list[AdaptedLayer]:
    """The megatron layers that `training.lora.target_modules` selects, in layer order."""
    wanted = list(TARGETS) if "all" in targets else [t for t in targets if t != "all"]
    projections: dict[str, list[str]] = {}
    for target in wanted:
        module, projs = TARGETS[target]
        projections.setdefault(module, []).extend(p for p in projs if p not in projections.get(module, []))
    layers = [
        AdaptedLayer(module, _PARALLEL[module], tuple(sorted(projs, key=_ORDER.index)))
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
    return "row" if projection in ("o_proj", "down_proj") else "column"


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
    return f"base_model.model.model.layers.{layer}.{HF_MODULE[projection]}.lora_{which}.weight"


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


# ---------------------------------------------------------------------------------------------
# Pure: adapter tensors, HF (PEFT) <-> megatron shards
# ---------------------------------------------------------------------------------------------


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


def merge_into_hf(
    hf: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Base HF weights + every adapter's `scale * B @ A` (float32 arithmetic, the base's dtype out)."""
    out = dict(hf)
    suffix = ".lora_A.weight"
    for name, a in adapter.items():
        if not name.endswith(suffix):
            continue
        module = name[len("base_model.model.") : -len(suffix)]
        b = adapter[name[: -len(suffix)] + ".lora_B.weight"]
        weight = out[module + ".weight"]
        out[module + ".weight"] = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)
    return out


def combine_outputs(
    layer: AdaptedLayer, outputs: Mapping[str, torch.Tensor], shape: ModelShape, tp: int
) -> torch.Tensor:
    """Per-projection adapter outputs (this rank's rows) -> one tensor in the base layer's output layout.

    `linear_qkv`: per local query group `[q heads; k; v]` (megatron's interleaving); `linear_fc1`:
    `[gate_t; up_t]`, a projection without adapters contributes zeros; row layers: the one output.
    """
    if layer.module == "self_attention.linear_qkv":
        groups = shape.num_key_value_heads // tp
        parts = [outputs[p] for p in ("q_proj", "k_proj", "v_proj")]
        lead = parts[0].shape[:-1]
        grouped = [part.reshape(*lead, groups, part.shape[-1] // groups) for part in parts]
        return torch.cat(grouped, dim=-1).reshape(*lead, -1)
    if layer.module == "mlp.linear_fc1":
        present = next(iter(outputs.values()))
        halves = [outputs.get(p) for p in ("gate_proj", "up_proj")]
        return torch.cat([h if h is not None else torch.zeros_like(present) for h in halves], dim=-1)
    (only,) = outputs.values()
    return only


# ---------------------------------------------------------------------------------------------
# Config checks (pure)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The adapter module (torch; megatron only for tensor-parallel communication)
# ---------------------------------------------------------------------------------------------


class LoraAdapter(nn.Module):
    """The adapters of one megatron linear layer on one rank: `delta = scale * B(A(dropout(x)))`.

    `lora_A[p]` / `lora_B[p]` per HF projection `p`, already sliced for this tensor-parallel rank.
    Column layers share the input: their A matrices run as one GEMM. With `tp > 1`, `h = A x`
    passes megatron's copy-to (column) or reduce-from (row) tensor-parallel region.
    """

    def __init__(
        self,
        layer: AdaptedLayer,
        shape: ModelShape,
        config: LoraConfig,
        tp: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.layer, self.shape, self.tp = layer, shape, tp
        self.scale = scaling(config)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for p in layer.projections:
            for which, store in self.stores():
                store[p] = nn.Parameter(
                    torch.zeros(local_shape(p, which, shape, config.rank, tp), dtype=dtype, device=device)
                )

    def stores(self) -> list[tuple[Which, nn.ParameterDict]]:
        """("A", lora_A) and ("B", lora_B)."""
        return [("A", self.lora_A), ("B", self.lora_B)]

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """`A x` for every projection, concatenated on the last dim ([..., P*r]); a partial sum for row layers."""
        weight = torch.cat([self.lora_A[p] for p in self.layer.projections], dim=0)
        return torch.nn.functional.linear(x, weight)

    def up(self, h: torch.Tensor) -> torch.Tensor:
        """`scale * B h` per projection, combined into the base layer's output layout."""
        pieces = h.split([self.lora_A[p].shape[0] for p in self.layer.projections], dim=-1)
        outputs = {
            p: torch.nn.functional.linear(piece, self.lora_B[p]) * self.scale
            for p, piece in zip(self.layer.projections, pieces, strict=True)
        }
        return combine_outputs(self.layer, outputs, self.shape, self.tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution to this rank's output of the base layer."""
        if self.tp == 1:
            return self.up(self.down(self.dropout(x)))
        from megatron.core import tensor_parallel

        if self.layer.parallel == "column":  # x replicated: the default generator agrees across TP ranks
            h = tensor_parallel.copy_to_tensor_model_parallel_region(self.down(self.dropout(x)))
        else:  # x is this rank's slice of the features: its own dropout stream
            with tensor_parallel.get_cuda_rng_tracker().fork():
                dropped = self.dropout(x)
            h = tensor_parallel.reduce_from_tensor_model_parallel_region(self.down(dropped))
        return self.up(h)

    def set_tensor_parallel_attributes(self) -> None:
        """Megatron's attributes: sliced matrices are TP-parallel (norms count them once per rank)."""
        from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

        for which, store in self.stores():
            for p, param in store.items():
                axis = split_axis(p, which)
                set_tensor_model_parallel_attributes(param, axis is not None, axis if axis is not None else 0, 1)


def _split_te_output(output: Any) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """(out, bias, layernorm output) from a megatron TE linear's return value.

    Megatron returns `(te_output, bias)`; TE's own output is `(out, ln_out)` under
    `return_layernorm_output` (or `(out, bias, ln_out)` when TE returns the bias itself).
    """
    if len(output) == 3:
        return output[0], output[1], output[2]
    first, bias = output
    if isinstance(first, tuple):
        return first[0], bias, first[1]
    return first, bias, None


def _hook(adapter: LoraAdapter, fused_norm: bool) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        out, bias, ln_out = _split_te_output(output)
        x = ln_out if fused_norm else args[0]
        return out + adapter(x).to(out.dtype), bias

    return hook


# ---------------------------------------------------------------------------------------------
# The backend's side: attach, checkpoint, export (megatron-core needed)
# ---------------------------------------------------------------------------------------------


class MegatronLora:
    """Adapters on a `MegatronBackend`'s model chunks (built before its DDP wrapper and optimizer).

    `attach` freezes every base parameter, adds an adapter next to each selected TE layer and
    loads its initial values (a PEFT state, or a seeded fresh init identical for every layout).
    """

    def __init__(self, backend: Any, hf_adapter: Mapping[str, torch.Tensor] | None = None) -> None:
        self.backend = backend
        self.config: LoraConfig = backend.config.training.lora
        self.shape: ModelShape = backend.plan.shape
        self.layers = adapted_layers(self.config.target_modules)
        par = backend.config.parallelism
        self.tp, self.pp, self.vpp = (
            par.tensor_model_parallel_size,
            par.pipeline_model_parallel_size,
            par.virtual_pipeline_model_parallel_size,
        )
        self.adapters: list[dict[str, LoraAdapter]] = []  # per chunk: megatron key prefix -> adapter
        init = (
            hf_adapter
            if hf_adapter is not None
            else init_hf_adapter(self.shape, self.config, backend.config.trainer.seed)
        )
        check_hf_adapter(init, self.shape, self.config)
        self._attach(init)

    def _attach(self, init: Mapping[str, torch.Tensor]) -> None:
        for chunk in self.backend.chunks:
            for param in chunk.parameters():
                param.requires_grad = False  # before DDP / optimizer: they hold adapters only
        dtype = self.backend.tconfig.params_dtype
        for index, chunk in enumerate(self.backend.chunks):
            local = hf_adapter_to_megatron_shard(
                init, self.shape, self.layers, self.backend._rank_key(index), self.tp, self.pp, self.vpp
            )
            mine: dict[str, LoraAdapter] = {}
            for layer_index, transformer_layer in enumerate(chunk.decoder.layers):
                for layer in self.layers:
                    parent_path, _, name = layer.module.rpartition(".")
                    parent = transformer_layer.get_submodule(parent_path)
                    base = getattr(parent, name)
                    adapter = LoraAdapter(layer, self.shape, self.config, self.tp, dtype, self.backend.device)
                    adapter.set_tensor_parallel_attributes()
                    with torch.no_grad():
                        for p in layer.projections:
                            adapter.lora_A[p].copy_(local[megatron_key(layer_index, layer, p, "A")])
                            adapter.lora_B[p].copy_(local[megatron_key(layer_index, layer, p, "B")])
                    setattr(parent, name + LORA_SUFFIX, adapter)
                    fused_norm = layer.parallel == "column" and hasattr(base, "return_layernorm_output")
                    if fused_norm:
                        base.return_layernorm_output = True  # TE: also return the normalised input
                    base.register_forward_hook(_hook(adapter, fused_norm))
                    mine[f"decoder.layers.{layer_index}.{layer.module}{LORA_SUFFIX}"] = adapter
            self.adapters.append(mine)

    # -- state --------------------------------------------------------------------------------

    def local_state(self, index: int) -> StateDict:
        """This rank's adapter tensors of chunk `index`, keyed by `megatron_key` (detached, CPU)."""
        out: StateDict = {}
        for prefix, adapter in self.adapters[index].items():
            for which, store in adapter.stores():
                for p, param in store.items():
                    out[f"{prefix}.lora_{which}.{p}"] = param.detach().float().cpu()
        return out

    def parameters(self) -> list[nn.Parameter]:
        """Every adapter parameter of this rank."""
        return [p for chunk in self.adapters for adapter in chunk.values() for p in adapter.parameters()]

    def _global_name(self, index: int, local_name: str) -> str:
        """`decoder.layers.<local>...` of chunk `index` -> `decoder.layers.<global>...` (checkpoint keys)."""
        rank, chunk, _ = self.backend._rank_key(index)
        start = layer_ranges(self.shape.num_layers, self.pp, self.vpp)[(rank, chunk)].start
        parts = local_name.split(".")
        parts[2] = str(start + int(parts[2]))
        return ".".join(parts)

    def _named_params(self) -> list[tuple[str, str, nn.Parameter]]:
        """(global checkpoint key, projection-matrix kind, parameter) of every adapter on this rank."""
        out = []
        for index, chunk in enumerate(self.adapters):
            for prefix, adapter in chunk.items():
                for which, store in adapter.stores():
                    for p, param in store.items():
                        out.append((self._global_name(index, f"{prefix}.lora_{which}.{p}"), f"{p}:{which}", param))
        return out

    def sharded_state_dict(self) -> dict[str, Any]:
        """Adapter parameters as megatron `ShardedTensor`s (global layer keys, TP axes as above).

        Only adapters: a LoRA checkpoint never holds a base weight. Keys name the global layer and
        slices carry their TP offsets, so the checkpoint loads under another TP / PP / DP layout.
        """
        from megatron.core.utils import make_sharded_tensor_for_checkpoint, make_tp_sharded_tensor_for_checkpoint

        out: dict[str, Any] = {}
        for key, kind, param in self._named_params():
            projection, which = kind.split(":")
            axis = split_axis(projection, which)  # type: ignore[arg-type]
            if axis is None:
                out[key] = make_sharded_tensor_for_checkpoint(param, key)
            else:
                out[key] = make_tp_sharded_tensor_for_checkpoint(param, key, tp_axis=axis)
        return out

    def load_sharded(self, loaded: Mapping[str, torch.Tensor]) -> None:
        """Copy `dist_checkpointing.load`'s adapter tensors into the parameters (strict)."""
        params = {key: param for key, _, param in self._named_params()}
        missing, unexpected = sorted(set(params) - set(loaded)), sorted(set(loaded) - set(params))
        if missing or unexpected:
            raise ValueError(f"LoRA checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(loaded[key])

    # -- export -------------------------------------------------------------------------------

    def gather_hf_adapter(self) -> StateDict | None:
        """The whole adapter in PEFT naming on global rank 0 (None elsewhere)."""
        from megatron.core import parallel_state as ps

        mine: dict[ShardKey, StateDict] = {}
        if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
            for index in range(len(self.adapters)):
                mine[self.backend._rank_key(index)] = self.local_state(index)
        gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
        dist.gather_object(mine, gathered if dist.get_rank() == 0 else None, dst=0)
        if dist.get_rank() != 0:
            return None
        shards = {key: state for part in gathered for key, state in part.items()}
        return megatron_adapter_shards_to_hf(shards, self.shape, self.layers)

    def peft_config(self) -> "peft.LoraConfig":
        """The adapter's `peft.LoraConfig` (written as `adapter_config.json`)."""
        return peft_lora_config(self.config, self.layers, self.backend.config.model.path)

    def save_peft(self, directory: Path) -> None:
        """`adapter_config.json` + `adapter_model.safetensors` (HF names, TP shards gathered); rank 0 writes."""
        state = self.gather_hf_adapter()
        if state is not None:
            write_peft(directory, state, self.peft_config())
        dist.barrier()

    def export_final(self, directory: Path) -> None:
        """`final/`: the merged model (base + adapters) and `final/adapter` (PEFT); rank 0 writes."""
        from safetensors.torch import save_file

        base = self.backend.gather_hf_state_dict()
        adapter = self.gather_hf_adapter()
        if base is not None and adapter is not None:
            write_peft(directory / ADAPTER_SUBDIR, adapter, self.peft_config())
            merged = merge_into_hf(base, adapter, scaling(self.config))
            self.backend.plan.hf_config.save_pretrained(directory)
            save_file(
                {k: v.contiguous() for k, v in merged.items()}, str(directory / "model.safetensors"), {"format": "pt"}
            )
        dist.barrier()


def peft_lora_config(config: LoraConfig, layers: Sequence[AdaptedLayer], base: Any = None) -> "peft.LoraConfig":
    """The `peft.LoraConfig` of megatron adapters (HF projection names; `base` = the base model directory)."""
    return torch_lora.peft_lora_config(config, peft_target_modules(layers), base=str(base) if base else None)


def write_peft(directory: Path, state: Mapping[str, torch.Tensor], config: "peft.LoraConfig") -> None:
    """Write a PEFT adapter directory: `adapter_config.json` (peft's writer) + `adapter_model.safetensors`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    save_file(
        {k: v.detach().float().contiguous() for k, v in state.items()},
        str(directory / "adapter_model.safetensors"),
        {"format": "pt"},
    )


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class MegatronLoraBackend(MegatronBackend):
    """`MegatronBackend` with `training.method: lora`: frozen base, adapters train, adapter-only checkpoints.

    `adapter_state`: initial adapters in PEFT naming (e.g. a peft model's `get_peft_model_state_dict`,
    for parity with the torch backend); default: `init_hf_adapter` from `trainer.seed`.
    Checkpoints (`<dir>/megatron`) hold the adapters and their optimizer state only, plus the PEFT
    adapter in `<dir>/adapter`; `export_hf` writes the merged model and `adapter/` (as the torch
    backend does). The base is always rebuilt from the HF weights given to the constructor.
    """

    def __init__(
        self,
        config: SFTConfig,
        hf_config: Any,
        hf_state_dict: Mapping[str, torch.Tensor] | None = None,
        adapter_state: Mapping[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        from sft_trainer.config import ConfigError

        problems = lora_config_problems(config)
        if problems:
            raise ConfigError(problems)
        self._adapter_init = adapter_state
        super().__init__(config, hf_config, hf_state_dict, **kwargs)

    def _wrap_ddp(self) -> list[Any]:
        self.lora = MegatronLora(self, self._adapter_init)  # freeze + attach before DDP and the optimizer
        self._adapter_init = None
        return super()._wrap_ddp()

    def _sharded_state_dict(self, is_loading: bool) -> dict[str, Any]:
        """Adapters + their optimizer state (fully reshardable); no base weight."""
        metadata = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False}
        model_sd: dict[str, Any] = {"model": self.lora.sharded_state_dict()}
        state: dict[str, Any] = dict(model_sd)
        state["optimizer"] = self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
        return state

    def save_checkpoint(self, directory: Path) -> None:
        """Adapters + optimizer (`megatron/`) and the PEFT adapter (`adapter/`)."""
        super().save_checkpoint(directory)
        self.lora.save_peft(directory / ADAPTER_SUBDIR)

    def save_checkpoint_async(self, directory: Path, finalize: Any) -> None:
        """The PEFT adapter now (small), the distributed checkpoint in the background."""
        self.lora.save_peft(directory / ADAPTER_SUBDIR)
        super().save_checkpoint_async(directory, finalize)

    def load_checkpoint(self, directory: Path) -> None:
        """Restore adapters and optimizer state, also under another TP / PP / DP layout."""
        from megatron.core import dist_checkpointing

        state = dist_checkpointing.load(self._sharded_state_dict(is_loading=True), str(directory / CHECKPOINT_SUBDIR))
        self.lora.load_sharded(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def gather_hf_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The frozen base as a Hugging Face state dict on global rank 0 (adapters left out)."""
        from megatron.core import parallel_state as ps

        self._sync_params()
        mine: dict[ShardKey, StateDict] = {}
        if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
            for index, chunk in enumerate(self.chunks):
                local = strip_extra_state(chunk.state_dict())
                mine[self._rank_key(index)] = {k: v.detach().cpu() for k, v in local.items() if not is_adapter_key(k)}
        gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
        dist.gather_object(mine, gathered if dist.get_rank() == 0 else None, dst=0)
        if dist.get_rank() != 0:
            return None
        shards = {key: state for part in gathered for key, state in part.items()}
        return megatron_shards_to_hf(shards, self.plan.shape)

    def export_hf(self, directory: Path) -> None:
        """`final/`: merged model (config.json + model.safetensors) and `adapter/` (PEFT)."""
        self.lora.export_final(directory)
