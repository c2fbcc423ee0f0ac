"""GPU tests of the megatron backend (marker `gpu`; run on the device after `source .gpu-rig/setup.sh`).

    make gpu-test                          # this file, one GPU
    tests/gpu/run_on_device.sh single      # the same checks in one process, numbers to JSON
    tests/gpu/run_on_device.sh layouts 2   # TP / PP / VPP / DP / SP / FP8 parity + resharded resume (torchrun)

Every check lives in `megatron_checks.py`; these tests only assert on what it measures. Megatron's
parallel state is per process, so all single-GPU tests share one world of one.
"""

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module", autouse=True)
def _megatron_first() -> None:
    """Import TE before PyTorch touches cuDNN (see `prefer_torch_cudnn`)."""
    from sft_trainer.backends.megatron.backend import prefer_torch_cudnn

    prefer_torch_cudnn()
    os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    pytest.importorskip("megatron.core")


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "llama3-rope", "qwen2", "mistral"])
def test_logits_match_hf_within_bf16_tolerance(kind: str) -> None:
    from tests.gpu.megatron_checks import check_logits

    result = check_logits(kind)
    print(result)
    assert result["ok"], result


def test_packed_thd_logits_equal_unpacked() -> None:
    from tests.gpu.megatron_checks import check_packed

    result = check_packed()
    assert result["ok"], result


def test_training_parity_with_torch_backend_and_packing() -> None:
    from tests.gpu.megatron_checks import check_training_parity

    result = check_training_parity(steps=100)
    print({k: v for k, v in result.items() if k != "losses"})
    assert result["megatron_packed_vs_unpacked"]["max_step_rel"] < 0.01
    assert "megatron_vs_torch" in result, "torch backend missing"
    assert result["megatron_vs_torch"]["max_step_rel"] < 0.01


def test_resume_exact_and_hf_export() -> None:
    from tests.gpu.megatron_checks import check_checkpoint_and_export

    result = check_checkpoint_and_export()
    assert result["resume_max_abs_diff"] < 1e-5, result
    assert result["export_logits_vs_megatron"]["norm_rel"] < 2e-2, result


def test_nan_skips_and_oom_raises() -> None:
    from tests.gpu.megatron_checks import check_failures

    result = check_failures()
    assert result["ok"], result
