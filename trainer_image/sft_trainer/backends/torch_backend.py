"""The pure-PyTorch backend: a `transformers` model under DDP or FSDP2, on CPU or GPUs.

Precision: on CUDA, `bf16` and `fp16` run the forward pass under `torch.autocast` with float32
master weights and optimizer state (fp16 adds a dynamic `GradScaler`); `fp32` runs in float32.
With `parallelism.data_parallel: fsdp2` and `bf16` on CUDA the model computes in bf16 instead:
FSDP2's mixed-precision policy gathers bf16 copies of the float32 master weights and reduces the
gradients in float32 (no autocast, a bf16 residual stream; a single GPU joins a group of one).
On the CPU every precision computes in float32 (CPU autocast is slow and gains nothing for the
small models trained there), so CPU losses are exact and reproducible.

On CUDA, when the optional `liger-kernel` package (extra `gpu`) is installed and supports the
model type, its Triton RMSNorm, RoPE and SwiGLU replace the model's own (`use_liger_kernels`).

Packed rows on a GPU go through flex attention with a block-causal `BlockMask` built from the
segment ids (no example attends to another, and fully masked blocks are skipped); elsewhere they
get a dense 4-D mask. For the Llama-family models in `CHUNKED_HEAD_MODELS` the LM head and the
cross-entropy run on the loss-carrying positions only, a chunk at a time (`backends.loss`).
"""

import contextlib
import functools
import importlib
import inspect
import logging
import math
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn import functional
from transformers import PreTrainedModel

from sft_trainer import lora
from sft_trainer.backends.base import Backend, EvalResult, StepResult
from sft_trainer.backends.loss import chunked_linear_cross_entropy, loss_positions
from sft_trainer.config.schema import OptimConfig, SFTConfig
from sft_trainer.data.types import IGNORE_INDEX, MicroBatch
from sft_trainer.distributed import DistributedEnv, all_reduce_sum, init_process_group
from sft_trainer.models import load_hf

log = logging.getLogger(__name__)
MODEL_SUBDIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
_FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
FLEX_ATTENTION = "sft_flex_attention"
# model types whose forward is `logits = lm_head(final hidden states)` with a bias-free head (no scaling, softcap)
CHUNKED_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision on a device; None means plain float32."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def fsdp2_compute_dtype(precision: str, data_parallel: str, device: torch.device) -> torch.dtype | None:
    """The dtype FSDP2 gathers the weights in for compute (float32 master weights stay sharded), or
    None for autocast. bf16 only: fp16 keeps autocast and its `GradScaler`."""
    if device.type == "cuda" and data_parallel == "fsdp2" and precision == "bf16":
        return torch.bfloat16
    return None


def use_liger_kernels(model: PreTrainedModel, device: torch.device) -> bool:
    """Swap in Liger's Triton RMSNorm, RoPE and SwiGLU (not its loss: the chunked head does that) on
    CUDA when `liger-kernel` is installed and knows the model type; True when it did."""
    if device.type != "cuda":
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return False
    if getattr(model.config, "model_type", None) not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False
    family = importlib.import_module(type(model).__module__)  # e.g. transformers.models.llama.modeling_llama
    before = dict(vars(family))
    # the same entry point transformers' Trainer uses for `use_liger_kernel`
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    keep_patches_on_cuda(family, before)
    return True


def keep_patches_on_cuda(module: types.ModuleType, before: dict[str, Any]) -> None:
    """Undo what a kernel library rebound in `module` beyond one model instance: replaced classes go
    back, replaced functions run the new version on CUDA tensors only.

    Liger rebinds the model family's norm and MLP classes and its RoPE function module-wide, so every
    model of that family built later in the process would get Triton kernels, CPU models included
    (the demo's CPU accuracy model failed: Triton cannot read CPU tensors). The patched instance keeps
    its swapped modules; RoPE is looked up in the module at call time, hence the dispatch.
    """
    for name, original in before.items():
        replaced = vars(module).get(name)
        if replaced is original:
            continue
        if inspect.isfunction(original) and callable(replaced):
            setattr(module, name, _on_cuda(replaced, original))
        else:
            setattr(module, name, original)


def _on_cuda(fast: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fallback)
    def dispatch(first: Any, *args: Any, **kwargs: Any) -> Any:
        return (fast if getattr(first, "is_cuda", False) else fallback)(first, *args, **kwargs)

    return dispatch


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only, none on norms and biases (1-D parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the config's betas, eps and weight decay (lr is set every step by the loop)."""
    return torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        fused=device.type == "cuda",
    )


