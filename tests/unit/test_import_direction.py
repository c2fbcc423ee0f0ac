"""Imports point one way (issue 21): read from every source file's `ast`, lazy imports included.

    trainer  <-  operator (the trainer's config, the pod contract and shared CLI plumbing only)
    sft_trainer.contract is a leaf: it imports the standard library only
    backends  -/->  loop
    product code (sft_trainer, sft_operator)  -/->  tests, bench, devcluster, hack
    devcluster  -/->  tests, bench, hack;   bench, hack  -/->  tests
    no cycle between units: sft_trainer.<module or subpackage>, sft_operator.<...>, devcluster, bench, hack, tests

There is no list of tolerated violations: any violation fails. The rules' own tests run them on a
few synthetic imports, so a walk that found nothing would not pass for a clean repository.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SOURCES: dict[str, Path] = {
    "sft_trainer": ROOT / "trainer_image" / "sft_trainer",
    "sft_operator": ROOT / "operator" / "sft_operator",
    "devcluster": ROOT / "devcluster",
    "bench": ROOT / "bench",
    "hack": ROOT / "hack",
    "tests": ROOT / "tests",
}
"""Top-level name -> the directory whose files are that package (hack's scripts are named `hack.<script>`)."""


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` import nothing under `forbidden` except what is under `allowed`."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()


PRODUCT = ("sft_trainer", "sft_operator")
RULES = (
    Rule("the trainer never imports the operator", ("sft_trainer",), ("sft_operator",)),
    Rule(
        "the operator imports only the trainer's config, the pod contract and shared CLI plumbing",
        ("sft_operator",),
        ("sft_trainer",),
        allowed=("sft_trainer.config", "sft_trainer.contract", "sft_trainer.cli_common"),
    ),
    Rule("the backends never import the loop", ("sft_trainer.backends",), ("sft_trainer.loop",)),
    Rule(
        "product code never imports tests, bench, devcluster or hack", PRODUCT, ("tests", "bench", "devcluster", "hack")
    ),
    Rule("the dev cluster never imports tests, bench or hack", ("devcluster",), ("tests", "bench", "hack")),
    Rule("bench and hack never import tests", ("bench", "hack"), ("tests",)),
)


@dataclass(frozen=True)
class Violation:
    """One import that breaks a rule: the importing file (relative to the repository) and the imported name."""

    path: str
    imported: str


Imports = tuple[tuple[str, str, str], ...]
"""(importing module, its path relative to the repository, imported name) of every import."""

CONTRACT = "sft_trainer.contract"
"""The pod contract: a leaf both sides import; it imports the standard library only."""


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the dotted `name` is one of `prefixes` or inside one of them."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def module_name(top: str, path: Path) -> str:
    """The dotted module name of a source file (a package's `__init__.py` is the package)."""
    parts = [top, *path.relative_to(SOURCES[top]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(module: str, is_package: bool, tree: ast.AST) -> Iterator[str]:
    """Every dotted name the module imports: `import a.b` -> a.b; `from a import b` -> a.b (relative resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


@functools.cache
def all_imports() -> Imports:
    """(importing module, its path relative to the repository, imported name) for every source file."""
    return tuple(_walk_sources())


def _walk_sources() -> Iterator[tuple[str, str, str]]:
    for top, directory in SOURCES.items():
        for path in sorted(directory.rglob("*.py")):
            if ".venv" in path.parts:
                continue
            module = module_name(top, path)
            tree = ast.parse(path.read_text(), filename=str(path))
            for name in imported_names(module, path.name == "__init__.py", tree):
                yield module, str(path.relative_to(ROOT)), name


def violations(rule: Rule, imports: Imports | None = None) -> set[Violation]:
    """The imports (default: the repository's) that break `rule`."""
    return {
        Violation(path, name)
        for module, path, name in (all_imports() if imports is None else imports)
        if under(module, rule.importers) and under(name, rule.forbidden) and not under(name, rule.allowed)
    }


def unit(name: str) -> str:
    """The unit a module belongs to for the cycle check: `sft_trainer.loop.x` -> `sft_trainer.loop`, `tests.a` -> `tests`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in PRODUCT else parts[0]


def cycle_edges(imports: Imports | None = None) -> set[Violation]:
    """The imports (default: the repository's) that join two units into a cycle: both ends in one strongly connected set."""
    imports = all_imports() if imports is None else imports
    units = {unit(module) for module, _, _ in imports}
    edges = {
        (unit(module), unit(name)): Violation(path, name)
        for module, path, name in imports
        if unit(name) in units and unit(name) != unit(module)
    }
    reach = {u: {b for (a, b) in edges if a == u} for u in units}
    changed = True
    while changed:  # transitive closure; a few dozen units
        changed = False
        for u in units:
            more = set().union(*(reach[v] for v in reach[u])) - reach[u]
            if more:
                reach[u] |= more
                changed = True
    return {violation for (a, b), violation in edges.items() if a in reach[b]}


def non_stdlib_imports(module: str, imports: Imports | None = None) -> set[Violation]:
    """The imports of `module` (default: in the repository) of anything but the standard library."""
    return {
        Violation(path, name)
        for importer, path, name in (all_imports() if imports is None else imports)
        if importer == module and name.split(".")[0] not in sys.stdlib_module_names
    }


def test_relative_imports_resolve_and_the_walk_sees_every_package() -> None:
    seen = {module.split(".")[0] for module, _, _ in all_imports()}
    assert seen == set(SOURCES)
    tree = ast.parse("from . import a\nfrom ..b import c\nimport d.e")
    assert list(imported_names("p.q.r", False, tree)) == ["p.q.a", "p.b.c", "d.e"]
    assert list(imported_names("p.q", True, tree)) == ["p.q.a", "p.b.c", "d.e"]


SYNTHETIC: Imports = (
    ("sft_trainer.cli", "trainer_image/sft_trainer/cli.py", "sft_operator.run_local.run_manifest"),
    ("sft_operator.run_local", "operator/sft_operator/run_local.py", "sft_trainer.cli.main"),
    ("sft_trainer.contract", "trainer_image/sft_trainer/contract.py", "enum.IntEnum"),
    ("sft_trainer.contract", "trainer_image/sft_trainer/contract.py", "yaml.safe_load"),
)
"""Imports the rules must catch: an upward import that closes a cycle, and a contract that is no leaf."""


def test_a_forbidden_import_is_found() -> None:
    assert violations(RULES[0], SYNTHETIC) == {
        Violation("trainer_image/sft_trainer/cli.py", "sft_operator.run_local.run_manifest")
    }
    assert violations(RULES[1], SYNTHETIC) == {Violation("operator/sft_operator/run_local.py", "sft_trainer.cli.main")}


def test_a_cycle_is_found() -> None:
    assert cycle_edges(SYNTHETIC) == {
        Violation("trainer_image/sft_trainer/cli.py", "sft_operator.run_local.run_manifest"),
        Violation("operator/sft_operator/run_local.py", "sft_trainer.cli.main"),
    }


def test_a_contract_import_beyond_the_standard_library_is_found() -> None:
    assert non_stdlib_imports(CONTRACT, SYNTHETIC) == {
        Violation("trainer_image/sft_trainer/contract.py", "yaml.safe_load")
    }


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_imports_point_one_way(rule: Rule) -> None:
    found = violations(rule)
    assert not found, f"{rule.name}:\n" + "\n".join(f"  {v.path} imports {v.imported}" for v in sorted(found, key=str))


def test_no_import_cycle_between_units() -> None:
    found = cycle_edges()
    assert not found, "import cycles:\n" + "\n".join(f"  {v.path} imports {v.imported}" for v in sorted(found, key=str))


def test_the_contract_is_a_leaf() -> None:
    # Both sides import it, the trainer image and the plugin included: it may pull nothing else in.
    assert any(importer == CONTRACT for importer, _, _ in all_imports())
    found = non_stdlib_imports(CONTRACT)
    assert not found, "\n".join(f"  {v.path} imports {v.imported}" for v in sorted(found, key=str))
