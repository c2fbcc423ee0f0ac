"""LoRA through the real torch backend: frozen base, adapter-only checkpoints, resume, final/."""

from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from safetensors.torch import load_file

from sft_trainer import lora
from sft_trainer.backends.torch_backend import MODEL_SUBDIR, OPTIMIZER_FILE, TorchBackend
from sft_trainer.config.schema import SFTConfig
from sft_trainer.data.collate import collate
from sft_trainer.data.types import IGNORE_INDEX, MicroBatch, Sample
from sft_trainer.distributed import DistributedEnv
from sft_trainer.models import load_hf, load_model
from tests.builders import random_model

VOCAB = 64
CPU = torch.device("cpu")


def config(tmp_path: Path, targets: list[str] | None = None) -> SFTConfig:
    """A tiny random Llama with LoRA on the given targets."""
    return SFTConfig.model_validate(
        {
            "output_dir": str(tmp_path / "run"),
            "model": random_model(num_layers=2, num_attention_heads=4, vocab_size=VOCAB),
            "data": {"synthetic": {"task": "arithmetic"}, "max_seq_length": 32},
            "trainer": {"precision": "fp32", "global_batch_size": 4, "micro_batch_size": 2},
            "optim": {"lr": 1e-2},
            "training": {"method": "lora", "lora": {"rank": 4, "alpha": 8, "target_modules": targets or ["all"]}},
        }
    )


def backend(run: SFTConfig) -> TorchBackend:
    model = load_model(run.model, vocab_size=VOCAB, seed=run.trainer.seed)
    return TorchBackend(run, model, DistributedEnv(), CPU)


def micro_batches(seed: int, count: int = 2) -> list[MicroBatch]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        samples = []
        for _ in range(2):
            ids = rng.integers(0, VOCAB, 16).astype(np.int32)
            labels = np.concatenate([ids[1:], [IGNORE_INDEX]]).astype(np.int32)
            labels[:4] = IGNORE_INDEX
            samples.append(Sample(ids, labels, np.arange(16, dtype=np.int32), np.array([16], dtype=np.int32)))
        batches.append(collate(samples, pad_id=0))
    return batches


def train(b: TorchBackend, steps: int, seed: int = 0, same_batch: bool = False) -> list[float]:
    losses = []
    for step in range(steps):
        batches = micro_batches(seed if same_batch else seed + step)
        losses.append(b.train_step(batches, sum(m.num_loss_tokens for m in batches), lr=1e-2).loss)
    return losses


def base_weights(b: TorchBackend) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in b.hf_model.named_parameters() if "lora_" not in n}


def test_only_adapters_train_and_the_base_stays_put(tmp_path: Path) -> None:
    b = backend(config(tmp_path))
    assert isinstance(b.hf_model, peft.PeftModel)
    before = base_weights(b)
    lora_before = {n: p.detach().clone() for n, p in b.hf_model.named_parameters() if p.requires_grad}
    optimized = {id(p) for group in b.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in b.hf_model.parameters() if p.requires_grad}
    losses = train(b, 5, same_batch=True)
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in b.hf_model.named_parameters() if "lora_" not in n)
    for name, weight in base_weights(b).items():
        assert torch.equal(weight, before[name]), name
    moved = [n for n, p in b.hf_model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert len(moved) == len(lora_before)


def test_checkpoint_holds_only_adapters_and_their_optimizer_state(tmp_path: Path) -> None:
    b = backend(config(tmp_path, ["qkv", "down"]))
    train(b, 2)
    b.save_checkpoint(tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    assert not (ckpt / MODEL_SUBDIR).exists()
    assert {p.name for p in (ckpt / lora.ADAPTER_SUBDIR).iterdir()} >= {lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS}

    trainable = {n: p for n, p in b.hf_model.named_parameters() if p.requires_grad}
    adapter = load_file(ckpt / lora.ADAPTER_SUBDIR / lora.ADAPTER_WEIGHTS)
    assert set(adapter) == {n.replace(".default", "") for n in trainable}
    assert all("lora_A" in k or "lora_B" in k for k in adapter)
    assert {k: tuple(v.shape) for k, v in adapter.items()} == {
        n.replace(".default", ""): tuple(p.shape) for n, p in trainable.items()
    }
    # 2 layers x (q, k, v, down) x (A, B)
    assert len(adapter) == 16
    adapter_numel = sum(v.numel() for v in adapter.values())
    base_numel = sum(p.numel() for p in b.hf_model.parameters() if not p.requires_grad)
    assert adapter_numel < base_numel / 5
    assert (ckpt / lora.ADAPTER_SUBDIR / lora.ADAPTER_WEIGHTS).stat().st_size < 4 * adapter_numel + 16_384

    optim = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True)["optimizer"]
    assert set(optim["state"]) == set(trainable)
    for name, state in optim["state"].items():
        assert state["exp_avg"].shape == trainable[name].shape
        assert state["exp_avg_sq"].shape == trainable[name].shape
    assert sum(len(g["params"]) for g in optim["param_groups"]) == len(trainable)


def test_resume_from_an_adapter_checkpoint_continues_identically(tmp_path: Path) -> None:
    run = config(tmp_path)
    first = backend(run)
    train(first, 2)
    first.save_checkpoint(tmp_path / "ckpt")
    expected = train(first, 2, seed=10)

    resumed = backend(run)  # same seed: the same base weights, fresh adapters
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert train(resumed, 2, seed=10) == pytest.approx(expected, rel=0, abs=1e-6)


def test_final_holds_the_merged_model_and_the_peft_adapter(tmp_path: Path) -> None:
    run = config(tmp_path)
    b = backend(run)
    train(b, 3)
    final = tmp_path / "final"
    b.export_hf(final)
    ids = torch.from_numpy(micro_batches(99)[0].input_ids)
    b.hf_model.eval()
    with torch.no_grad():
        in_memory = b.hf_model(input_ids=ids).logits

    merged = load_hf(final).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = load_model(run.model, vocab_size=VOCAB, seed=run.trainer.seed)
    unmerged = peft.PeftModel.from_pretrained(base, str(final / lora.ADAPTER_SUBDIR)).eval()
    with torch.no_grad():
        torch.testing.assert_close(unmerged(input_ids=ids).logits, in_memory, rtol=0, atol=0)
        torch.testing.assert_close(merged(input_ids=ids).logits, in_memory, rtol=0, atol=1e-5)


def test_full_fine_tuning_keeps_whole_model_checkpoints(tmp_path: Path) -> None:
    run = config(tmp_path)
    run.training.method = "full"
    b = backend(run)
    assert not isinstance(b.hf_model, peft.PeftModel)
    assert all(p.requires_grad for p in b.hf_model.parameters())
    train(b, 1)
    b.save_checkpoint(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / MODEL_SUBDIR / "config.json").is_file()
    assert not (tmp_path / "ckpt" / lora.ADAPTER_SUBDIR).exists()
    b.export_hf(tmp_path / "final")
    assert not (tmp_path / "final" / lora.ADAPTER_SUBDIR).exists()
