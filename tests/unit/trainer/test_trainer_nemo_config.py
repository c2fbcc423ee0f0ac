"""NeMo-Aligner configs and overrides mapped onto our schema; override values; error origins; `sft migrate`."""

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sft_trainer.cli import app
from sft_trainer.config import ConfigError, load_config
from sft_trainer.config.loading import load_config_and_notes, parse_value, schema_annotation
from sft_trainer.config.nemo import nemo_rule, resolve_interpolations

ROOT = Path(__file__).resolve().parents[3]
MIGRATION = ROOT / "docs" / "migration.md"
BASE = ["model.restore_from_path=/models/hf-llama", "model.data.train_ds.file_path=train.jsonl"]
#: a valid value for every key of the table that does not take `1`
SAMPLE_VALUES = {
    "name": "dolly",
    "trainer.precision": "bf16",
    "trainer.sft.save_interval": "100",
    "exp_manager.checkpoint_callback_params.monitor": "validation_loss",
    "exp_manager.checkpoint_callback_params.mode": "max",
    "model.restore_from_path": "/m/x.bin",
    "model.data.train_ds.file_path": "train.jsonl",
    "model.virtual_pipeline_model_parallel_size": "2",
    "model.sequence_parallel": "true",
    "model.activations_checkpoint_granularity": "selective",
    "model.peft.peft_scheme": "lora",
    "model.peft.lora_tuning.adapter_dropout": "0.1",
    "model.peft.lora_tuning.target_modules": "[attention_qkv, attention_dense]",
    "model.data.train_ds.max_seq_length": "4096",
    "model.data.train_ds.label_key": "response",
    "model.data.train_ds.truncation_method": "left",
    "model.data.train_ds.prompt_template": "{input} {output}",
    "model.optim.name": "distributed_fused_adam",
    "model.optim.betas": "[0.9, 0.95]",
    "model.optim.sched.name": "CosineAnnealing",
    "model.optim.sched.min_lr": "1e-7",
    "model.data.chat": "true",
    "model.data.chat_prompt_tokens.turn_start": "<turn>",
    "exp_manager.explicit_log_dir": "/results",
    "exp_manager.create_wandb_logger": "True",
    "exp_manager.wandb_logger_kwargs.tags": "[dolly, sft]",
}
#: keys whose value is only valid together with another
NEEDS = {
    "model.virtual_pipeline_model_parallel_size": [
        "model.pipeline_model_parallel_size=2",
        "trainer.devices=2",
        "model.data.train_ds.global_batch_size=8",
    ],
    "model.sequence_parallel": ["model.tensor_model_parallel_size=2", "trainer.devices=2"],
    "model.data.train_ds.label_key": ["model.data.train_ds.prompt_template={input} {response}"],
    **{
        f"exp_manager.wandb_logger_kwargs.{k}": ["exp_manager.create_wandb_logger=True"]
        for k in ("project", "name", "tags")
    },
}


def migration_rows() -> list[tuple[str, str | None]]:
    """(NeMo key, our key or None) of every row of docs/migration.md's table."""
    rows = []
    for line in MIGRATION.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        ours = re.match(r"`([^`]+)`", cells[1])
        rows.append((cells[0].strip("`"), ours.group(1) if ours else None))
    return rows


def test_the_migration_table_lists_the_keys_the_issue_names() -> None:
    keys = {key for key, _ in migration_rows()}
    assert len(keys) > 120
    for key in (
        "model.data.num_workers",
        "exp_manager.resume_ignore_no_checkpoint",
        "exp_manager.create_checkpoint_callback",
        "exp_manager.checkpoint_callback_params.monitor",
        "model.megatron_amp_O2",
    ):
        assert key in keys


