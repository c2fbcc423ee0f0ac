"""The megatron-core + Transformer Engine backend: TP / PP (interleaved) / DP, SP, distributed optimizer.

Megatron-core and Transformer Engine are imported inside methods only, so this module imports on
machines without them (CI); constructing a `MegatronBackend` needs CUDA and both packages.

Per optimizer step (`train_step`):
1. every micro-batch becomes one packed THD sequence (`thd.to_thd`): padding dropped, examples
   kept apart by `cu_seqlens` in TE's fused attention (`PackedSeqParams(qkv_format="thd")`);
2. megatron's pipeline schedule (`get_forward_backward_func`: no pipelining, 1F1B or interleaved
   1F1B) runs forward/backward over them; each micro-batch's loss is
   `sum(token losses) / global_loss_tokens`, and gradients are *summed* over data-parallel ranks
   (`calculate_per_token_loss`), so the step is the gradient of the global batch's token mean;
3. the distributed optimizer (fp32 main weights, bf16 model weights) checks the gradient norm,
   clips it and steps; a non-finite loss or norm skips the update (`StepResult.skipped`).
"""

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sft_trainer.backends.base import Backend, EvalResult, StepResult
from sft_trainer.backends.loss import chunked_linear_cross_entropy, loss_positions, scatter_token_losses
from sft_trainer.backends.megatron import conversion
from sft_trainer.backends.megatron.model import ModelPlan, build_model_chunks, make_plan, transformer_config
from sft_trainer.backends.megatron.thd import (
    ThdBatch,
    cp_shard,
    empty_thd,
    round_up,
    stream_multiple,
    thd_length,
    to_thd,
)
from sft_trainer.config.schema import SFTConfig
from sft_trainer.data.types import MicroBatch
from sft_trainer.distributed import current_env, init_process_group

CHECKPOINT_SUBDIR = "megatron"


@dataclass
class _DeviceBatch:
    """A THD micro-batch on the GPU, as the forward step consumes it."""

    tokens: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    labels: torch.Tensor  # [1, N]
    loss_mask: torch.Tensor  # [N] float32
    packed: Any  # megatron.core.packed_seq_params.PackedSeqParams
    loss_index: torch.Tensor | None = None  # [n] int64: the positions of `tokens` that carry loss


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
    import importlib.util

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


def _mask_padded_vocab(vocab_size: int) -> Callable[..., torch.Tensor]:
    """An `output_processor` for GPTModel: logits of the padded vocabulary rows never win a softmax."""

    def process(*, hidden_states: torch.Tensor, output_layer: Any, output_weight: Any, labels: Any, **kw: Any) -> Any:
        from megatron.core import parallel_state as ps

        logits, _ = output_layer(hidden_states, weight=output_weight, runtime_gather_output=False)
        local = logits.shape[-1]
        start = ps.get_tensor_model_parallel_rank() * local
        first_padded = max(vocab_size - start, 0)
        if first_padded < local:
            logits[..., first_padded:] = torch.finfo(logits.dtype).min
        if labels is None:
            return logits.transpose(0, 1).contiguous()
        return kw["compute_language_model_loss"](labels, logits)

    return process


