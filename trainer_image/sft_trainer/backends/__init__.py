"""Backends the loop can drive: `torch` (always) and `megatron` (GPUs with megatron-core)."""

import importlib.util

import torch
from transformers import PreTrainedTokenizerBase

from sft_trainer.backends.base import Backend, EvalResult, StepResult
from sft_trainer.config.schema import SFTConfig
from sft_trainer.distributed import DistributedEnv

__all__ = ["Backend", "EvalResult", "StepResult", "choose_backend", "create_backend"]


def choose_backend(requested: str, cuda: bool, megatron_available: bool, method: str = "full") -> str:
    """`auto` means megatron on CUDA when megatron-core is installed, else torch (full and LoRA alike:
    `method` is accepted for callers that pass it; both backends train adapters)."""
    if requested != "auto":
        return requested
    return "megatron" if cuda and megatron_available else "torch"


def _megatron_available() -> bool:
    try:
        return importlib.util.find_spec("megatron.core") is not None
    except ModuleNotFoundError:
        return False


def create_backend(
    config: SFTConfig, tokenizer: PreTrainedTokenizerBase, env: DistributedEnv, device: torch.device
) -> Backend:
    """Build the model and optimizer for this process, on the backend the config picks."""
    name = choose_backend(
        config.parallelism.backend, device.type == "cuda", _megatron_available(), config.training.method
    )
    if name == "megatron":
        from sft_trainer.backends import megatron

        return megatron.create_backend(config, tokenizer, env, device)
    from sft_trainer.backends.torch_backend import TorchBackend
    from sft_trainer.models import load_model

    model = load_model(config.model, vocab_size=len(tokenizer), seed=config.trainer.seed)
    return TorchBackend(config, model, env, device)
