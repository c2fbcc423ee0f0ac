"""Package boundaries: the operator imports no torch and, from the trainer, only its config, exit codes and
the CLI plumbing `kubectl sft` shares with `sft` (cli_common: typer only)."""

import ast
import subprocess
import sys
from pathlib import Path

import sft_operator

ALLOWED_FROM_TRAINER = ("sft_trainer.config", "sft_trainer.exit_codes", "sft_trainer.cli_common")


def test_operator_imports_only_the_trainers_schema_and_exit_codes() -> None:
    for path in Path(sft_operator.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("sft_trainer"):
                    assert name.startswith(ALLOWED_FROM_TRAINER), f"{path.name} imports {name}"


def test_operator_modules_do_not_load_torch() -> None:
    code = (
        "import sys, sft_operator.handlers, sft_operator.run_local, sft_operator.api.crd, sft_operator.__main__;"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
