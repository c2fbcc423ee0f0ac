"""Low-rank adapters (LoRA) for the torch backend, through the `peft` library.

`training.method: lora` wraps the Hugging Face model in a `peft.PeftModel`: the base weights are
frozen (`requires_grad=False`) and only the adapter matrices train. What leaves the process:

- a checkpoint holds `adapter/` (the Hugging Face PEFT format: `adapter_config.json` +
  `adapter_model.safetensors`) and the optimizer state of the adapter parameters, never the base;
- `final/` holds the merged full model (so `sft generate` works unchanged) and `final/adapter/`
  the PEFT adapter, which `peft.PeftModel.from_pretrained(base, "final/adapter")` loads;
- `sft export` (see `cli_export`) copies an adapter out of a run or checkpoint, or merges it
  into its base model (`merge_and_export`).

Our target names map onto module names: `qkv` -> q/k/v projections, `out` -> the attention output
projection, `up`/`gate`/`down` -> the MLP projections, `all` -> every one the model has.
"""

import json
import shutil
from collections.abc import Iterable, Mapping
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.pytorch_utils import Conv1D

from sft_trainer.config.schema import LoraConfig, LoraTarget
from sft_trainer.models import ModelError

if TYPE_CHECKING:  # peft is imported where it is used: full fine-tuning never pays for it
    import peft

ADAPTER_SUBDIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"  # peft's name for the (only) adapter
SFT_JSON = "sft.json"

# Module-name suffixes of each target, per architecture family: Llama-style (Llama, Mistral, Qwen,
# ...) first, then GPT-2 (whose attention and MLP both have a `c_proj`, hence the qualified names).
TARGET_MODULES: dict[LoraTarget, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj", "attn.c_attn"),
    "out": ("o_proj", "attn.c_proj"),
    "up": ("up_proj", "mlp.c_fc"),
    "gate": ("gate_proj",),
    "down": ("down_proj", "mlp.c_proj"),
}


class LoraError(ModelError):
    """LoRA cannot be applied or an adapter cannot be found or loaded (a permanent model error)."""


def _matches(module_name: str, suffix: str) -> bool:
    """peft's rule for a list of target names: the name itself or its dotted tail."""
    return module_name == suffix or module_name.endswith("." + suffix)


def target_module_names(config: LoraConfig, model: nn.Module) -> list[str]:
    """The module-name suffixes (peft `target_modules`) that `config.target_modules` selects in `model`.

    Only suffixes that occur in the model are returned; a target the model lacks (e.g. `gate` on
    GPT-2) is skipped under `all` and an error when named explicitly.
    """
    module_names = [name for name, _ in model.named_modules()]
    wanted = list(TARGET_MODULES) if "all" in config.target_modules else config.target_modules
    selected: list[str] = []
    for target in dict.fromkeys(wanted):
        present = [s for s in TARGET_MODULES[target] if any(_matches(n, s) for n in module_names)]
        if not present and "all" not in config.target_modules:
            raise LoraError(f"training.lora.target_modules: {target!r} matches no module of this model")
        selected.extend(s for s in present if s not in selected)
    if not selected:
        raise LoraError("training.lora.target_modules: no LoRA target found in this model")
    return selected


def peft_config(config: LoraConfig, model: nn.Module) -> "peft.LoraConfig":
    """The `peft.LoraConfig` of our LoRA block for `model`."""
    targets = target_module_names(config, model)
    conv1d = any(
        isinstance(module, Conv1D) and any(_matches(name, s) for s in targets) for name, module in model.named_modules()
    )
    return peft_lora_config(config, targets, fan_in_fan_out=conv1d)  # GPT-2's Conv1D stores weights as (in, out)


def peft_lora_config(
    config: LoraConfig, target_modules: list[str], fan_in_fan_out: bool = False, base: str | None = None
) -> "peft.LoraConfig":
    """Our LoRA block as a `peft.LoraConfig` (both backends; `base` = the base model directory)."""
    import peft

    return peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft annotates int; the scaling is alpha / r
        lora_dropout=config.dropout,
        target_modules=target_modules,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def apply_lora(model: PreTrainedModel, config: LoraConfig) -> "peft.PeftModel":
    """Wrap `model` with fresh adapters (B = 0, so the output is unchanged); the base is frozen."""
    import peft

    return peft.get_peft_model(model, peft_config(config, model))


def with_adapters(model: PreTrainedModel, config: LoraConfig) -> PreTrainedModel:
    """`apply_lora` for the backend, which keeps treating the result as a Hugging Face model.

    A `PeftModel` forwards attribute access (`config`, `forward` arguments, ...) to the model inside.
    """
    return cast(PreTrainedModel, apply_lora(model, config))


