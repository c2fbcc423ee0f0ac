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

The parts by role (Megatron-Bridge's `peft/lora.py`, `lora_layers.py`, `lora_merge.py`):
`lora_mapping` (pure: names, shapes, sharding, HF <-> megatron adapter tensors, initialisation),
`lora_layers` (the adapter module and its hook on a TE layer), `lora_merge` (PEFT files and the
merge into the base); this module attaches them to a `MegatronBackend` and is the LoRA backend.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from sft_trainer.backends.megatron.backend import MegatronBackend
from sft_trainer.backends.megatron.checkpointing import gather_shards, write_hf_model
from sft_trainer.backends.megatron.conversion import ModelShape, ShardKey, StateDict, layer_ranges
from sft_trainer.backends.megatron.lora_layers import LoraAdapter, hook
from sft_trainer.backends.megatron.lora_mapping import (
    ADAPTER_SUBDIR,
    LORA_SUFFIX,
    adapted_layers,
    check_hf_adapter,
    hf_adapter_to_megatron_shard,
    init_hf_adapter,
    is_adapter_key,
    lora_config_problems,
    megatron_adapter_shards_to_hf,
    megatron_key,
    scaling,
    split_axis,
)
from sft_trainer.backends.megatron.lora_merge import merge_into_hf, peft_lora_config, write_peft
from sft_trainer.config.schema import LoraConfig, SFTConfig

if TYPE_CHECKING:
    import peft


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
                    base.register_forward_hook(hook(adapter, fused_norm))
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
        shards = gather_shards(mine)
        return None if shards is None else megatron_adapter_shards_to_hf(shards, self.shape, self.layers)

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
        base = self.backend.gather_hf_state_dict()
        adapter = self.gather_hf_adapter()
        if base is not None and adapter is not None:
            write_peft(directory / ADAPTER_SUBDIR, adapter, self.peft_config())
            write_hf_model(directory, self.backend.plan.hf_config, merge_into_hf(base, adapter, scaling(self.config)))
        dist.barrier()


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
        return self._with_optimizer({"model": self.lora.sharded_state_dict()}, is_loading)

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
        state = self._load_sharded(directory)
        self.lora.load_sharded(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def _exports_key(self, name: str) -> bool:
        """The frozen base only: `gather_hf_state_dict` leaves the adapters out (they merge in `export_hf`)."""
        return not is_adapter_key(name)

    def export_hf(self, directory: Path) -> None:
        """`final/`: merged model (config.json + model.safetensors) and `adapter/` (PEFT)."""
        self.lora.export_final(directory)
