"""`sft data ...`: convert public datasets, prepare the tokenized cache, inspect what is trained.

Mounted into the main CLI with `app.add_typer(data_app, name="data")`.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sft_trainer.contract import ExitCode

data_app = typer.Typer(no_args_is_help=True, help="Convert datasets and prepare the tokenized cache.")
convert_app = typer.Typer(no_args_is_help=True, help="Convert public datasets to the training formats.")
data_app.add_typer(convert_app, name="convert")


def _fail(error: Exception, code: ExitCode = ExitCode.DATA_ERROR) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(int(code))


def _split_paths(output: Path) -> dict[str, Path]:
    suffixes = "".join(output.suffixes)
    stem = output.name[: -len(suffixes)] if suffixes else output.name
    return {
        "train": output.with_name(f"{stem}_train{suffixes}"),
        "validation": output.with_name(f"{stem}_val{suffixes}"),
    }


@convert_app.command("dolly")
def convert_dolly_command(
    input: Annotated[Path, typer.Option("--input", help="databricks-dolly-15k style JSONL (.gz ok).")],
    output: Annotated[Path, typer.Option("--output", help="Prompt-response JSONL to write (input/output).")],
    seed: Annotated[int, typer.Option(help="Seed of the instruction/context order.")] = 0,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip and count malformed rows.")] = False,
) -> None:
    """Dolly rows -> `{"input", "output", "category"}`."""
    from sft_trainer.data.converters import convert_dolly
    from sft_trainer.data.errors import BadRows, DataError
    from sft_trainer.data.jsonl import write_jsonl

    bad = BadRows() if skip_bad_rows else None
    try:
        count = write_jsonl(output, convert_dolly(str(input), seed, bad))
    except DataError as error:
        raise _fail(error) from None
    typer.echo(json.dumps({"rows": count, "bad_rows": bad.count if bad else 0, "output": str(output)}))


@convert_app.command("oasst")
def convert_oasst_command(
    input: Annotated[Path, typer.Option("--input", help="OASST tree export, nested messages or flat table (.gz ok).")],
    output: Annotated[Path, typer.Option("--output", help="NeMo chat JSONL (with --split: <name>_train/_val).")],
    split: Annotated[float | None, typer.Option(help="Train share of the trees, e.g. 0.95.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the tree shuffle before splitting.")] = 10,
    drop_deleted: Annotated[
        bool, typer.Option("--drop-deleted", help="Drop deleted messages and their replies.")
    ] = False,
    mask_role: Annotated[str, typer.Option(help="The role without loss.")] = "User",
    conversation_type: Annotated[str, typer.Option("--type", help="VALUE_TO_TEXT or TEXT_TO_VALUE.")] = "VALUE_TO_TEXT",
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip and count malformed rows.")] = False,
) -> None:
    """OpenAssistant -> NeMo chat conversations (every root-to-leaf thread with two or more turns)."""
    from dataclasses import asdict

    from sft_trainer.data.converters import convert_oasst
    from sft_trainer.data.errors import BadRows, DataError
    from sft_trainer.data.jsonl import write_jsonl

    bad = BadRows() if skip_bad_rows else None
    try:
        groups, counts = convert_oasst(
            str(input),
            drop_deleted=drop_deleted,
            split=split,
            seed=seed,
            mask_role=mask_role,
            conversation_type=conversation_type,
            bad_rows=bad,
        )
        paths = _split_paths(output) if split is not None else {"all": output}
        for name, records in groups.items():
            write_jsonl(paths[name], records)
    except DataError as error:
        raise _fail(error) from None
    summary = {**asdict(counts), "bad_rows": bad.count if bad else 0, "outputs": {k: str(v) for k, v in paths.items()}}
    typer.echo(json.dumps(summary, indent=2))


def _load_run(config: Path, overrides: list[str]) -> tuple[Any, Any]:
    """(run config, tokenizer) for the data commands; exits 10 / 12 on a bad config / tokenizer."""
    from sft_trainer.config import ConfigError, load_config
    from sft_trainer.tokenization import TokenizerError, load_tokenizer

    try:
        run = load_config(config, overrides)
    except ConfigError as error:
        raise _fail(error, ExitCode.CONFIG_ERROR) from None
    try:
        tokenizer = load_tokenizer(run.model.tokenizer, run.model.path)
    except TokenizerError as error:
        raise _fail(error, ExitCode.MODEL_ERROR) from None
    return run, tokenizer


@data_app.command("inspect")
def inspect_command(
    config: Annotated[Path, typer.Option("--config", help="Run configuration YAML (or SFTJob manifest).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value overrides")] = None,
    index: Annotated[list[int] | None, typer.Option("--index", "-i", help="Example to show; repeat.")] = None,
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
    color: Annotated[
        bool | None, typer.Option("--color/--no-color", help="Rich colour (default: on a terminal).")
    ] = None,
) -> None:
    """Show examples as training sees them: trained tokens marked, plus dropped / truncated counts."""
    import sys

    from sft_trainer.data import build_datasets
    from sft_trainer.data.errors import DataError
    from sft_trainer.data.inspect import bracketed, counts_line, rich_text, runs

    run, tokenizer = _load_run(config, list(overrides or []))
    try:
        splits = build_datasets(run, tokenizer)
    except DataError as error:
        raise _fail(error) from None
    dataset = splits.train if split == "train" else splits.validation
    if dataset is None or split not in ("train", "validation"):
        raise _fail(ValueError(f"--split {split}: no such split in this run"), ExitCode.CONFIG_ERROR)
    store = dataset.store
    use_color = sys.stdout.isatty() if color is None else color
    console = None
    if use_color:
        from rich.console import Console

        console = Console(highlight=False, force_terminal=True)
    typer.echo(counts_line(splits.stats))
    for number in index or [0]:
        if not 0 <= number < store.num_examples:
            raise _fail(ValueError(f"--index {number}: the {split} split has {store.num_examples} examples"))
        example = runs(tokenizer, *store.example(number))
        trained = sum(r.tokens for r in example if r.trained)
        total = sum(r.tokens for r in example)
        typer.echo(f"--- {split} example {number}: {total} tokens, {trained} trained")
        if console is not None:
            console.print(rich_text(example))
        else:
            typer.echo(bracketed(example))


@data_app.command("prepare")
def prepare_command(
    config: Annotated[Path, typer.Option("--config", help="Run configuration YAML (or SFTJob manifest).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value overrides")] = None,
    summary_json: Annotated[
        Path | None, typer.Option("--summary-json", help="Write the stats here (atomically).")
    ] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip and count malformed rows.")] = False,
) -> None:
    """Tokenize, mask, truncate and pack the run's data into the cache; print the stats."""
    from sft_trainer.data import build_datasets
    from sft_trainer.data.errors import DataError
    from sft_trainer.data.jsonl import atomic_path

    run, tokenizer = _load_run(config, list(overrides or []))
    if skip_bad_rows:
        run.data.skip_bad_rows = True
    try:
        splits = build_datasets(run, tokenizer)
    except DataError as error:
        raise _fail(error) from None
    text = json.dumps(splits.stats, indent=2, sort_keys=True)
    if summary_json is not None:
        with atomic_path(summary_json) as temporary:
            temporary.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
