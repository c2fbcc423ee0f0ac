"""The trainer's layout as docs/architecture.md describes it, and the direction of its imports."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "trainer_image" / "sft_trainer"


def _trainer_row() -> str:
    rows = [line for line in (ROOT / "docs" / "architecture.md").read_text().splitlines() if "| **Trainer** |" in line]
    assert len(rows) == 1
    return rows[0]


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


def test_every_trainer_file_the_architecture_names_exists() -> None:
    described = _trainer_row().split("|")[3]  # the third cell: what the trainer holds
    named = re.findall(r"`([a-z_/]+(?:\.py|/))`", described)
    assert len(named) > 15
    missing = [name for name in named if not list(PACKAGE.rglob(name.rstrip("/")))]
    assert not missing, f"docs/architecture.md names trainer files that do not exist: {missing}"


def test_nothing_below_the_loop_imports_it_or_the_run_entry() -> None:
    upward = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in _imports(path) if name.split(".")[:2] in (["sft_trainer", "loop"], ["sft_trainer", "run"])
        )
        for path in [*PACKAGE.glob("backends/**/*.py"), PACKAGE / "distributed.py", *PACKAGE.glob("report/*.py")]
    }
    assert not {path: names for path, names in upward.items() if names}


def test_no_trainer_file_over_500_lines_without_saying_why() -> None:
    long = [p for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > 500]
    unexplained = [str(p) for p in long if "stays whole" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not unexplained
