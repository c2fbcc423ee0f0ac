"""The megatron-core + Transformer Engine backend (GPU only).

Importing this package never imports megatron-core or Transformer Engine: they load when a
`MegatronBackend` is constructed. `conversion` (HF <-> megatron state dicts) and `thd` (micro-batch
-> packed THD stream) are pure and run anywhere.
"""

from typing import TYPE_CHECKING, Any

from sft_trainer.backends.megatron.backend import MegatronBackend

if TYPE_CHECKING:
    import torch

    from sft_trainer.config.schema import SFTConfig
    from sft_trainer.distributed import DistributedEnv

__all__ = ["MegatronBackend", "create_backend"]


def create_backend(
    config: "SFTConfig", tokenizer: Any, env: "DistributedEnv", device: "torch.device"
) -> MegatronBackend:
    """Build the model the config names (same weights and init as the torch backend) on megatron.

    `env` and `device` are accepted for symmetry with the torch backend: megatron reads torchrun's
    environment itself and uses `LOCAL_RANK`'s GPU.
    """
    from sft_trainer.models import load_model

    model = load_model(config.model, vocab_size=len(tokenizer), seed=config.trainer.seed)
    if config.training.method == "lora":  # frozen base + adapters (backends/megatron/lora.py)
        from sft_trainer.backends.megatron.lora import MegatronLoraBackend

        return MegatronLoraBackend(config, model.config, model.state_dict())
    return MegatronBackend(config, model.config, model.state_dict())
