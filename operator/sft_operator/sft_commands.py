"""What the operator package adds to the trainer's `sft` command, through entry points (`sft_trainer.extensions`).

- `sft run sftjob.yaml`: validate an SFTJob manifest with the operator's model, then `sft train` it
  on this machine (`run_local`);
- the SFTJob check of `sft migrate --sftjob`: the manifest it writes must be one `kubectl apply` takes.

The trainer never imports the operator (tests/unit/test_import_direction.py); pyproject.toml's
`kube_sft.cli` and `kube_sft.sftjob_check` entry points name these functions instead. This module
imports Typer only: the SFTJob model is imported when a command runs, so `sft --help` stays fast.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from sft_trainer.config import ConfigProblem


def add_commands(app: typer.Typer) -> None:
    """The `kube_sft.cli` entry point: add `sft run` to the `sft` app."""
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run)


def run(
    ctx: typer.Context,
    manifest: Annotated[Path, typer.Argument(help="An SFTJob manifest (the file kubectl apply takes).")],
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Trainer processes on this machine.")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the command only.")] = False,
) -> None:
    """Run an SFTJob manifest on this machine, validated like `kubectl apply` (dotted.key=value overrides may follow)."""
    from sft_operator.run_local import run_manifest

    raise typer.Exit(run_manifest(manifest, list(ctx.args), nproc=nproc, dry_run=dry_run))


def sftjob_problems(manifest: dict[str, Any]) -> "list[ConfigProblem]":
    """The `kube_sft.sftjob_check` entry point: why the SFTJob model refuses `manifest` (empty: it is valid)."""
    from pydantic import ValidationError

    from sft_operator.api import SFTJob
    from sft_trainer.config import ConfigProblem

    metadata = {"namespace": "default", **(manifest.get("metadata") or {})}
    try:
        SFTJob.model_validate({**manifest, "metadata": metadata})
    except ValidationError as error:
        return [ConfigProblem(".".join(str(part) for part in item["loc"]), item["msg"]) for item in error.errors()]
    return []
