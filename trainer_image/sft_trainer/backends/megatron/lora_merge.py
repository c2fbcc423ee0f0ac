"""LoRA on megatron, PEFT files and merging: the adapter's `peft.LoraConfig`, writing a PEFT
adapter directory, and merging adapters into the base's Hugging Face weights (for `final/`)."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sft_trainer import lora as torch_lora
from sft_trainer.backends.megatron.lora_mapping import AdaptedLayer, peft_target_modules
from sft_trainer.config.schema import LoraConfig

if TYPE_CHECKING:
    import peft


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
