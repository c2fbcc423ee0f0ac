"""`sft train` with training.method=lora, then `sft export` (adapter and --merge), end to end on the CPU."""

import json
from pathlib import Path

import peft
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from sft_trainer import lora
from sft_trainer.cli import app as sft_app
from sft_trainer.cli_export import export_app
from sft_trainer.models import load_hf
from sft_trainer.tokenization import byte_tokenizer
from tests.builders import tiny_llama
from tests.unit.lora.tiny_models import logits

MERGE_ATOL = 1e-5  # fp32 merged vs unmerged logits (measured: ~1e-6)


def cli() -> typer.Typer:
    """The real `sft` command line (cli.py mounts `export` with `app.command("export")(export)`)."""
    return sft_app


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face Llama base, fine-tuned with LoRA for 40 steps by the real `sft train`."""
    root = tmp_path_factory.mktemp("lora-run")
    base = tiny_llama(vocab_size=len(byte_tokenizer()), hidden_size=64, intermediate_size=128)
    base.save_pretrained(root / "base")
    config = {
        "name": "lora-test",
        "output_dir": str(root / "run"),
        "model": {"source": "hf", "path": str(root / "base"), "tokenizer": {"type": "byte"}},
        "data": {
            "synthetic": {"task": "arithmetic", "train_examples": 640, "validation_examples": 32},
            "prompt_template": "{input}{output}",
            "max_seq_length": 32,
        },
        "trainer": {
            "max_steps": 40,
            "val_check_interval": 20,
            "save_interval": 20,
            "limit_val_batches": 1,
            "micro_batch_size": 16,
            "global_batch_size": 16,
            "precision": "fp32",
        },
        "optim": {"lr": 1e-2, "sched": {"name": "constant"}},
        "training": {"method": "lora", "lora": {"rank": 8, "alpha": 16, "target_modules": ["all"]}},
        "checkpoint": {"resume": "never"},
        "logging": {"progress": "none"},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli(), ["train", "--config", str(root / "run.yaml")])
    assert result.exit_code == 0, result.output
    return root


def test_lora_training_decreases_the_loss(run: Path) -> None:
    records = [json.loads(line) for line in (run / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.97 * first, (first, last)  # measured: 5.28 -> 4.99 (a random base learns slowly)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < val[0]


def test_checkpoints_hold_adapters_not_the_base(run: Path) -> None:
    checkpoint = run / "run/checkpoints/last"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["adapter", "meta.json", "optimizer.pt"]
    base_bytes = sum(p.stat().st_size for p in (run / "base").glob("*.safetensors"))
    adapter_bytes = (checkpoint / "adapter" / lora.ADAPTER_WEIGHTS).stat().st_size
    assert adapter_bytes < base_bytes / 4


def test_final_is_a_merged_model_and_its_adapter_loads_onto_the_base(run: Path) -> None:
    final = run / "run/final"
    assert (final / "sft.json").is_file() and (final / "tokenizer_config.json").is_file()
    ids = torch.tensor([list(b"12+34=46"), list(b"56+11=67")])
    merged = logits(load_hf(final), ids)
    unmerged = logits(peft.PeftModel.from_pretrained(load_hf(run / "base"), str(final / "adapter")), ids)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=MERGE_ATOL)
    assert not torch.allclose(merged, logits(load_hf(run / "base"), ids), atol=1e-3)  # training moved it


def test_sft_export_adapter(run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["export", str(run / "run"), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS]
    saved = json.loads((tmp_path / "a" / lora.ADAPTER_CONFIG).read_text())
    assert Path(saved["base_model_name_or_path"]) == run / "base"


def test_sft_export_merge_from_a_checkpoint(run: Path, tmp_path: Path) -> None:
    checkpoint = run / "run/checkpoints/step-40"
    result = CliRunner().invoke(cli(), ["export", str(checkpoint), "--out", str(tmp_path / "m"), "--merge"])
    assert result.exit_code == 0, result.output
    ids = torch.tensor([list(b"10+20=30")])
    exported = logits(load_hf(tmp_path / "m"), ids)
    unmerged = logits(peft.PeftModel.from_pretrained(load_hf(run / "base"), str(checkpoint / "adapter")), ids)
    torch.testing.assert_close(exported, unmerged, rtol=0, atol=MERGE_ATOL)
    torch.testing.assert_close(exported, logits(load_hf(run / "run/final"), ids), rtol=0, atol=MERGE_ATOL)
    # the run's final/ lends its tokenizer and sft.json, so `sft generate` works on the export too
    assert (tmp_path / "m" / "sft.json").read_text() == (run / "run/final/sft.json").read_text()
    assert (tmp_path / "m" / "tokenizer_config.json").is_file()


def test_sft_export_without_an_adapter_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 12
    assert "no LoRA adapter" in result.output


def test_export_app_runs_alone(run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(export_app, [str(run / "run/final"), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / lora.ADAPTER_WEIGHTS).is_file()


def test_sft_generate_works_on_the_merged_final_model(run: Path) -> None:
    result = CliRunner().invoke(
        cli(), ["generate", "--model", str(run / "run/final"), "-p", "12+34=", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip()
