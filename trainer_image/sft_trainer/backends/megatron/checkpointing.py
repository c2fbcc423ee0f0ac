"""The megatron backend's checkpoints (distributed, resharding-capable, optionally written in the
background) and its Hugging Face export (Megatron-Bridge's `training/checkpointing`)."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sft_trainer.backends.megatron import conversion
from sft_trainer.backends.megatron.setup import MegatronSetup

CHECKPOINT_SUBDIR = "megatron"
#: The optimizer state is stored per parameter, gathered over DP: a checkpoint loads under another TP / PP / DP layout.
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False}


def gather_shards(
    mine: Mapping[conversion.ShardKey, conversion.StateDict],
) -> dict[conversion.ShardKey, conversion.StateDict] | None:
    """Every rank's local tensors `{(pp_rank, vp_chunk, tp_rank): state}` on global rank 0 (None elsewhere);
    every rank calls it."""
    gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
    dist.gather_object(dict(mine), gathered if dist.get_rank() == 0 else None, dst=0)
    if dist.get_rank() != 0:
        return None
    return {key: state for part in gathered for key, state in part.items()}


def write_hf_model(directory: Path, hf_config: Any, state: Mapping[str, torch.Tensor]) -> None:
    """config.json + model.safetensors that `transformers` loads."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), {"format": "pt"})


class MegatronCheckpointing(MegatronSetup):
    """Save, load and export of a `MegatronBackend`; `Backend`'s optional async-save ability."""

    _save_queue: Any  # megatron's AsyncCallsQueue, created by the first async save

    def _sharded_state_dict(self, is_loading: bool) -> dict[str, Any]:
        """Model chunks + optimizer as megatron sharded state (`SHARDING_METADATA`: fully reshardable)."""
        model_sd: dict[str, Any] = {}
        if len(self.chunks) == 1:
            model_sd["model"] = self.chunks[0].sharded_state_dict(metadata=SHARDING_METADATA)
        else:
            for index, chunk in enumerate(self.chunks):
                model_sd[f"model{index}"] = chunk.sharded_state_dict(metadata=SHARDING_METADATA)
        return self._with_optimizer(model_sd, is_loading)

    def _with_optimizer(self, model_sd: dict[str, Any], is_loading: bool) -> dict[str, Any]:
        """`model_sd` and the optimizer's sharded state of those parameters."""
        state: dict[str, Any] = dict(model_sd)
        state["optimizer"] = self.optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=SHARDING_METADATA
        )
        return state

    def _load_sharded(self, directory: Path) -> dict[str, Any]:
        """`dist_checkpointing.load` of `directory/megatron` into this layout's sharded state."""
        from megatron.core import dist_checkpointing

        loaded: dict[str, Any] = dist_checkpointing.load(
            self._sharded_state_dict(is_loading=True), str(directory / CHECKPOINT_SUBDIR)
        )
        return loaded

    def save_checkpoint(self, directory: Path) -> None:
        """A megatron distributed checkpoint (model + optimizer, resharding-capable) under `directory/megatron`."""
        from megatron.core import dist_checkpointing

        self.finalize_saves(blocking=True)
        target = self._prepare_save(directory)
        dist_checkpointing.save(self._sharded_state_dict(is_loading=False), str(target))
        dist.barrier()

    def _prepare_save(self, directory: Path) -> Path:
        self._sync_params()
        target = directory / CHECKPOINT_SUBDIR
        if dist.get_rank() == 0:
            target.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        return target

    def save_checkpoint_async(self, directory: Path, finalize: Callable[[], None]) -> None:
        """Start `save_checkpoint(directory)` in the background; `finalize` runs once every rank has written.

        Megatron's async save (`async_sharded_save=True`, the `mcore` strategy): the shards are copied
        to host memory here, then a forked process per rank writes them while training goes on.
        `finalize_saves` (called by the loop every step, on every rank) notices when all ranks are
        done, writes megatron's `metadata.json` and then calls `finalize` (the loop publishes the
        checkpoint there: meta.json + atomic rename). One save is in flight at a time: a new one
        first finishes the previous. If the process dies before `finalize`, nothing is published
        and the previous checkpoint stays the newest.
        """
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.finalize_saves(blocking=True)
        target = self._prepare_save(directory)
        request = dist_checkpointing.save(
            self._sharded_state_dict(is_loading=False), str(target), async_sharded_save=True, async_strategy="mcore"
        )
        request.add_finalize_fn(finalize)
        if self._save_queue is None:
            self._save_queue = AsyncCallsQueue()
        self._save_queue.schedule_async_request(request)

    def finalize_saves(self, blocking: bool = False) -> int:
        """Finish the async saves every rank has completed (all of them when `blocking`); call on every rank.
        Returns how many are still in flight."""
        if self._save_queue is None or not self._save_queue.get_num_unfinalized_calls():
            return 0
        self._save_queue.maybe_finalize_async_calls(blocking=blocking)
        return int(self._save_queue.get_num_unfinalized_calls())

    def load_checkpoint(self, directory: Path) -> None:
        """Restore `save_checkpoint`'s output, also under a different TP / PP / DP layout."""
        state = self._load_sharded(directory)
        if len(self.chunks) == 1:
            self.chunks[0].load_state_dict(state["model"], strict=False)
        else:
            for index, chunk in enumerate(self.chunks):
                chunk.load_state_dict(state[f"model{index}"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])

    def _exports_key(self, name: str) -> bool:
        """Whether a model-chunk state key belongs in the Hugging Face export (all of them here)."""
        return True

    def gather_hf_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model as a Hugging Face state dict on global rank 0 (None elsewhere)."""
        from megatron.core import parallel_state as ps

        self._sync_params()
        mine: dict[conversion.ShardKey, conversion.StateDict] = {}
        if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
            for index, chunk in enumerate(self.chunks):
                local = conversion.strip_extra_state(chunk.state_dict())
                mine[self._rank_key(index)] = {k: v.detach().cpu() for k, v in local.items() if self._exports_key(k)}
        shards = gather_shards(mine)
        return None if shards is None else conversion.megatron_shards_to_hf(shards, self.plan.shape)

    def export_hf(self, directory: Path) -> None:
        """config.json + model.safetensors that `transformers` loads; rank 0 writes."""
        state = self.gather_hf_state_dict()
        if state is not None:
            write_hf_model(directory, self.plan.hf_config, state)
        dist.barrier()
