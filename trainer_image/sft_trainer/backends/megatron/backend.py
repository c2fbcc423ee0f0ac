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

The parts live by role (Megatron-Bridge's setup / step / checkpointing): `setup` (process group,
chunks, DDP, optimizer), `step` (THD micro-batches, schedule, optimizer step), `checkpointing`
(distributed checkpoints, async saves, HF export); this class puts them together.
"""

from collections.abc import Mapping
from typing import Any

import torch

from sft_trainer.backends.base import Backend
from sft_trainer.backends.megatron.checkpointing import CHECKPOINT_SUBDIR, MegatronCheckpointing
from sft_trainer.backends.megatron.model import make_plan, transformer_config
from sft_trainer.backends.megatron.setup import MegatronTuning, join_process_group, prefer_torch_cudnn
from sft_trainer.backends.megatron.step import MegatronStep, mask_padded_vocab
from sft_trainer.backends.megatron.thd import stream_multiple
from sft_trainer.config.schema import SFTConfig

__all__ = ["CHECKPOINT_SUBDIR", "MegatronBackend", "MegatronTuning", "prefer_torch_cudnn"]


class MegatronBackend(MegatronStep, MegatronCheckpointing, Backend):
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
        self.plan = make_plan(hf_config, par, max_seq_length=config.data.max_seq_length)
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
        self._save_queue = None
        padded = self.plan.shape.vocab_rows != self.plan.shape.vocab_size
        self._output_processor = mask_padded_vocab(self.plan.shape.vocab_size) if padded else None
        self._chunked_loss = self.tuning.chunked_loss and par.tensor_model_parallel_size == 1

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
