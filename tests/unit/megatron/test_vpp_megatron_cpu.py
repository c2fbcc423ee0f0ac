"""Interleaved PP (VPP) trains like plain PP: the backend's step on real megatron-core modules (CPU, gloo).

Skipped where megatron-core does not import (CI); locally:
`PYTHONPATH=<unpacked megatron_core wheel> pytest tests/unit/megatron/test_vpp_megatron_cpu.py`
(about 2 minutes on 2 cores). Why VPP needs unbatched p2p: docs/notes/megatron-vpp.md.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("megatron.core")
SCRIPT = Path(__file__).with_name("megatron_cpu_vpp.py")
ROOT = Path(__file__).resolve().parents[3]


def run_pp2(*flags: str) -> dict[str, Any]:
    """Two gloo processes (PP=2) running `megatron_cpu_vpp.py` with `flags`; rank 0's JSON line."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer_image"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    port = str(29800 + (os.getpid() + hash(flags)) % 150)
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--rank", str(rank), "--world", "2", "--port", port, "--pp", "2", *flags],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    result: dict[str, Any] = json.loads(outputs[0][0].strip().splitlines()[-1])
    return result


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    """Every pair within `tol`, relative."""
    return all(abs(x - y) <= tol * max(abs(y), 1.0) for x, y in zip(a, b, strict=True))


def test_interleaved_pipeline_trains_like_plain_pipeline() -> None:
    """The backend's defaults: distributed optimizer, overlapped grad reduce and param gather."""
    defaults = ("--distributed-optimizer", "--overlap")
    plain = run_pp2(*defaults)  # 3 micro-batches: the interleaved run pads them to 4
    interleaved = run_pp2("--vpp", "2", *defaults)
    assert abs(plain["losses"][0] - plain["hf_loss"]) < 1e-5  # the layout computes HF's model
    assert plain["losses"][-1] < plain["losses"][0] - 1.0  # and learns
    assert abs(interleaved["forward_only_loss"] - plain["hf_loss"]) < 1e-5
    assert close(interleaved["losses"], plain["losses"]), (interleaved, plain)
    assert close(interleaved["grad_norms"], plain["grad_norms"]), (interleaved, plain)


def test_batched_p2p_breaks_interleaved_pipeline() -> None:
    """Megatron's default batched p2p under PP=2 x VPP=2: what the backend measured as 'does not train'."""
    plain = run_pp2("--micro-batches", "4")
    broken = run_pp2("--vpp", "2", "--micro-batches", "4", "--batched-p2p")
    assert abs(broken["forward_only_loss"] - plain["hf_loss"]) < 1e-5  # forward-only never exchanges both ways
    assert abs(broken["losses"][0] - plain["losses"][0]) > 1e-3  # the second micro-batch group's forward is wrong
    assert broken["grad_norms"][0] > 3 * plain["grad_norms"][0]  # activations used as gradients