def as_peft(model: nn.Module) -> "peft.PeftModel":
    """`model` as the `PeftModel` it is (an error for a model without adapters)."""
    import peft

    if not isinstance(model, peft.PeftModel):
        raise LoraError(f"expected a model with LoRA adapters, got {type(model).__name__}")
    return model


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (the adapters under LoRA)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors, keyed as in `adapter_model.safetensors` (no adapter name, no base weights)."""
    import peft

    return dict(peft.get_peft_model_state_dict(as_peft(model), adapter_name=ADAPTER_NAME))


# ---------------------------------------------------------------------------- checkpoints and final/

# `get_model_state_dict` options: unsharded CPU tensors of the trainable parameters only.
TRAINABLE_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def save_adapter(model: nn.Module, directory: Path, state: Mapping[str, Any] | None = None) -> None:
    """Write the adapter in the Hugging Face PEFT format (`adapter_config.json` + safetensors).

    `state` (e.g. `get_model_state_dict(wrapped, options=TRAINABLE_STATE)`, keyed by parameter
    name) replaces the model's own tensors, which may be sharded.
    """
    as_peft(model).save_pretrained(str(directory), state_dict=state)


def _peft_key(name: str) -> str:
    """The safetensors key of a parameter name (peft drops the adapter name)."""
    return name.replace(f".{ADAPTER_NAME}", "")


def load_adapter(wrapped: nn.Module, model: nn.Module, directory: Path) -> None:
    """Load an adapter written by `save_adapter` into `model` (wrapped by DDP/FSDP as `wrapped`).

    Strict: every trainable parameter must be in the file and every tensor of the file used.
    """
    import peft

    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise LoraError(f"{directory}: no {ADAPTER_WEIGHTS} (not a LoRA checkpoint; was it written by a full run?)")
    saved = peft.load_peft_weights(str(directory), device="cpu")
    by_key = {_peft_key(name): name for name in trainable_names(model)}
    missing, unexpected = sorted(set(by_key) - set(saved)), sorted(set(saved) - set(by_key))
    if missing or unexpected:
        raise LoraError(
            f"{directory}: adapter does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    state = {by_key[key]: tensor for key, tensor in saved.items()}
    set_model_state_dict(wrapped, state, options=StateDictOptions(full_state_dict=True, strict=False))


def merged_model(model: nn.Module, full_state: Mapping[str, Any] | None = None) -> PreTrainedModel:
    """A plain Hugging Face model (CPU, eval mode) whose weights are base + adapter.

    The training model is left untouched: a copy is built from `full_state` (the whole model's
    unsharded state, e.g. `get_model_state_dict` with `full_state_dict=True`; default: the model's
    own `state_dict()`) and merged by peft.
    """
    import peft

    lora_model = as_peft(model)
    state = full_state if full_state is not None else lora_model.state_dict()
    base_config = cast(PretrainedConfig, lora_model.get_base_model().config)
    with no_init_weights():
        skeleton = AutoModelForCausalLM.from_config(base_config, dtype=torch.float32)
    skeleton.tie_weights()  # skipped with the initialisation; keeps tied embeddings one tensor
    copy = peft.get_peft_model(skeleton, deepcopy(lora_model.peft_config[ADAPTER_NAME]))
    copy.load_state_dict(state, strict=True)
    merged = cast(PreTrainedModel, copy.merge_and_unload())
    return merged.eval()


def export_final(model: nn.Module, directory: Path, full_state: Mapping[str, Any]) -> None:
    """`final/`: the merged full model in `directory`, the PEFT adapter in `directory/adapter`."""
    save_adapter(model, directory / ADAPTER_SUBDIR, full_state)
    merged_model(model, full_state).save_pretrained(str(directory))


# ---------------------------------------------------------------------------- sft export


def find_adapter(path: Path) -> Path:
    """The adapter directory of a run, its `final/`, a checkpoint, or an adapter directory itself.

    A run prefers `final/adapter` and falls back to its newest checkpoint (`checkpoints/last`).
    """
    candidates = [
        path,
        path / ADAPTER_SUBDIR,
        path / "final" / ADAPTER_SUBDIR,
        path / "checkpoints" / "last" / ADAPTER_SUBDIR,
    ]
    for candidate in candidates:
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise LoraError(f"{path}: no LoRA adapter here (looked for {ADAPTER_CONFIG} in {', '.join(map(str, candidates))})")


def base_model_path(adapter_dir: Path) -> Path | None:
    """The base model directory recorded in `adapter_config.json` (None when it was not a directory)."""
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    return Path(recorded) if recorded and (Path(recorded) / "config.json").is_file() else None


def copy_adapter(adapter_dir: Path, out_dir: Path) -> None:
    """Copy the PEFT files of an adapter into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copy2(adapter_dir / name, out_dir / name)


def _first_with(directories: Iterable[Path], predicate: str) -> Path | None:
    return next((d for d in directories if (d / predicate).is_file()), None)


def merge_and_export(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Merge an adapter into its base and write a full Hugging Face model to `out_dir`.

    The tokenizer and `sft.json` are copied from beside the adapter (a run's `final/`), or for a
    checkpoint's adapter from its run's `final/`; failing those, the tokenizer of the base directory.
    """
    import peft

    from sft_trainer.models import load_hf

    merged = peft.PeftModel.from_pretrained(load_hf(base_dir), str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    run_final = adapter_dir.parent.parent.parent / "final"  # <run>/checkpoints/step-N/adapter
    nearby = [adapter_dir, adapter_dir.parent, run_final, base_dir]
    tokenizer_dir = _first_with(nearby, "tokenizer_config.json")
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(out_dir))
    sft_json = _first_with(nearby[:3], SFT_JSON)
    if sft_json is not None:
        shutil.copy2(sft_json / SFT_JSON, out_dir / SFT_JSON)
