"""Multi-GPU layouts and whole `sft train` runs of the megatron backend (marker `gpu`; on the device).

    pytest -m gpu tests/gpu            # after `source .gpu-rig/setup.sh`; layouts need 2 or 4 GPUs
    tests/gpu/run_on_device.sh all     # the same checks side by side on 4 GPUs, numbers to JSON

Each layout trains the small Llama on GSM8K under torchrun (`megatron_checks layout`) and must give
the same per-step losses as TP=1 on one GPU within 1%; the `sft train` scenarios live in
`megatron_runs`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
STEPS = 20

LAYOUTS: dict[str, tuple[int, list[str]]] = {
    "tp2": (2, ["--tp", "2"]),
    "pp2": (2, ["--pp", "2"]),
    "pp2vpp2": (2, ["--pp", "2", "--vpp", "2"]),
    "cp2": (2, ["--cp", "2"]),
    "dp2": (2, []),
    "tp2sp_fp8": (2, ["--tp", "2", "--sequence-parallel", "--fp8", "hybrid"]),
    "dp2_recompute_full": (2, ["--recompute", "full"]),
    "pp2_recompute_selective": (2, ["--pp", "2", "--recompute", "selective"]),
    "tp2pp2": (4, ["--tp", "2", "--pp", "2"]),
    "dp4": (4, []),
    "tp2cp2": (4, ["--tp", "2", "--cp", "2", "--sequence-parallel"]),
    "cp2dp2": (4, ["--cp", "2"]),
}


def layout(out: Path, nproc: int, *args: str) -> dict[str, Any]:
    """One `megatron_checks layout` run under torchrun; its JSON result."""
    if torch.cuda.device_count() < nproc:
        pytest.skip(f"needs {nproc} GPUs")
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += ["-m", "tests.gpu.megatron_checks", "layout", str(out), "--steps", str(STEPS), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def max_rel(run: dict[str, Any], base: dict[str, Any]) -> float:
    ref = base["losses"][run["first_step"] :]
    return max(abs(a - b) / b for a, b in zip(run["losses"], ref, strict=True))


@pytest.fixture(scope="module")
def tp1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return layout(tmp_path_factory.mktemp("tp1") / "tp1.json", 1, "--tp", "1")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_agrees_with_tp1(name: str, tp1: dict[str, Any], tmp_path: Path) -> None:
    nproc, args = LAYOUTS[name]
    run = layout(tmp_path / f"{name}.json", nproc, *args)
    assert max_rel(run, tp1) < 0.01
    if "--cp" in args:
        assert run["cp_indices_match_te"]


@pytest.mark.parametrize(("saved", "resumed"), [("tp2", "pp2"), ("tp2pp2", "dp4")])
def test_resume_under_another_layout(saved: str, resumed: str, tp1: dict[str, Any], tmp_path: Path) -> None:
    half = str(STEPS // 2)
    ckpt = str(tmp_path / "ckpt")
    nproc, args = LAYOUTS[saved]
    layout(tmp_path / "saved.json", nproc, *args, "--save-at", half, "--save", ckpt)
    nproc, args = LAYOUTS[resumed]
    run = layout(tmp_path / "resumed.json", nproc, *args, "--save-at", half, "--load", ckpt)
    assert run["first_step"] == STEPS // 2 and max_rel(run, tp1) < 0.01


@pytest.mark.parametrize("scenario", ["async_resume", "nan", "oom", "lora", "lost_rank"])
def test_sft_train_scenario(scenario: str, tmp_path: Path) -> None:
    if scenario == "lost_rank" and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from tests.gpu.megatron_runs import SCENARIOS

    result = SCENARIOS[scenario](tmp_path)
    print({k: v for k, v in result.items() if not k.startswith(("losses", "tail"))})
    assert result["ok"], result