class MegatronBackend(Backend):
    """A `Backend` (see `backends.base`) over megatron-core's GPTModel with Transformer Engine layers.

    Constructor: `MegatronBackend(config, hf_config, hf_state_dict=None)`
      - `config`: the run's `SFTConfig` (parallelism, precision, optimizer, clip, seed);
      - `hf_config`: a transformers `LlamaConfig` / `MistralConfig` / `Qwen2Config` giving the
        architecture (its `vocab_size` is the tokenizer's; it is padded internally for TP);
      - `hf_state_dict`: the initial Hugging Face weights (e.g. `load_model(...).state_dict()`, so
        both backends start from the same init); `None` keeps megatron's own random init (for a
        run that will `load_checkpoint` right away).
    Needs CUDA, megatron-core and Transformer Engine. Joins the process group from torchrun's
    environment (or creates a world of one) and initialises megatron's parallel state.
    """

    def __init__(
        self,
        config: SFTConfig,
        hf_config: Any,
        hf_state_dict: Mapping[str, torch.Tensor] | None = None,
        tuning: MegatronTuning | None = None,
    ):
        prefer_torch_cudnn()
        from megatron.core import parallel_state as ps
        from megatron.core import tensor_parallel

        self.config = config
        self.hf_config = hf_config
        self.tuning = tuning or MegatronTuning()
        par = config.parallelism
        join_process_group(par.distributed_timeout_seconds)
        if not ps.model_parallel_is_initialized():
            ps.initialize_model_parallel(
                tensor_model_parallel_size=par.tensor_model_parallel_size,
                pipeline_model_parallel_size=par.pipeline_model_parallel_size,
                virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
                context_parallel_size=par.context_parallel_size,
                # megatron builds timedelta(minutes=...): a fraction keeps the configured seconds exactly
                distributed_timeout_minutes=par.distributed_timeout_seconds / 60,
            )
        tensor_parallel.model_parallel_cuda_manual_seed(config.trainer.seed)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.plan: ModelPlan = make_plan(hf_config, par, max_seq_length=config.data.max_seq_length)
        self.tconfig = transformer_config(self.plan, par, config.trainer.precision)
        for name, value in {
            "gradient_accumulation_fusion": self.tuning.gradient_accumulation_fusion,
            **self.tuning.transformer_overrides,
        }.items():
            setattr(self.tconfig, name, value)
        self.chunks = self._build_chunks()
        if hf_state_dict is not None:
            self.load_hf_state_dict(hf_state_dict)
        self.model = self._wrap_ddp()
        self.optimizer = self._make_optimizer()
        self._install_schedule_hooks()
        self._cp = par.context_parallel_size
        # each CP rank's share a multiple of TP (sequence parallelism) and 16 (FP8); each example of 2 x CP
        self._example_multiple = 2 * self._cp if self._cp > 1 else 1
        self._token_multiple = stream_multiple(
            (par.tensor_model_parallel_size if par.sequence_parallel else 1) * (16 if par.fp8 != "none" else 1),
            self._cp,
        )
        self._save_queue: Any = None  # megatron AsyncCallsQueue, created by the first async save
        padded = self.plan.shape.vocab_rows != self.plan.shape.vocab_size
        self._output_processor = _mask_padded_vocab(self.plan.shape.vocab_size) if padded else None
        self._chunked_loss = self.tuning.chunked_loss and par.tensor_model_parallel_size == 1

    # -- construction ---------------------------------------------------------------------------

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

    # -- Backend protocol -----------------------------------------------------------------------

    @property
    def model_config(self) -> Any:
        """The Hugging Face config the model was built from."""
        return self.hf_config

    @property
    def data_parallel_rank(self) -> int:
        """This process's data-parallel rank (TP/PP peers share it and read the same rows)."""
        from megatron.core import parallel_state as ps

        return int(ps.get_data_parallel_rank())

    @property
    def data_parallel_size(self) -> int:
        """Number of model replicas."""
        from megatron.core import parallel_state as ps

        return int(ps.get_data_parallel_world_size())

    def _thd_batches(self, micro_batches: list[MicroBatch]) -> list[ThdBatch]:
        """THD streams; under pipeline parallelism all of one step share a length (stages exchange fixed shapes)."""
        multiple, per_example = self._token_multiple, self._example_multiple
        if self.config.parallelism.pipeline_model_parallel_size == 1:
            return [to_thd(b, multiple=multiple, example_multiple=per_example) for b in micro_batches]
        length = round_up(max(thd_length(b, multiple, per_example) for b in micro_batches), 64 * multiple)
        batches = [to_thd(b, multiple=multiple, length=length, example_multiple=per_example) for b in micro_batches]
        if self.config.parallelism.virtual_pipeline_model_parallel_size:  # interleaving needs M % PP == 0
            pp = self.config.parallelism.pipeline_model_parallel_size
            batches += [empty_thd(length) for _ in range(-len(batches) % pp)]
        return batches

    def _device_batch(self, thd: ThdBatch) -> _DeviceBatch:
        """This rank's tokens of a THD stream on the GPU (under CP: its dual-chunk share, `thd.cp_shard`)."""
        from megatron.core import parallel_state as ps
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = torch.from_numpy(thd.cu_seqlens).to(self.device, non_blocking=True)
        # Under CP, TE's THD attention and megatron's THD RoPE locate every example's chunks through the
        # padded cu_seqlens. The padding is part of each example (after its last real token), so the
        # padded and unpadded boundaries are the same object: TE then sees no padding between examples.
        padded = cu if self._cp > 1 else None
        packed = PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu,
            cu_seqlens_kv=cu,
            cu_seqlens_q_padded=padded,
            cu_seqlens_kv_padded=padded,
            max_seqlen_q=thd.max_seqlen,
            max_seqlen_kv=thd.max_seqlen,
        )
        if self._cp > 1:
            thd = cp_shard(thd, self._cp, ps.get_context_parallel_rank())

        def put(array: Any) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device, non_blocking=True)

        return _DeviceBatch(
            tokens=put(thd.tokens)[None],
            position_ids=put(thd.position_ids)[None],
            labels=put(thd.labels)[None],
            loss_mask=put(thd.loss_mask),
            packed=packed,
            loss_index=put(loss_positions(thd.labels, mask=thd.loss_mask)),
        )

    def _forward_step(self, scale: float, data: Iterator[_DeviceBatch], model: Any) -> tuple[torch.Tensor, Callable]:
        batch = next(data)
        output = model(
            batch.tokens,
            batch.position_ids,
            None,
            labels=batch.labels,
            packed_seq_params=batch.packed,
            output_processor=(
                partial(self._head_loss, batch.loss_index)
                if self._chunked_loss and batch.loss_index is not None
                else self._output_processor
            ),
        )
        return output, partial(self._loss, batch.loss_mask, scale)

    def _head_loss(
        self,
        index: torch.Tensor,
        *,
        hidden_states: torch.Tensor,
        output_layer: Any,
        output_weight: Any,
        labels: Any,
        **kw: Any,
    ) -> torch.Tensor:
        """GPTModel `output_processor`: per-token losses [1, N] from the loss positions' hidden states only.

        `hidden_states` is [N, 1, H] (after the final norm), `labels` [1, N]; the weight's padded
        vocabulary rows are left out, which equals masking their logits.
        """
        weight = output_layer.weight if output_weight is None else output_weight
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        losses = chunked_linear_cross_entropy(
            flat[index], weight[: self.plan.shape.vocab_size], labels.reshape(-1)[index]
        )
        return scatter_token_losses(losses, index, flat.shape[0]).reshape(labels.shape)

    @staticmethod
    def _loss(
        mask: torch.Tensor, scale: float, per_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        loss_sum = (per_token.float().reshape(-1) * mask).sum()
        tokens = mask.sum().to(torch.int)
        return loss_sum * scale, tokens, {"loss_sum": loss_sum.detach()}

    def _run_schedule(self, micro_batches: list[MicroBatch], scale: float, forward_only: bool) -> torch.Tensor:
        """Forward (and backward) over the micro-batches; the summed loss on every rank of this replica."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        streams = self._thd_batches(micro_batches)
        seq_length = max(len(t.tokens) for t in streams)  # the whole stream: megatron divides by CP itself
        batches = [self._device_batch(t) for t in streams]
        iterators: Any = [iter(batches) for _ in self.model]
        outputs = get_forward_backward_func()(
            forward_step_func=partial(self._forward_step, scale),
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.model,
            num_microbatches=len(batches),
            seq_length=seq_length,
            micro_batch_size=1,
            forward_only=forward_only,
        )
        local = torch.zeros((), dtype=torch.float64, device=self.device)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            for out in outputs:
                local += out["loss_sum"].double()
        if ps.get_pipeline_model_parallel_world_size() > 1:  # only the last stage has losses
            dist.all_reduce(local, group=ps.get_pipeline_model_parallel_group())
        return local

    def train_step(self, micro_batches: list[MicroBatch], global_loss_tokens: int, lr: float) -> StepResult:
        """Forward/backward over this rank's micro-batches, check, clip, and step at `lr`."""
        from megatron.core import parallel_state as ps

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        local = self._run_schedule(micro_batches, 1.0 / max(global_loss_tokens, 1), forward_only=False)
        dist.all_reduce(local, group=ps.get_data_parallel_group(with_context_parallel=True))
        loss = float(local) / max(global_loss_tokens, 1)
        found_inf = bool(self.optimizer.prepare_grads())
        grad_norm = float(self.optimizer.get_grad_norm()) if not found_inf else math.nan
        if found_inf or not math.isfinite(grad_norm) or not math.isfinite(loss):
            self.optimizer.zero_grad()
            return StepResult(loss=loss, grad_norm=grad_norm, skipped=True)
        success, _, _ = self.optimizer.step()
        return StepResult(loss=loss, grad_norm=grad_norm, skipped=not success)

    @torch.no_grad()
    def eval_step(self, micro_batch: MicroBatch) -> EvalResult:
        """Summed loss over one micro-batch of this rank, no gradients."""
        for m in self.model:
            m.eval()
        local = self._run_schedule([micro_batch], 1.0, forward_only=True)
        if self._cp > 1:  # each CP rank holds the loss of its share of the tokens
            from megatron.core import parallel_state as ps

            dist.all_reduce(local, group=ps.get_context_parallel_group())
        return EvalResult(loss_sum=float(local), loss_tokens=micro_batch.num_loss_tokens)

    # -- logits (tests, generation) -------------------------------------------------------------

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Full-vocabulary logits [B, S, V] for token ids [B, S] (one pipeline stage only).

        With `cu_seqlens`, `input_ids` is one packed row [1, N] and attention stays inside each
        example (THD); without, each row is one causal sequence (BSHD).
        """
        from megatron.core import parallel_state as ps
        from megatron.core.packed_seq_params import PackedSeqParams
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        if len(self.chunks) != 1 or ps.get_pipeline_model_parallel_world_size() != 1 or self._cp > 1:
            raise NotImplementedError("logits() runs on a single pipeline stage without context parallelism")
        self._sync_params()
        model = self.chunks[0]
        model.eval()
        packed = None
        if cu_seqlens is not None:
            cu = cu_seqlens.to(self.device, torch.int32)
            longest = int((cu[1:] - cu[:-1]).max())
            packed = PackedSeqParams(
                qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
            )
        positions = torch.arange(input_ids.shape[1], device=self.device)[None].expand_as(input_ids)
        out = model(input_ids.to(self.device), positions, None, packed_seq_params=packed)
        out = gather_from_tensor_model_parallel_region(out)
        return out[..., : self.plan.shape.vocab_size].float()

    # -- checkpoints ----------------------------------------------------------------------------

    def _sharded_state_dict(self, is_loading: bool) -> dict[str, Any]:
        """Model chunks + optimizer as megatron sharded state (the optimizer state is stored per parameter,
        gathered over DP: `fully_reshardable`, so a checkpoint loads under another TP / PP / DP layout)."""
        metadata = {"distrib_optim_sharding_type": "fully_reshardable", "singleton_local_shards": False}
        model_sd: dict[str, Any] = {}
        if len(self.chunks) == 1:
            model_sd["model"] = self.chunks[0].sharded_state_dict(metadata=metadata)
        else:
            for index, chunk in enumerate(self.chunks):
                model_sd[f"model{index}"] = chunk.sharded_state_dict(metadata=metadata)
        state: dict[str, Any] = dict(model_sd)
        state["optimizer"] = self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)
        return state

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
        from megatron.core import dist_checkpointing

        state = dist_checkpointing.load(self._sharded_state_dict(is_loading=True), str(directory / CHECKPOINT_SUBDIR))
        if len(self.chunks) == 1:
            self.chunks[0].load_state_dict(state["model"], strict=False)
        else:
            for index, chunk in enumerate(self.chunks):
                chunk.load_state_dict(state[f"model{index}"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])

    # -- export ---------------------------------------------------------------------------------

    def gather_hf_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model as a Hugging Face state dict on global rank 0 (None elsewhere)."""
        from megatron.core import parallel_state as ps

        self._sync_params()
        mine: dict[conversion.ShardKey, dict[str, torch.Tensor]] = {}
        if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
            for index, chunk in enumerate(self.chunks):
                local = conversion.strip_extra_state(chunk.state_dict())
                mine[self._rank_key(index)] = {k: v.detach().cpu() for k, v in local.items()}
        gathered: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
        dist.gather_object(mine, gathered if dist.get_rank() == 0 else None, dst=0)
        if dist.get_rank() != 0:
            return None
        shards = {key: state for part in gathered for key, state in part.items()}
        return conversion.megatron_shards_to_hf(shards, self.plan.shape)

    def export_hf(self, directory: Path) -> None:
        """config.json + model.safetensors that `transformers` loads; rank 0 writes."""
        from safetensors.torch import save_file

        state = self.gather_hf_state_dict()
        if state is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.plan.hf_config.save_pretrained(directory)
            save_file(
                {k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), {"format": "pt"}
            )
        dist.barrier()
