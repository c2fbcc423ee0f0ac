"""The `sft` command line: `sft train`, `sft migrate`, `sft run` (from the operator package), `sft generate`, `sft eval`, `sft data ...`, `sft export`, `sft report`.

`sft train` is torchrun-aware: it reads RANK / WORLD_SIZE / LOCAL_RANK and re-checks the
configuration against the real number of processes. Its exit code follows
`sft_trainer.contract` so the operator can tell permanent from transient failures; every
command ends a user error with one line and one of those codes (docs/trainer.md, Exit codes).
"""

import logging
from pathlib import Path
from typing import Annotated

import typer

from sft_trainer.cli_common import VersionOption, examples, run_console_script
from sft_trainer.cli_data import data_app
from sft_trainer.cli_export import export
from sft_trainer.contract import ExitCode
from sft_trainer.extensions import add_commands

app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(data_app, name="data", help="Prepare, convert and inspect SFT data.")
# A command, not a group: a group's positional argument would stop option parsing.
app.command("export")(export)


@app.callback(
    epilog=examples(
        "sft train --config examples/local/demo.yaml trainer.max_steps=200",
        "sft data convert dolly --input dolly.jsonl --output dolly-io.jsonl",
        "sft generate --model runs/demo/final --prompt '12+34='",
        "sft report runs/demo",
    )
)
def main_options(version: VersionOption = False) -> None:
    """Supervised fine-tuning of LLMs (kube-sft). Exit codes: docs/trainer.md."""


def _fail(lines: list[str], code: ExitCode) -> typer.Exit:
    for line in lines:
        typer.echo(line, err=True)
    return typer.Exit(int(code))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] [DOTTED.KEY=VALUE]...",
    epilog=examples(
        "sft train --config examples/local/demo.yaml",
        "sft train -c run.yaml trainer.max_steps=200 optim.lr=1e-5",
        "sft train -c gpt_sft.yaml trainer.sft.max_steps=500 model.optim.lr=5e-6   # NeMo-Aligner's config and keys",
        "torchrun --nproc-per-node 8 -m sft_trainer.cli train -c run.yaml",
    ),
)
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run YAML, a NeMo-Aligner gpt_sft.yaml or an SFTJob manifest.")
    ] = None,
) -> None:
    """Fine-tune a model from a run YAML, then any dotted.key=value overrides (ours or NeMo-Aligner's)."""
    from sft_trainer.config import ConfigError, ConfigProblem, consistency_problems
    from sft_trainer.config.loading import load_config_and_notes
    from sft_trainer.distributed import current_env

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    env = current_env()
    try:
        run_config, notes = load_config_and_notes(config, list(ctx.args))
    except ConfigError as error:
        raise _fail(["invalid configuration:", *(f"  {p}" for p in error.problems)], ExitCode.CONFIG_ERROR) from None
    if notes and env.is_rank_zero:
        typer.echo("NeMo-Aligner keys:", err=True)
        for note in notes:
            typer.echo(f"  {note}", err=True)
    problems = consistency_problems(run_config, env.world_size) if env.is_distributed else []
    if problems:
        lines = [str(ConfigProblem("", f"{p} (with {env.world_size} processes from WORLD_SIZE)")) for p in problems]
        raise _fail(["invalid configuration:", *(f"  {line}" for line in lines)], ExitCode.CONFIG_ERROR)

    if run_config.world_size != env.world_size and env.is_rank_zero:
        logging.getLogger("sft").warning(
            "trainer.num_nodes x trainer.devices = %d, but %d process(es) run (WORLD_SIZE); "
            "the real number is used (start several with torchrun)",
            run_config.world_size,
            env.world_size,
        )
    from sft_trainer.run import run_training

    summary = run_training(run_config, env)
    if summary.exit_code != ExitCode.OK and env.is_rank_zero:
        typer.echo(f"sft train: {summary.outcome}: {summary.message}", err=True)
    raise typer.Exit(summary.exit_code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def migrate(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A NeMo-Aligner gpt_sft.yaml (or any run YAML).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: standard output).")] = None,
    sftjob: Annotated[
        str | None, typer.Option("--sftjob", metavar="NAME", help="Write an SFTJob manifest of this name.")
    ] = None,
) -> None:
    """Our SFTConfig (or an SFTJob) for a NeMo-Aligner config and its dotted overrides; each key's fate on stderr."""
    from sft_trainer.config import ConfigError
    from sft_trainer.config.migrate import migrated_yaml

    try:
        text, notes = migrated_yaml(config, list(ctx.args), sftjob)
    except ConfigError as error:
        raise _fail(["invalid configuration:", *(f"  {p}" for p in error.problems)], ExitCode.CONFIG_ERROR) from None
    for note in notes:
        typer.echo(f"# {note}", err=True)
    if out is None:
        typer.echo(text, nl=False)
        return
    from sft_trainer.data.jsonl import atomic_path

    with atomic_path(out) as temporary:
        temporary.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


add_commands(app)  # `sft run sftjob.yaml` and any other installed extension (sft_trainer.extensions)