def attention_inputs(batch: MicroBatch, device: torch.device, flex: bool = False) -> dict[str, Any]:
    """Extra forward arguments for a micro-batch.

    Rows holding one example each need none: padding sits at the end, so causal attention never
    lets a real token see it, and the default positions are right. Packed rows get per-example
    position ids and a block-causal mask from their segment ids: a flex-attention `BlockMask`
    when `flex`, else a dense 4-D bool mask.
    """
    if int(batch.segment_ids.max(initial=0)) <= 1 and not flex:
        return {}
    segments = torch.from_numpy(batch.segment_ids).to(device)
    if flex:
        mask: Any = packed_block_mask(segments)
    else:
        from sft_trainer.data.attention import block_causal_mask

        mask = torch.as_tensor(block_causal_mask(segments), device=device)
    return {"attention_mask": mask, "position_ids": torch.from_numpy(batch.position_ids).to(device)}


def packed_block_mask(segments: torch.Tensor) -> Any:
    """A flex-attention `BlockMask` for `[B, T]` segment ids: causal, and only inside one segment
    (padding, segment 0, attends to earlier padding only and carries no loss)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_example_causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (segments[b, q] == segments[b, kv]) & (q >= kv)

    rows, length = segments.shape
    return create_block_mask(same_example_causal, rows, None, length, length, device=segments.device)


def _flex_attention_one_dtype(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
) -> Any:
    """transformers' flex attention with query and key in the value's dtype: under autocast, RoPE
    leaves them in float32 (the residual stream's dtype) while the projections give bf16 values."""
    from transformers.integrations.flex_attention import flex_attention_forward

    return flex_attention_forward(module, query.to(value.dtype), key.to(value.dtype), value, *args, **kwargs)


def use_flex_attention(model: PreTrainedModel) -> None:
    """Switch `model` to flex attention (registered once as `FLEX_ATTENTION`); masks come from `packed_block_mask`."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX_ATTENTION, _flex_attention_one_dtype)
    model.set_attn_implementation(FLEX_ATTENTION)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one (Llama-style `model.layers`, GPT-2 `transformer.h`)."""
    get_base = getattr(model, "get_base_model", None)  # a peft model: look inside
    base = get_base() if callable(get_base) else model
    for container in ("model", "transformer"):
        inner = getattr(base, container, None)
        for name in ("layers", "h"):
            layers = getattr(inner, name, None)
            if isinstance(layers, nn.ModuleList):
                return list(layers)
    return []


class TorchBackend(Backend):
    """A `Backend` (see `backends.base`) over a Hugging Face causal LM."""

    def __init__(self, config: SFTConfig, model: PreTrainedModel, env: DistributedEnv, device: torch.device) -> None:
        self.config = config
        self.env = env
        self.device = device
        self.lora = config.training.method == "lora"
        self.liger = use_liger_kernels(model, device)
        if self.lora:  # peft wraps the model: the base is frozen, only the adapters train
            model = lora.with_adapters(model, config.training.lora)
        self.hf_model: PreTrainedModel = model.to(device)  # type: ignore[arg-type]
        self.hf_model.config.use_cache = False
        precision = config.trainer.precision
        self.compute_dtype = fsdp2_compute_dtype(precision, config.parallelism.data_parallel, device)
        self.model: nn.Module = self._wrap(self.hf_model)
        self.optimizer = make_optimizer(self.model, config.optim, device)
        self.autocast = None if self.compute_dtype else autocast_dtype(precision, device)
        if self.autocast is None and self.compute_dtype is None and precision != "fp32":
            log.info("trainer.precision=%s on %s: computing in float32", precision, device.type)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast == torch.float16)
        self.flex = device.type == "cuda" and config.data.packing
        if self.flex:
            use_flex_attention(self.hf_model)
        head = self.hf_model.get_output_embeddings()
        self.chunked_head = (
            getattr(self.hf_model.config, "model_type", "") in CHUNKED_HEAD_MODELS
            and isinstance(head, nn.Linear)
            and head.bias is None
        )

    def _wrap(self, model: PreTrainedModel) -> nn.Module:
        if self.compute_dtype is not None:  # FSDP2 even on one GPU: its policy is the bf16 compute
            init_process_group(
                self.env, self.device, self.config.parallelism.distributed_timeout_seconds, world_of_one=True
            )
        elif not self.env.is_distributed:
            return model
        if self.config.parallelism.data_parallel == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(self.device.type, (self.env.world_size,))
            policy = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
            for layer in decoder_layers(model):
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    @property
    def model_config(self) -> Any:
        """The Hugging Face config of the model being trained."""
        return self.hf_model.config

    @property
    def data_parallel_rank(self) -> int:
        """This process's data-parallel rank (every process is a replica here)."""
        return self.env.rank

    @property
    def data_parallel_size(self) -> int:
        """Number of processes."""
        return self.env.world_size

    @contextlib.contextmanager
    def _gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Reduce gradients across ranks only on the last micro-batch of a step."""
        if isinstance(self.model, nn.parallel.DistributedDataParallel) and not enabled:
            with self.model.no_sync():
                yield
            return
        setter = getattr(self.model, "set_requires_gradient_sync", None)  # FSDP2
        if setter is not None:
            setter(enabled)
        yield

    def _loss_sum(self, batch: MicroBatch) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch (labels are already next-token targets)."""
        input_ids = torch.from_numpy(batch.input_ids).to(self.device)
        labels = torch.from_numpy(batch.labels).to(self.device)
        extra = attention_inputs(batch, self.device, flex=self.flex)
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        )
        if self.chunked_head:
            index = torch.from_numpy(loss_positions(batch.labels, ignore=IGNORE_INDEX)).to(self.device)
            with autocast, self._loss_head(index, labels.flatten()[index]):
                return self.model(input_ids=input_ids, use_cache=False, **extra).logits.sum()
        with autocast:
            logits = self.model(input_ids=input_ids, use_cache=False, **extra).logits
        return functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )

    @contextlib.contextmanager
    def _loss_head(self, index: torch.Tensor, targets: torch.Tensor) -> Iterator[None]:
        """While active, the LM head returns the per-token losses of the positions `index` (flat over
        [B, T]) instead of logits: `chunked_linear_cross_entropy`, inside the model's forward (so
        DDP / FSDP2 see the head's weight used as usual)."""
        head = self.hf_model.get_output_embeddings()

        def losses(hidden: torch.Tensor) -> torch.Tensor:
            flat = hidden.reshape(-1, hidden.shape[-1])
            return chunked_linear_cross_entropy(flat[index], head.weight, targets)

        head.forward = losses
        try:
            yield
        finally:
            del head.forward

    def train_step(self, micro_batches: list[MicroBatch], global_loss_tokens: int, lr: float) -> StepResult:
        """Accumulate over this rank's micro-batches, clip, and step at `lr`.

        Each micro-batch's summed loss is divided by the global batch's loss tokens and multiplied
        by the data-parallel size (DDP and FSDP2 average gradients over ranks), so the update is
        the gradient of the token-mean loss over the whole global batch.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        scale = self.data_parallel_size / max(global_loss_tokens, 1)
        local_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for index, batch in enumerate(micro_batches):
            with self._gradient_sync(index == len(micro_batches) - 1):
                loss_sum = self._loss_sum(batch)
                self.scaler.scale(loss_sum * scale).backward()
            local_sum += loss_sum.detach()  # on the device: no host sync between micro-batches
        (total,) = all_reduce_sum([float(local_sum)], self.device)
        loss = total / max(global_loss_tokens, 1)
        self.scaler.unscale_(self.optimizer)
        clip = self.config.trainer.gradient_clip_val or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(loss) or (not math.isfinite(grad_norm) and not self.scaler.is_enabled()):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss=loss, grad_norm=grad_norm, skipped=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, grad_norm=grad_norm)

    @torch.no_grad()
    def eval_step(self, micro_batch: MicroBatch) -> EvalResult:
        """Summed loss over one micro-batch of this rank, no gradients."""
        self.model.eval()
        loss_sum = self._loss_sum(micro_batch)
        return EvalResult(loss_sum=float(loss_sum), loss_tokens=micro_batch.num_loss_tokens)

    def save_checkpoint(self, directory: Path) -> None:
        """Model weights as a Hugging Face directory (safetensors) + optimizer state (torch.save).

        Under LoRA: only the adapter (`adapter/`, PEFT format) and the adapters' optimizer state.
        """
        model_state = get_model_state_dict(self.model, options=lora.TRAINABLE_STATE if self.lora else _FULL_STATE)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=_FULL_STATE)
        if self.env.is_rank_zero and self.lora:
            lora.save_adapter(self.hf_model, directory / lora.ADAPTER_SUBDIR, model_state)
        elif self.env.is_rank_zero:
            self.hf_model.save_pretrained(directory / MODEL_SUBDIR, state_dict=model_state)
        if self.env.is_rank_zero:
            torch.save({"optimizer": optim_state, "scaler": self.scaler.state_dict()}, directory / OPTIMIZER_FILE)
        if dist.is_initialized():
            dist.barrier()

    def load_checkpoint(self, directory: Path) -> None:
        """Restore what `save_checkpoint` wrote (every rank reads the files)."""
        if self.lora:
            lora.load_adapter(self.model, self.hf_model, directory / lora.ADAPTER_SUBDIR)
        else:
            weights = load_hf(directory / MODEL_SUBDIR).state_dict()
            set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        saved = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(
            self.model, self.optimizer, saved["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        self.scaler.load_state_dict(saved["scaler"])

    def export_hf(self, directory: Path) -> None:
        """The trained model as a Hugging Face directory; rank 0 writes.

        Under LoRA: the merged model, and the PEFT adapter in `adapter/`.
        """
        model_state = get_model_state_dict(self.model, options=_FULL_STATE)
        if self.env.is_rank_zero and self.lora:
            lora.export_final(self.hf_model, directory, model_state)
        elif self.env.is_rank_zero:
            self.hf_model.save_pretrained(directory, state_dict=model_state)
        if dist.is_initialized():
            dist.barrier()
