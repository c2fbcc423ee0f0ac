"""What `sft` and `kubectl sft` share: `--version`, help examples, and how they end on an error.

An error the user can fix ends as one line on stderr and a documented exit code. Each command turns the errors it knows (a bad config, a missing file) into `typer.Exit(code)`. What
is left for `run_console_script` are errors any command can meet: a module of an extra that is not
installed (the base install has no torch) and, for `kubectl sft`, an unreachable cluster. Anything
else is a bug or a transient fault and keeps its traceback (exit 1, which the operator retries).
"""

import sys
from collections.abc import Callable
from importlib import metadata
from typing import Annotated

import typer

from sft_trainer.contract import ExitCode

# Top-level modules that only an extra of kube-sft installs (pyproject.toml's optional-dependencies).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "trainer": frozenset(
        {
            "numpy",
            "torch",
            "transformers",
            "tokenizers",
            "sentencepiece",
            "safetensors",
            "jinja2",
            "peft",
            "tensorboard",
            "matplotlib",
            "wandb",
        }
    ),
    "operator": frozenset({"kopf"}),
}

DISTRIBUTION = "kube-sft"

Classifier = Callable[[BaseException], "tuple[str, int] | None"]


def missing_extra(error: BaseException) -> tuple[str, str] | None:
    """(extra, module) when `error`, or an exception it was raised from, is the import of an extra's module."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            module = seen.name.partition(".")[0]
            for extra, modules in EXTRA_MODULES.items():
                if module in modules:
                    return extra, module
        seen = seen.__cause__ or seen.__context__
    return None


def missing_extra_text(extra: str, module: str) -> str:
    """The one-line explanation of a missing extra, with the command that installs it."""
    return f"this command needs the {extra} extra (no module named {module!r}): pip install 'kube-sft[{extra}]'"


def missing_extra_error(error: BaseException) -> tuple[str, int] | None:
    """(message, exit code) of a missing extra; None for any other error."""
    found = missing_extra(error)
    return None if found is None else (missing_extra_text(*found), int(ExitCode.MISSING_EXTRA))


def run_console_script(app: typer.Typer, prog: str, classify: Classifier = missing_extra_error) -> None:
    """Run a Typer app as a console script; an error `classify` knows ends as `<prog>: <message>` and its code."""
    try:
        app()
    except Exception as error:
        known = classify(error)
        if known is None:
            raise
        message, code = known
        print(f"{prog}: {message}", file=sys.stderr)
        sys.exit(code)


def package_version() -> str:
    """The installed kube-sft version (`unknown` when run from a source tree that is not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def show_version(value: bool) -> None:
    """The `--version` option's callback: print `kube-sft <version>` and exit 0."""
    if value:
        typer.echo(f"{DISTRIBUTION} {package_version()}")
        raise typer.Exit()


VersionOption = Annotated[
    bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the kube-sft version and exit.")
]


def examples(*lines: str) -> str:
    """A help epilog listing example command lines, one per line in Typer's and Click's help."""
    return "\n\n".join(("Examples:", *lines))
