"""`sft export`: a LoRA adapter out of a run or checkpoint, as PEFT files or merged into its base.

One command; the main CLI mounts it with `app.command("export")(export)` (an `add_typer` would
make it a group, whose positional argument would stop option parsing). `export_app` runs it alone:

    sft export runs/x --out adapter/                 # the PEFT adapter (adapter_config.json + safetensors)
    sft export runs/x --out merged/ --merge          # base + adapter as one Hugging Face model
    sft export runs/x/checkpoints/step-200 --out merged/ --merge --base /models/llama

A run directory means its `final/adapter` (or, before it finished, its newest checkpoint).
"""

from pathlib import Path
from typing import Annotated

import typer

from sft_trainer.contract import ExitCode

export_app = typer.Typer(
    add_completion=False, help="Export a LoRA adapter (PEFT format) or merge it into its base model."
)


def _fail(message: str, code: ExitCode) -> typer.Exit:
    typer.echo(f"sft export: {message}", err=True)
    return typer.Exit(int(code))


@export_app.command()
def export(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_CHECKPOINT_DIR", help="A run's output_dir, its final/, a checkpoint, or an adapter dir."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write.")],
    merge: Annotated[bool, typer.Option("--merge", help="Write base + adapter as one full model.")] = False,
    base: Annotated[
        Path | None, typer.Option(help="Base model directory (default: the one recorded in adapter_config.json).")
    ] = None,
) -> None:
    """Copy a LoRA adapter out (PEFT files), or with --merge write base + adapter as one HF model."""
    from sft_trainer import lora
    from sft_trainer.models import ModelError

    try:
        adapter = lora.find_adapter(source)
    except lora.LoraError as error:
        raise _fail(str(error), ExitCode.MODEL_ERROR) from None
    if not merge:
        lora.copy_adapter(adapter, out)
        typer.echo(f"wrote the adapter of {adapter} to {out}")
        return
    base_dir = base or lora.base_model_path(adapter)
    if base_dir is None:
        raise _fail(
            f"{adapter}/{lora.ADAPTER_CONFIG} names no base model directory; pass --base "
            "(a run from model.source=random or llama2c has its merged model in final/ already)",
            ExitCode.MODEL_ERROR,
        )
    try:
        lora.merge_and_export(base_dir, adapter, out)
    except (ModelError, OSError, ValueError) as error:
        raise _fail(str(error), ExitCode.MODEL_ERROR) from None
    typer.echo(f"merged {adapter} into {base_dir}: wrote {out}")


if __name__ == "__main__":
    export_app()
