"""Imports point one way (issue 21): read from every source file's `ast`, lazy imports included.

    trainer  <-  operator (the trainer's config, exit codes and shared CLI plumbing only)
    backends  -/->  loop
    product code (sft_trainer, sft_operator)  -/->  tests, bench, devcluster, hack
    devcluster  -/->  tests, bench, hack;   bench, hack  -/->  tests
    no cycle between units: sft_trainer.<module or subpackage>, sft_operator.<...>, devcluster, bench, hack, tests

A violation that exists today is listed in KNOWN_VIOLATIONS with the file that holds it: the rule's
test ignores exactly that import, and a strict xfail test per entry fails once the import is gone,
so the entry is removed with it. Any other violation fails at once.
"""

from __future__ import annotations

import ast
import functools
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
        "the operator imports only the trainer's config, exit codes and shared CLI plumbing",
        ("sft_operator",),
        ("sft_trainer",),
        allowed=("sft_trainer.config", "sft_trainer.exit_codes", "sft_trainer.cli_common"),
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


KNOWN_VIOLATIONS: dict[Violation, str] = {
    Violation("trainer_image/sft_trainer/cli.py", "sft_operator.run_local.run_manifest"): (
        "`sft run <manifest>` calls the operator's run_local (issue 21: move it where the rule allows)"
    ),
    Violation("trainer_image/sft_trainer/config/migrate.py", "sft_operator.api.SFTJob"): (
        "`sft migrate --sftjob` validates a manifest with the operator's SFTJob model when it is installed"
    ),
}


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
def all_imports() -> tuple[tuple[str, str, str], ...]:
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


def violations(rule: Rule) -> set[Violation]:
    """The imports that break `rule`."""
    return {
        Violation(path, name)
        for module, path, name in all_imports()
        if under(module, rule.importers) and under(name, rule.forbidden) and not under(name, rule.allowed)
    }


def unit(name: str) -> str:
    """The unit a module belongs to for the cycle check: `sft_trainer.loop.x` -> `sft_trainer.loop`, `tests.a` -> `tests`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in PRODUCT else parts[0]


def cycle_edges(ignored: set[Violation]) -> set[Violation]:
    """The imports (except `ignored`) that join two units into a cycle: both ends in one strongly connected set."""
    units = {unit(module) for module, _, _ in all_imports()}
    edges = {
        (unit(module), unit(name)): Violation(path, name)
        for module, path, name in all_imports()
        if unit(name) in units and unit(name) != unit(module) and Violation(path, name) not in ignored
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


def test_relative_imports_resolve_and_the_walk_sees_every_package() -> None:
    seen = {module.split(".")[0] for module, _, _ in all_imports()}
    assert seen == set(SOURCES)
    tree = ast.parse("from . import a\nfrom ..b import c\nimport d.e")
    assert list(imported_names("p.q.r", False, tree)) == ["p.q.a", "p.b.c", "d.e"]
    assert list(imported_names("p.q", True, tree)) == ["p.q.a", "p.b.c", "d.e"]


def test_a_forbidden_import_is_found() -> None:
    # The walk really reports what is there: the trainer's known upward import is seen by its rule.
    assert Violation("trainer_image/sft_trainer/cli.py", "sft_operator.run_local.run_manifest") in violations(RULES[0])


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_imports_point_one_way(rule: Rule) -> None:
    found = violations(rule) - set(KNOWN_VIOLATIONS)
    assert not found, f"{rule.name}:\n" + "\n".join(f"  {v.path} imports {v.imported}" for v in sorted(found, key=str))


def test_no_import_cycle_between_units() -> None:
    found = cycle_edges(set(KNOWN_VIOLATIONS))
    assert not found, "import cycles:\n" + "\n".join(f"  {v.path} imports {v.imported}" for v in sorted(found, key=str))


def test_a_cycle_is_found() -> None:
    # Without the known list the trainer config <-> operator API cycle is there today; the check sees it.
    assert Violation("trainer_image/sft_trainer/config/migrate.py", "sft_operator.api.SFTJob") in cycle_edges(set())


@pytest.mark.parametrize(
    "known",
    [
        pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=f"{v.path}: {why}"))
        for v, why in KNOWN_VIOLATIONS.items()
    ],
    ids=[v.path for v in KNOWN_VIOLATIONS],
)
def test_known_violation_is_gone(known: Violation) -> None:
    # XPASS (strict: a failure) once the import is removed: then delete its KNOWN_VIOLATIONS entry.
    assert all(known not in violations(rule) for rule in RULES)
    assert known not in cycle_edges(set())
