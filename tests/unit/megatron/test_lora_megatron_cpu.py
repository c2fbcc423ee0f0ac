"""`MegatronLora` on real megatron-core modules (CPU, gloo), where megatron-core imports; skipped otherwise.

CI has no megatron-core; locally: `PYTHONPATH=<unpacked megatron_core wheel> pytest tests/unit/megatron/test_lora_megatron_cpu.py`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
SCRIPT = Path(__file__).with_name("megatron_cpu_lora.py")
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("world", [1, 2])
def test_megatron_lora_equals_peft(world: int) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer_image"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    port = str(29600 + world + os.getpid() % 200)
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(rank), str(world), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-3000:]
    result = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert result["logits_max_abs_diff"] < 1e-5 < result["adapter_effect"]
    assert result["grad_max_abs_diff"] < 1e-5 and result["grads"] == 2 * 2 * 7
    assert result["base_grads"] == 0
