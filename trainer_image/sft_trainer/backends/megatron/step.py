"""The megatron backend's step: micro-batches -> packed THD streams on the GPU -> megatron's
pipeline schedule -> loss, gradient norm and the optimizer step (Megatron-Bridge's `training/train`).
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from sft_trainer.backends.base import EvalResult, StepResult
from sft_trainer.backends.loss import chunked_linear_cross_entropy, loss_positions, scatter_token_losses
from sft_trainer.backends.megatron.setup import MegatronSetup
from sft_trainer.backends.megatron.thd import ThdBatch, cp_shard, empty_thd, round_up, thd_length, to_thd
from sft_trainer.data.types import MicroBatch


@dataclass
class DeviceBatch:
    """A THD micro-batch on the GPU, as the forward step consumes it."""

    tokens: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    labels: torch.Tensor  # [1, N]
    loss_mask: torch.Tensor  # [N] float32
    packed: Any  # megatron.core.packed_seq_params.PackedSeqParams
    loss_index: torch.Tensor | None = None  # [n] int64: the positions of `tokens` that carry loss


def mask_padded_vocab(vocab_size: int) -> Callable[..., torch.Tensor]:
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


class MegatronStep(MegatronSetup):
    """Training and evaluation steps (and full logits) of a `MegatronBackend`."""

    _cp: int  # context-parallel size
    _example_multiple: int  # each example's THD length is a multiple of this (2 x CP under CP)
    _token_multiple: int  # each stream's length is a multiple of this (SP, FP8, CP)
    _output_processor: Callable[..., torch.Tensor] | None  # masks the padded vocabulary's logits
    _chunked_loss: bool  # the head and loss run on the loss positions only (`backends.loss`)

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

    def _device_batch(self, thd: ThdBatch) -> DeviceBatch:
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

        return DeviceBatch(
            tokens=put(thd.tokens)[None],
            position_ids=put(thd.position_ids)[None],
            labels=put(thd.labels)[None],
            loss_mask=put(thd.loss_mask),
            packed=packed,
            loss_index=put(loss_positions(thd.labels, mask=thd.loss_mask)),
        )

    def _forward_step(self, scale: float, data: Iterator[DeviceBatch], model: Any) -> tuple[torch.Tensor, Callable]:
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