@pytest.mark.parametrize(("nemo_key", "ours"), migration_rows())
def test_every_row_of_docs_migration_is_what_the_code_does(nemo_key: str, ours: str | None) -> None:
    key = nemo_key.replace("*", "anything")
    rule = nemo_rule(key)
    if rule is None:  # the same key in both schemas
        assert ours == nemo_key
        assert schema_annotation(tuple(key.split(".")))[0]
        return
    assert rule.target == ours
    if ours is not None:
        assert schema_annotation(tuple(ours.split(".")))[0], f"{ours} is not a key of our schema"
    # and loading it works and says what became of it
    value = SAMPLE_VALUES.get(key, "1")
    config, notes = load_config_and_notes(None, [*BASE, *NEEDS.get(key, []), f"{key}={value}"])
    if key == "exp_manager.create_wandb_logger":
        assert config.logging.wandb is not None and f"{key} -> logging.wandb (" in notes[-1]
    elif rule.target is None:
        assert any(note.startswith(f"{key}: ignored (") for note in notes), notes
    else:
        assert any(note.startswith(f"{key} -> {ours} = ") for note in notes), notes
        assert config.model_dump(mode="json")  # a valid configuration


def test_override_values_are_values_not_yaml_documents() -> None:
    config = load_config(None, [*BASE, "model.data.train_ds.prompt_template={input} {output}"])
    assert config.data.prompt_template == "{input} {output}"
    config = load_config(None, [*BASE, "data.prompt_template=Q: {question}\\nA: {answer}", "data.label_key=answer"])
    assert config.data.prompt_template == "Q: {question}\\nA: {answer}"
    config = load_config(None, [*BASE, 'data.prompt_template="Q: {question}\\nA: {answer}"', "data.label_key=answer"])
    assert config.data.prompt_template == "Q: {question}\nA: {answer}"
    assert parse_value("5e-6", float) == 5e-6
    assert parse_value("[0.9, 0.95]", tuple[float, float]) == [0.9, 0.95]
    assert parse_value("null", str | None) is None
    assert parse_value("123", str) == "123"


def test_a_bad_override_names_its_position_and_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*BASE, "trainer.sft.max_steps=many"])
    assert str(caught.value.problems[0]).startswith(
        "command-line override 3: trainer.sft.max_steps: trainer.max_steps: Input should be a valid integer"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*BASE, "trainer.sft.max_stepz=5"])
    assert str(caught.value.problems[0]) == (
        "command-line override 3: trainer.sft.max_stepz: unknown key; did you mean trainer.sft.max_steps?"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["no-equals-sign"])
    assert "command-line override 1" in str(caught.value)


def test_unknown_file_keys_name_the_line_and_the_closest_key(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  path: /m\ndata:\n  train_file: t.jsonl\ntrainer:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value.problems[0]) == f"{path}:6: trainer.max_stepz: unknown key; did you mean trainer.max_steps?"


def test_a_nemo_file_shaped_like_gpt_sft_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "gpt_sft.yaml"
    nemo = {
        "name": "megatron_gpt_sft",
        "trainer": {
            "num_nodes": 1,
            "devices": 1,
            "accelerator": "gpu",
            "precision": "bf16",
            "sft": {
                "max_epochs": 1,
                "max_steps": -1,
                "val_check_interval": 50,
                "save_interval": "${.val_check_interval}",
            },
            "max_epochs": "${.sft.max_epochs}",
            "max_steps": "${.sft.max_steps}",
            "logger": False,
        },
        "exp_manager": {
            "explicit_log_dir": None,
            "name": "${name}",
            "checkpoint_callback_params": {
                "monitor": "val_loss",
                "save_top_k": 5,
                "mode": "min",
                "filename": "x-{step}",
            },
        },
        "model": {
            "restore_from_path": "???",
            "steerable_attributes": {"quality": 4, "toxicity": 0},
            "data": {
                "chat": False,
                "train_ds": {"file_path": "???", "global_batch_size": 16, "micro_batch_size": 2, "max_seq_length": 512},
                "validation_ds": {"file_path": "???", "global_batch_size": "${model.data.train_ds.global_batch_size}"},
            },
            "optim": {
                "name": "distributed_fused_adam",
                "lr": 3e-5,
                "sched": {"name": "CosineAnnealing", "min_lr": 9e-7},
            },
        },
    }
    path.write_text(yaml.safe_dump(nemo))
    config, notes = load_config_and_notes(path, [*BASE, "trainer.sft.val_check_interval=20"])
    assert config.trainer.save_interval == 20  # the interpolation sees the override
    assert config.trainer.max_epochs == 1 and config.trainer.max_steps == -1
    assert config.trainer.global_batch_size == 16 and config.trainer.micro_batch_size == 2
    assert config.optim.sched.name == "cosine" and config.parallelism.distributed_optimizer
    assert config.checkpoint.save_top_k == 5 and config.checkpoint.mode == "min"
    assert config.model.source == "hf" and config.model.path == "/models/hf-llama"
    assert "model.data.validation_ds.file_path: ignored (not set: ???; data.validation_file keeps its default)" in notes
    assert "trainer.logger: ignored (internal to Lightning in NeMo; this loop has no Lightning trainer)" in notes


