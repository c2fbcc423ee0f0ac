"""LoRA on megatron, the layers: `LoraAdapter` (the adapters of one TE linear layer on one rank)
and the forward hook that adds its output to the layer's. megatron-core only for tensor-parallel
communication, imported inside the methods. (The design is described in `backends/megatron/lora.py`.)
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sft_trainer.backends.megatron import params
from sft_trainer.backends.megatron.conversion import ModelShape
from sft_trainer.backends.megatron.lora_mapping import AdaptedLayer, Which, local_shape, scaling, split_axis
from sft_trainer.config.schema import LoraConfig


def combine_outputs(
    layer: AdaptedLayer, outputs: Mapping[str, torch.Tensor], shape: ModelShape, tp: int
) -> torch.Tensor:
    """Per-projection adapter outputs (this rank's rows) -> one tensor in the base layer's output layout.

    `linear_qkv`: per local query group `[q heads; k; v]` (megatron's interleaving); `linear_fc1`:
    `[gate_t; up_t]`, a projection without adapters contributes zeros; row layers: the one output.
    """
    layout, projections = params.linear_layout(layer.module)
    if layout == "qkv":
        groups = shape.num_key_value_heads // tp
        parts = [outputs[p] for p in projections]
        lead = parts[0].shape[:-1]
        grouped = [part.reshape(*lead, groups, part.shape[-1] // groups) for part in parts]
        return torch.cat(grouped, dim=-1).reshape(*lead, -1)
    if layout == "gate_up":
        present = next(iter(outputs.values()))
        halves = [outputs.get(p) for p in projections]
        return torch.cat([h if h is not None else torch.zeros_like(present) for h in halves], dim=-1)
    (only,) = outputs.values()
    return only


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


def split_te_output(output: Any) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
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


def hook(adapter: LoraAdapter, fused_norm: bool) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        out, bias, ln_out = split_te_output(output)
        x = ln_out if fused_norm else args[0]
        return out + adapter(x).to(out.dtype), bias

    return hook
