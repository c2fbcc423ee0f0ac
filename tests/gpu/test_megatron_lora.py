"""GPU tests of the megatron backend's LoRA (marker `gpu`; on the device after `source .gpu-rig/setup.sh`).

    pytest -m gpu tests/gpu/test_megatron_lora.py          # the single-GPU checks (~2 min on an H100)
    tests/gpu/run_lora_on_device.sh                        # the same + TP=2 / PP=2 layouts, 4 GPUs, JSON

Checks live in `lora_checks.py`; with `GPU_RESULTS=<dir>` (the runner's $OUT) the layout test asserts on
`lora_layouts.json` from that run instead of being skipped (layouts need torchrun).
"""

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", autouse=True)
def _megatron_first() -> None:
    """Import TE before PyTorch touches cuDNN (see `prefer_torch_cudnn`)."""
    from sft_trainer.backends.megatron.backend import prefer_torch_cudnn

    prefer_torch_cudnn()
    os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    pytest.importorskip("megatron.core")


def test_lora_parity_with_peft_export_and_adapter_only_checkpoint() -> None:
    from tests.gpu.lora_checks import check_lora

    result = check_lora(steps=100)
    print({k: v for k, v in result.items() if k != "losses"})
    assert result["megatron_vs_torch"]["max_step_rel"] < 0.01  # loss curves within 1% at every step
    assert result["base_max_abs_change"] == 0.0  # the base never moves
    assert result["params"]["trainable"] == result["params"]["adapters"] == result["params"]["optimizer"]
    assert not result["checkpoint"]["non_adapter_keys"]  # no base weight in the checkpoint
    assert result["resume_max_abs_diff"] < 1e-4
    assert result["export"]["megatron_vs_peft_fp32"]["norm_rel"] < 2e-2  # bf16 vs the fp32 peft reference
    assert result["export"]["merged_bf16_vs_peft_fp32"]["norm_rel"] < 2e-2


def test_lora_layouts_agree_with_tp1() -> None:
    results = Path(os.environ.get("GPU_RESULTS", "gpu-out")) / "lora_layouts.json"
    if not results.exists():
        pytest.skip("run tests/gpu/run_lora_on_device.sh first (layouts need torchrun)")
    table = json.loads(results.read_text())
    for name in ("tp2", "pp2", "pp2_from_tp2"):
        assert table[name]["max_step_rel_vs_tp1"] < 5e-3, (name, table[name])