def test_restore_from_path_picks_the_model_source() -> None:
    assert load_config(None, ["model.restore_from_path=/m/stories.bin", BASE[1]]).model.source == "llama2c"
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["model.restore_from_path=/m/model.nemo", BASE[1]])
    assert "command-line override 1: model.restore_from_path: /m/model.nemo: .nemo archives" in str(caught.value)


def test_wandb_keys_follow_create_wandb_logger() -> None:
    kwargs = ["exp_manager.wandb_logger_kwargs.project=p", "exp_manager.wandb_logger_kwargs.name=n"]
    config = load_config(None, [*BASE, "exp_manager.create_wandb_logger=True", *kwargs])
    assert config.logging.wandb is not None
    assert (config.logging.wandb.project, config.logging.wandb.name, config.logging.wandb.mode) == ("p", "n", "offline")
    assert load_config(None, [*BASE, "exp_manager.create_wandb_logger=False", *kwargs]).logging.wandb is None


def test_interpolations_resolve_absolute_relative_and_chained() -> None:
    tree = {"a": {"b": 1, "c": "${.b}", "d": "${a.c}"}, "e": "${a.d}", "f": "${missing}", "g": "x-${a.b}"}
    assert resolve_interpolations(tree) == {"a": {"b": 1, "c": 1, "d": 1}, "e": 1, "f": "${missing}", "g": "x-${a.b}"}


def test_sft_migrate_writes_a_config_that_loads_the_same(tmp_path: Path) -> None:
    overrides = [*BASE, "model.optim.lr=5e-6", "trainer.sft.max_steps=7", "model.data.num_workers=0"]
    out = tmp_path / "run.yaml"
    result = CliRunner().invoke(app, ["migrate", *overrides, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "# model.data.num_workers: ignored" in result.output
    assert load_config(out) == load_config(None, overrides)
    job = tmp_path / "job.yaml"
    result = CliRunner().invoke(
        app, ["migrate", *overrides, "trainer.devices=2", "--sftjob", "dolly", "--out", str(job)]
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(job.read_text())
    assert manifest["kind"] == "SFTJob" and manifest["spec"]["resources"] == {"numNodes": 1, "gpusPerNode": 2}
    assert load_config(job).optim.lr == 5e-6


def test_sft_migrate_refuses_an_unknown_key_with_exit_10() -> None:
    result = CliRunner().invoke(app, ["migrate", *BASE, "exp_manager.resume_if_exist=True"])
    assert result.exit_code == 10
    assert "did you mean exp_manager.resume_if_exists?" in result.output


def test_an_override_of_a_file_key_is_reported_as_the_override(tmp_path: Path) -> None:
    path = tmp_path / "dolly.yaml"
    path.write_text("model:\n  path: /m\ndata:\n  train_file: t.jsonl\ntrainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["optim.lr=0.001", "trainer.max_steps=lots"])
    assert [str(p) for p in caught.value.problems] == [
        "command-line override 2: trainer.max_steps: Input should be a valid integer, unable to parse string as an integer"
    ]
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["trainer.sft=1"])
    assert str(caught.value.problems[0]).startswith("command-line override 1: trainer.sft: unknown key")


def test_a_megatron_model_source_is_a_config_error_on_its_line(tmp_path: Path) -> None:
    """`model.source: megatron` was accepted and then raised NotImplementedError (exit UNEXPECTED, retried)."""
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  source: megatron\n  path: /ckpt\ndata:\n  train_file: t.jsonl\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problem = str(caught.value.problems[0])
    assert problem.startswith(f"{path}:2: model.source: ") and "'hf', 'llama2c' or 'random'" in problem, problem