@app.command()
def generate(
    model: Annotated[Path, typer.Option("--model", "-m", help="A final model directory (or any HF directory).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="User text; repeat for several.")],
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string; repeat for several.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    raw: Annotated[bool, typer.Option(help="Do not apply the stored prompt template.")] = False,
    system: Annotated[
        str | None, typer.Option(help="Chat system prompt (default: the one training used most; '' for none).")
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="NeMo SteerLM label of the answer, e.g. quality:4,... (default: training's most used; '' none)."
        ),
    ] = None,
    history: Annotated[
        str | None,
        typer.Option(help="Earlier turns: a JSON file or inline JSON (NeMo `conversations` or HF `messages`)."),
    ] = None,
) -> None:
    """Answer prompts with a fine-tuned model, prompted as in training (template, system prompt, label, history)."""
    from sft_trainer.data.errors import DataError
    from sft_trainer.generate import GenerationSettings, load_for_generation, prompt_token_ids, read_history
    from sft_trainer.generate import generate as run_generate
    from sft_trainer.models import ModelError

    try:
        hf_model, tokenizer, stored = load_for_generation(model)
    except (ModelError, OSError) as error:
        raise _fail([f"sft generate: {error}"], ExitCode.MODEL_ERROR) from None
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop or ()), seed=seed
    )
    try:
        turns = read_history(history) if history else []
        prompts = [
            prompt_token_ids(
                None if raw else stored.data,
                tokenizer,
                text,
                history=turns,
                system=system,
                label=label,
                defaults=stored.chat,
            )
            for text in prompt
        ]
    except (ValueError, OSError) as error:
        raise _fail([f"sft generate: {error}"], ExitCode.CONFIG_ERROR) from None
    except DataError as error:
        raise _fail([f"sft generate: {error}"], ExitCode.MODEL_ERROR) from None
    for answer in run_generate(hf_model, tokenizer, prompts, settings):
        typer.echo(answer)


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", "-m", help="A final model directory (sft.json gives the format).")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Held-out JSONL in the model's data format.")],
    generate: Annotated[bool, typer.Option("--generate/--no-generate", help="Also score generated answers.")] = True,
    max_examples: Annotated[int, typer.Option(min=1, help="Rows answered for the generation metrics.")] = 100,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    answer_regex: Annotated[
        str | None, typer.Option(help="Extract the answer before comparing (group 1), e.g. '####\\s*(.+)'.")
    ] = None,
    match_regex: Annotated[str | None, typer.Option(help="Report the share of answers this regex finds.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string; repeat for several.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON here.")] = None,
) -> None:
    """Validation loss and perplexity of a model on a file, and exact match / contains / regex of its answers (JSON).

    Dotted `data.key=value` overrides may follow (e.g. the format of a plain Hugging Face directory).
    """
    import json

    from pydantic import ValidationError

    from sft_trainer.config import ConfigError, ConfigProblem, EvaluationConfig
    from sft_trainer.config.loading import parse_value, split_override, target_annotation
    from sft_trainer.data.errors import DataError
    from sft_trainer.evaluate import evaluate, write_result
    from sft_trainer.models import ModelError
    from sft_trainer.tokenization import TokenizerError

    try:
        settings = EvaluationConfig(
            file=str(file),
            generate=generate,
            max_examples=max_examples,
            max_new_tokens=max_new_tokens,
            answer_regex=answer_regex,
            match_regex=match_regex,
            stop=list(stop or []),
        )
        overrides: dict[str, object] = {}
        for index, text in enumerate(ctx.args, start=1):
            key, raw = split_override(text, index)
            if len(key) != 2 or key[0] != "data":
                raise ConfigError([ConfigProblem(".".join(key), "only data.* keys", f"command-line override {index}")])
            overrides[key[1]] = parse_value(raw, target_annotation(key))
    except (ValidationError, ConfigError) as error:
        raise _fail([f"sft eval: {error}"], ExitCode.CONFIG_ERROR) from None
    try:
        result = evaluate(model, str(file), settings, overrides)
    except DataError as error:
        raise _fail([f"sft eval: {error}"], ExitCode.DATA_ERROR) from None
    except (ModelError, TokenizerError, OSError) as error:
        raise _fail([f"sft eval: {error}"], ExitCode.MODEL_ERROR) from None
    except (ValueError, ValidationError) as error:
        raise _fail([f"sft eval: {error}"], ExitCode.CONFIG_ERROR) from None
    if output is not None:
        write_result(output, result)
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run's output_dir (holding metrics.jsonl).")],
    output: Annotated[Path | None, typer.Option(help="PNG to write (default: <run_dir>/report.png).")] = None,
) -> None:
    """Plot a run's metrics.jsonl and print a summary."""
    from sft_trainer.run_report import report as make_report

    try:
        path, text = make_report(run_dir, output)
    except (OSError, ValueError) as error:
        raise _fail([f"sft report: {error}"], ExitCode.DATA_ERROR) from None
    typer.echo(text)
    typer.echo(f"wrote {path}")


def main() -> None:
    """The `sft` console script and `python -m sft_trainer.cli`: a missing extra ends in one line, exit 15."""
    run_console_script(app, "sft")


if __name__ == "__main__":
    main()
