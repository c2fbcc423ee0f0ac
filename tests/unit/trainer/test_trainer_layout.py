"""The trainer's layout: the direction of its imports (its file sizes and the files
docs/architecture.md names: tests/unit/test_architecture.py)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "trainer_image" / "sft_trainer"


def _imports(path: Path) -> set[str]:
    """Every `sft_trainer...` module a file imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sft_trainer"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("sft_trainer"))
    return names


def test_nothing_below_the_loop_imports_it_or_the_run_entry() -> None:
    upward = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in _imports(path) if name.split(".")[:2] in (["sft_trainer", "loop"], ["sft_trainer", "run"])
        )
        for path in [*PACKAGE.glob("backends/**/*.py"), PACKAGE / "distributed.py", *PACKAGE.glob("report/*.py")]
    }
    assert not {path: names for path, names in upward.items() if names}
