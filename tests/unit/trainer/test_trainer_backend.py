"""The torch backend on real tiny models: micro-batch invariance, packing, clipping, save/load."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sft_trainer.backends.torch_backend import TorchBackend, param_groups
from sft_trainer.config import SFTConfig
from sft_trainer.data import collate
from sft_trainer.data.types import IGNORE_INDEX, Sample
from sft_trainer.distributed import DistributedEnv
from sft_trainer.models import random_llama
from tests.builders import random_model

VOCAB = 64


def config(**trainer: object) -> SFTConfig:
    return SFTConfig.model_validate(
        {
            "model": random_model(num_layers=2, num_attention_heads=4),
            "data": {"synthetic": {}, "max_seq_length": 32},
            "trainer": {"precision": "fp32", "global_batch_size": 8, "micro_batch_size": 1, **trainer},
            "optim": {"lr": 1e-2},
        }
    )


def backend(cfg: SFTConfig) -> TorchBackend:
    assert cfg.model.architecture is not None
    model = random_llama(cfg.model.architecture, VOCAB, seed=0)
    return TorchBackend(cfg, model, DistributedEnv(), torch.device("cpu"))


def sample(rng: np.random.Generator, length: int, prompt: int) -> Sample:
    ids = rng.integers(0, VOCAB, size=length).astype(np.int32)
    labels = np.append(ids[1:], -1).astype(np.int32)
    labels[: prompt - 1] = IGNORE_INDEX
    labels[-1] = IGNORE_INDEX
    return Sample(ids, labels, np.arange(length, dtype=np.int32), np.array([length], dtype=np.int32))


def rows(n: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [sample(rng, int(rng.integers(6, 20)), int(rng.integers(2, 5))) for _ in range(n)]


def two_steps(micro_batch_size: int, data: list[Sample]) -> list[tuple[float, float]]:
    """(loss, grad norm) of two optimizer steps on the same global batch."""
    engine = backend(config(micro_batch_size=micro_batch_size))
    batches = [collate(data[i : i + micro_batch_size], pad_id=0) for i in range(0, len(data), micro_batch_size)]
    tokens = sum(s.num_loss_tokens for s in data)
    results = [engine.train_step(batches, tokens, lr=1e-3) for _ in range(2)]
    return [(r.loss, r.grad_norm) for r in results]


def test_loss_and_update_do_not_depend_on_micro_batch_size() -> None:
    data = rows()
    reference = np.array(two_steps(1, data))
    for size in (2, 8):
        # the second step's loss and gradient show that the first update was the same too
        assert np.allclose(np.array(two_steps(size, data)), reference, rtol=1e-5, atol=1e-6)


def test_packed_row_equals_its_examples_apart() -> None:
    first, second = rows(2)
    packed = Sample(
        np.concatenate([first.input_ids, second.input_ids]),
        np.concatenate([first.labels, second.labels]),
        np.concatenate([first.position_ids, second.position_ids]),
        np.array([len(first.input_ids), len(second.input_ids)], dtype=np.int32),
    )
    engine = backend(config())
    together = engine.eval_step(collate([packed], pad_id=0))
    apart = [engine.eval_step(collate([s], pad_id=0)) for s in (first, second)]
    assert together.loss_tokens == sum(r.loss_tokens for r in apart)
    assert together.loss_sum == pytest.approx(sum(r.loss_sum for r in apart), rel=1e-5)


def test_grad_norm_is_reported_before_clipping() -> None:
    data = rows()
    unclipped_norm = two_steps(8, data)[0][1]
    cfg = config(micro_batch_size=8, gradient_clip_val=1e-3)
    engine = backend(cfg)
    result = engine.train_step([collate(data, pad_id=0)], sum(s.num_loss_tokens for s in data), lr=1e-2)
    assert result.grad_norm == pytest.approx(unclipped_norm, rel=1e-5)


def test_non_finite_loss_skips_the_update() -> None:
    engine = backend(config(micro_batch_size=8))
    before = [p.detach().clone() for p in engine.model.parameters()]
    with torch.no_grad():
        engine.hf_model.lm_head.weight[0, 0] = math.nan
    result = engine.train_step([collate(rows(), pad_id=0)], 10, lr=1e-2)
    assert result.skipped and not math.isfinite(result.loss)
    after = list(engine.model.parameters())
    assert all(torch.equal(a, b) or torch.isnan(b).any() for a, b in zip(before, after, strict=True))


def test_no_weight_decay_on_norms() -> None:
    groups = param_groups(random_llama(config().model.architecture, VOCAB, 0), 0.1)  # type: ignore[arg-type]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_checkpoint_round_trip_continues_identically(tmp_path: Path) -> None:
    data = rows()
    batch, tokens = [collate(data, pad_id=0)], sum(s.num_loss_tokens for s in data)
    engine = backend(config(micro_batch_size=8))
    engine.train_step(batch, tokens, lr=1e-2)
    engine.save_checkpoint(tmp_path)
    expected = engine.train_step(batch, tokens, lr=1e-2)
    restored = backend(config(micro_batch_size=8))
    restored.load_checkpoint(tmp_path)
    again = restored.train_step(batch, tokens, lr=1e-2)
    assert (again.loss, again.grad_norm) == (expected.loss, expected.grad_norm)
    engine.export_hf(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
