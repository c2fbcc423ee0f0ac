"""Setting up the megatron backend: process group and parallel state, model chunks (from HF
weights), DDP wrappers, the distributed optimizer and the schedule hooks (Megatron-Bridge's
`training/setup`). `MegatronSetup` holds the state every other part of the backend reads.
"""

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sft_trainer.backends.megatron import conversion
from sft_trainer.backends.megatron.model import ModelPlan, build_model_chunks
from sft_trainer.config.schema import SFTConfig
from sft_trainer.distributed import current_env, init_process_group


@dataclass(frozen=True)
class MegatronTuning:
    """Throughput knobs beyond `SFTConfig.parallelism` (measured by `bench/bench_train.py`; defaults = off).

    - `gradient_accumulation_fusion`: TE's weight-gradient GEMMs accumulate straight into the fp32
      `main_grad` buffer (no bf16 `.grad` + add per micro-batch). Megatron's own output layer needs
      APEX for it, so that one layer keeps the unfused path.
    - `grad_reduce_in_fp32`: main grads and their data-parallel reduction in fp32 (else bf16).
    - `transformer_overrides`: extra `TransformerConfig` fields (fusions, recipes) for experiments.
    - `chunked_loss`: the output layer and cross-entropy run on the loss-carrying tokens only, a
      chunk at a time (`backends.loss`): no `[tokens, vocabulary]` logits, and no LM-head FLOPs for
      prompt tokens. Needs TP = 1 (a vocabulary-parallel head keeps megatron's own fused loss).
    """

    gradient_accumulation_fusion: bool = False
    grad_reduce_in_fp32: bool = True
    chunked_loss: bool = True
    transformer_overrides: Mapping[str, Any] = field(default_factory=dict)


def prefer_torch_cudnn() -> None:
    """Make Transformer Engine load the cuDNN that PyTorch uses, not another one on the system.

    TE searches `CUDNN_HOME` before the system paths; with two cuDNN 9 builds in one process, a
    sub-library of one resolves against the other and fails with an undefined symbol. Call before
    megatron-core / TE are first imported (the constructor does).
    """
    if os.environ.get("CUDNN_HOME") or os.environ.get("CUDNN_PATH"):
        return
    try:
        spec = importlib.util.find_spec("nvidia.cudnn")
    except ModuleNotFoundError:
        return
    if spec is not None and spec.submodule_search_locations:
        os.environ["CUDNN_HOME"] = next(iter(spec.submodule_search_locations))


def join_process_group(timeout_seconds: int) -> None:
    """Join (or create, for a single process: megatron's parallel state needs a group) the NCCL
    process group on `LOCAL_RANK`'s GPU, through `distributed.init_process_group` like every backend."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    env = current_env()
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    init_process_group(env, device, timeout_seconds, world_of_one=True)


class MegatronSetup:
    """The model chunks, their DDP wrappers and the optimizer of a `MegatronBackend`, and how they are built."""

    config: SFTConfig
    hf_config: Any
    tuning: MegatronTuning
    device: torch.device
    plan: ModelPlan
    tconfig: Any  # megatron.core.transformer.TransformerConfig
    chunks: list[Any]  # GPTModel per (virtual) pipeline chunk of this rank
    model: list[Any]  # the chunks under megatron's DistributedDataParallel
    optimizer: Any  # megatron's (distributed) optimizer

    def _build_chunks(self) -> list[Any]:
        """The model chunks; with gradient-accumulation fusion, megatron's (non-TE) output layer opts out."""
        if not self.tuning.gradient_accumulation_fusion:
            return build_model_chunks(self.plan, self.tconfig)
        from megatron.core.tensor_parallel import layers

        available = layers._grad_accum_fusion_available
        layers._grad_accum_fusion_available = True  # its constructor refuses without APEX; TE layers need none
        try:
            chunks = build_model_chunks(self.plan, self.tconfig)
        finally:
            layers._grad_accum_fusion_available = available
        if not available:
            for chunk in chunks:
                for module in chunk.modules():
                    if isinstance(module, layers.ColumnParallelLinear | layers.RowParallelLinear):
                        module.gradient_accumulation_fusion = False
        return chunks

    def _rank_key(self, chunk: int) -> conversion.ShardKey:
        from megatron.core import parallel_state as ps

        return (ps.get_pipeline_model_parallel_rank(), chunk, ps.get_tensor_model_parallel_rank())

    def load_hf_state_dict(self, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy Hugging Face weights into this rank's model chunks (before the optimizer exists)."""
        par = self.config.parallelism
        full = conversion.hf_to_megatron(hf_state_dict, self.plan.shape)
        for index, chunk in enumerate(self.chunks):
            local = conversion.shard_for_rank(
                full,
                self.plan.shape,
                self._rank_key(index),
                tp=par.tensor_model_parallel_size,
                pp=par.pipeline_model_parallel_size,
                vpp=par.virtual_pipeline_model_parallel_size,
            )
            result = chunk.load_state_dict(local, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
            if missing or result.unexpected_keys:
                raise ValueError(f"weight mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")

    def _wrap_ddp(self) -> list[Any]:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        par = self.config.parallelism
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=self.tuning.grad_reduce_in_fp32,
            overlap_grad_reduce=par.overlap_grad_reduce,
            overlap_param_gather=par.overlap_param_gather and par.distributed_optimizer,
            use_distributed_optimizer=par.distributed_optimizer,
            check_for_nan_in_grad=False,
            bucket_size=40_000_000 if par.overlap_grad_reduce else None,
        )
        return [
            DistributedDataParallel(
                config=self.tconfig,
                ddp_config=ddp_config,
                module=chunk,
                disable_bucketing=index > 0,  # megatron-LM: only the first chunk overlaps bucket-wise
            )
            for index, chunk in enumerate(self.chunks)
        ]

    def _make_optimizer(self) -> Any:
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        optim, par, trainer = self.config.optim, self.config.parallelism, self.config.trainer
        opt_config = OptimizerConfig(
            optimizer="adam",
            lr=optim.lr,
            min_lr=optim.sched.min_lr,
            weight_decay=optim.weight_decay,
            adam_beta1=optim.betas[0],
            adam_beta2=optim.betas[1],
            adam_eps=optim.eps,
            clip_grad=trainer.gradient_clip_val,
            bf16=trainer.precision == "bf16",
            fp16=trainer.precision == "fp16",
            params_dtype=self.tconfig.params_dtype,
            use_distributed_optimizer=par.distributed_optimizer,
            overlap_param_gather=par.overlap_param_gather and par.distributed_optimizer,
        )
        return get_megatron_optimizer(opt_config, self.model)

    def _install_schedule_hooks(self) -> None:
        """What megatron-LM's training loop sets on the config for overlapped communication."""
        from megatron.core.distributed import finalize_model_grads

        par = self.config.parallelism
        cfg = self.tconfig

        def finalize(model: list[Any], num_tokens: Any = None, **kwargs: Any) -> None:
            # Losses are already divided by the global batch's loss tokens: no second scaling.
            finalize_model_grads(model, None, **kwargs)

        cfg.finalize_model_grads_func = finalize
        cfg.grad_scale_func = self.optimizer.scale_loss
        if par.overlap_grad_reduce:
            no_sync = [m.no_sync for m in self.model]
            cfg.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

    def _sync_params(self) -> None:
        """Finish the distributed optimizer's parameter all-gather (overlapped with the next forward otherwise)."""
        if self.config.parallelism.overlap_param_gather and self.config.parallelism.distributed_optimizer:
            with torch.no_grad():
                for m in self.model:
                    m.start_param_sync(force_sync=True)
