"""Which compute path the torch backend picks for a precision, data-parallel mode and device."""

import pytest
import torch

from sft_trainer.backends.torch_backend import autocast_dtype, fsdp2_compute_dtype, use_liger_kernels
from tests.builders import tiny_llama

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
    model = tiny_llama()
    mlp_type = type(model.model.layers[0].mlp)
    assert use_liger_kernels(model, CPU) is False
    assert type(model.model.layers[0].mlp) is mlp_type  # untouched


def test_liger_patches_stay_on_the_patched_model_and_on_cuda_tensors() -> None:
    """Liger rebinds the Llama module's classes and RoPE function for the whole process; a CPU model
    built afterwards (the demo's accuracy model) must still run HF's own code."""
    pytest.importorskip("liger_kernel.transformers")
    from transformers.models.llama import modeling_llama

    tokens = torch.randint(0, 64, (1, 8))
    reference = tiny_llama()
    expected = reference(input_ids=tokens).logits
    norm_class, mlp_class = modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP

    patched = tiny_llama()
    assert use_liger_kernels(patched, CUDA) is True  # patching touches no device: the model may stay on the CPU
    assert "Liger" in repr(patched.model.layers[0].mlp)  # the instance got Liger's modules (patched in place)
    assert (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP) == (norm_class, mlp_class)

    later = tiny_llama()  # same seed, built after the patch
    assert "Liger" not in repr(later.model.layers[0].mlp) and type(later.model.layers[0].mlp) is mlp_class
    assert torch.allclose(later(input_ids=tokens).logits, expected)  # RoPE falls back to HF's on CPU tensors
