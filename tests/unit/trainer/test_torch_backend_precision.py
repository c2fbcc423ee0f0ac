"""Which compute path the torch backend picks for a precision, data-parallel mode and device."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sft_trainer.backends.torch_backend import autocast_dtype, fsdp2_compute_dtype, use_liger_kernels

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("precision", "data_parallel", "device", "expected"),
    [
        ("bf16", "fsdp2", CUDA, torch.bfloat16),  # FSDP2 gathers bf16 copies of the fp32 master weights
        ("bf16", "ddp", CUDA, None),  # DDP keeps autocast
        ("fp16", "fsdp2", CUDA, None),  # fp16 keeps autocast and its GradScaler
        ("fp32", "fsdp2", CUDA, None),
        ("bf16", "fsdp2", CPU, None),  # the CPU always computes in float32
    ],
)
def test_fsdp2_computes_in_bf16_only_for_bf16_on_cuda(
    precision: str, data_parallel: str, device: torch.device, expected: torch.dtype | None
) -> None:
    assert fsdp2_compute_dtype(precision, data_parallel, device) == expected


def test_autocast_is_for_cuda_half_precisions_only() -> None:
    assert autocast_dtype("bf16", CUDA) == torch.bfloat16
    assert autocast_dtype("fp16", CUDA) == torch.float16
    assert autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("bf16", CPU) is None


def test_liger_kernels_are_never_applied_on_the_cpu() -> None:
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    mlp_type = type(model.model.layers[0].mlp)
    assert use_liger_kernels(model, CPU) is False
    assert type(model.model.layers[0].mlp) is mlp_type  # untouched
