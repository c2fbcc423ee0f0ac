"""What other installed packages add to `sft`, found through Python entry points: the trainer imports none of them.

The operator depends on the trainer (its config and `sft_trainer.contract`), never the reverse
(tests/unit/test_import_direction.py). Two `sft` features still need the operator's SFTJob model:
`sft run sftjob.yaml` (validate a manifest like `kubectl apply`, then train here) and the check of
`sft migrate --sftjob`. Rather than import the operator, `sft` asks the installed distributions for
them by entry-point group, declared in pyproject.toml:

    [project.entry-points."kube_sft.cli"]            name = "module:function(app: typer.Typer) -> None"
    [project.entry-points."kube_sft.sftjob_check"]   name = "module:function(manifest: dict) -> list[ConfigProblem]"

kube-sft installs both packages together (one wheel, one trainer image), so `sft run` is always
there; a trainer installed without the operator would simply lack it. The alternative, a composing
CLI in the operator package behind the `sft` console script, would make `python -m sft_trainer.cli`
(what torchrun and the pods start) and `sft` two different commands. An extension that fails to load
costs one line on stderr, never the other commands.
"""

import sys
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

CLI_GROUP = "kube_sft.cli"
"""Entry points: a function adding commands to the `sft` Typer app."""
SFTJOB_CHECK_GROUP = "kube_sft.sftjob_check"
"""Entry points: a function returning the problems (sft_trainer.config.ConfigProblem) of an SFTJob manifest."""


def loaded(group: str) -> Iterator[tuple[str, Any]]:
    """(name, loaded object) of every entry point of `group`, by name; one that fails to load is named on stderr and skipped."""
    found: list[EntryPoint] = sorted(entry_points(group=group), key=lambda point: point.name)
    for point in found:
        try:
            yield point.name, point.load()
        except Exception as error:  # a broken extension must not take the other commands with it
            print(f"sft: extension {point.name} ({point.value}) of {group} not loaded: {error}", file=sys.stderr)


def add_commands(app: Any) -> None:
    """Let every `kube_sft.cli` extension add its commands to the `sft` app."""
    for _, register in loaded(CLI_GROUP):
        register(app)


def sftjob_checks() -> list[Callable[[dict[str, Any]], list[Any]]]:
    """The installed checks of an SFTJob manifest (empty when no package provides one)."""
    return [check for _, check in loaded(SFTJOB_CHECK_GROUP)]
