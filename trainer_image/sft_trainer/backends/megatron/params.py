"""The one table of how a Hugging Face Llama-family decoder maps onto megatron-core's GPTModel.

Each `ParamMapping` names one megatron parameter (`{layer}` for the per-layer ones), the Hugging
Face tensors it is made of, how they combine (`transform`) and how tensor parallelism slices it
(`tp`). In the style of Megatron-Bridge's `mapping_registry()`, every direction is derived from it:
`conversion` (HF <-> megatron state dicts, TP split / merge) and the LoRA mapping (which megatron
linear an HF projection lives in, its HF module name, column- or row-parallel). Pure data and
string functions: no torch, no megatron.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

#: How the HF tensors become the megatron one: `copy` (one tensor), `pad_vocab` (zero rows up to
#: the padded vocabulary), `qkv` (q, k, v interleaved per query group), `gate_up` (`[gate; up]`).
Transform = Literal["copy", "pad_vocab", "qkv", "gate_up"]
#: How tensor parallelism slices it: `column` (dim 0), `row` (dim 1), `gated` (each of the `[gate; up]`
#: halves on dim 0, every rank `[gate_t; up_t]`), `replicated`.
TpSplit = Literal["column", "row", "gated", "replicated"]
#: When a parameter exists: always, with QKV biases (Qwen2), or with untied embeddings.
Presence = Literal["always", "qkv_bias", "untied"]

LAYER = "{layer}"
MEGATRON_LAYER = "decoder.layers.{layer}."
HF_LAYER = "model.layers.{layer}."


@dataclass(frozen=True)
class ParamMapping:
    """One megatron parameter and the Hugging Face tensors it holds."""

    megatron: str
    hf: tuple[str, ...]
    transform: Transform
    tp: TpSplit
    presence: Presence = "always"

    @property
    def per_layer(self) -> bool:
        """One parameter per decoder layer (`{layer}` in the names)."""
        return LAYER in self.megatron

    def present(self, qkv_bias: bool, tied: bool) -> bool:
        """Whether this model has the parameter."""
        return {"always": True, "qkv_bias": qkv_bias, "untied": not tied}[self.presence]


def _layer(
    megatron: str, hf: tuple[str, ...], transform: Transform, tp: TpSplit, presence: Presence = "always"
) -> ParamMapping:
    return ParamMapping(MEGATRON_LAYER + megatron, tuple(HF_LAYER + h for h in hf), transform, tp, presence)


def _qkv(kind: str) -> tuple[str, ...]:
    return tuple(f"self_attn.{p}_proj.{kind}" for p in "qkv")


#: The table, in state-dict order (the per-layer block sits where its first entry is).
PARAMS: tuple[ParamMapping, ...] = (
    ParamMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "pad_vocab", "column"),
    _layer("self_attention.linear_qkv.layer_norm_weight", ("input_layernorm.weight",), "copy", "replicated"),
    _layer("self_attention.linear_qkv.weight", _qkv("weight"), "qkv", "column"),
    _layer("self_attention.linear_qkv.bias", _qkv("bias"), "qkv", "column", "qkv_bias"),
    _layer("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), "copy", "row"),
    _layer("mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",), "copy", "replicated"),
    _layer("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "gate_up", "gated"),
    _layer("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), "copy", "row"),
    ParamMapping("decoder.final_layernorm.weight", ("model.norm.weight",), "copy", "replicated"),
    ParamMapping("output_layer.weight", ("lm_head.weight",), "pad_vocab", "column", "untied"),
)


def instances(num_layers: int, qkv_bias: bool, tied: bool) -> Iterator[tuple[ParamMapping, int | None]]:
    """(mapping, layer index or None) of every parameter of a model, in state-dict order."""
    expanded = False
    for mapping in PARAMS:
        if not mapping.per_layer:
            if mapping.present(qkv_bias, tied):
                yield mapping, None
        elif not expanded:
            expanded = True
            for index in range(num_layers):
                for layer_mapping in PARAMS:
                    if layer_mapping.per_layer and layer_mapping.present(qkv_bias, tied):
                        yield layer_mapping, index


def named(pattern: str, index: int | None) -> str:
    """A table name with its layer index filled in."""
    return pattern if index is None else pattern.replace(LAYER, str(index))


def _parameter_suffix(name: str) -> str:
    """`<module>.<parameter>`: what tells a parameter's kind, whatever prefix and layer index it has."""
    return ".".join(name.split(".")[-2:])


def tp_split_of(name: str) -> TpSplit:
    """How tensor parallelism slices the megatron parameter `name` (a full, local or suffix-only name);
    anything the table does not name (norms, extra state) is replicated."""
    suffix = _parameter_suffix(name)
    for mapping in PARAMS:
        if _parameter_suffix(mapping.megatron) == suffix:
            return mapping.tp
    return "replicated"


# ---------------------------------------------------------------------------------------------
# The per-layer linear layers, as the LoRA mapping sees them (HF projection <-> megatron linear)
# ---------------------------------------------------------------------------------------------


def _linear_weights() -> list[ParamMapping]:
    return [m for m in PARAMS if m.per_layer and m.megatron.endswith(".weight") and m.tp != "replicated"]


def _projection(hf_name: str) -> str:
    """`model.layers.{layer}.self_attn.q_proj.weight` -> `q_proj`."""
    return hf_name.split(".")[-2]


#: The HF projections of a decoder layer, in megatron's order (q, k, v, o, gate, up, down).
PROJECTIONS: tuple[str, ...] = tuple(_projection(h) for m in _linear_weights() for h in m.hf)


def linear_of(projection: str) -> tuple[str, TpSplit]:
    """The megatron linear inside a TransformerLayer that holds an HF projection (`q_proj` ->
    `self_attention.linear_qkv`), and how tensor parallelism slices it."""
    for mapping in _linear_weights():
        if projection in (_projection(h) for h in mapping.hf):
            return mapping.megatron[len(MEGATRON_LAYER) : -len(".weight")], mapping.tp
    raise KeyError(f"no megatron linear holds the projection {projection!r}")


def hf_module_of(projection: str) -> str:
    """The HF module path of a projection inside a decoder layer (`q_proj` -> `self_attn.q_proj`)."""
    for mapping in _linear_weights():
        for hf_name in mapping.hf:
            if _projection(hf_name) == projection:
                return hf_name[len(HF_LAYER) : -len(".weight")]
    raise KeyError(f"no HF module for the projection {projection!r}")


def linear_layout(module: str) -> tuple[Transform, tuple[str, ...]]:
    """How a megatron linear's output rows hold its HF projections (`qkv`: interleaved per query
    group, `gate_up`: `[gate; up]` per TP rank, `copy`: one projection), and those projections."""
    for mapping in _linear_weights():
        if mapping.megatron == f"{MEGATRON_LAYER}{module}.weight":
            return mapping.transform, tuple(_projection(h) for h in mapping.hf)
    raise KeyError(f"no megatron linear {module!r}")
