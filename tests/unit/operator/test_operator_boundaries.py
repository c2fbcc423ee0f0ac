"""Package boundaries: the operator's modules load no torch. (What the operator may import from the trainer is
one of the rules in tests/unit/test_import_direction.py.)"""

import subprocess
import sys


def test_operator_modules_do_not_load_torch() -> None:
    code = (
        "import sys, sft_operator.handlers, sft_operator.run_local, sft_operator.api.crd, sft_operator.__main__;"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
