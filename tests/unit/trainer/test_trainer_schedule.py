"""The learning-rate schedule (NeMo CosineAnnealing semantics)."""

import math

import pytest

from sft_trainer.config import OptimConfig
from sft_trainer.schedule import learning_rate


def optim(**sched: object) -> OptimConfig:
    return OptimConfig.model_validate({"lr": 1.0, "sched": {"min_lr": 0.1, **sched}})


def test_warmup_is_linear_from_the_first_step() -> None:
    config = optim(warmup_steps=4)
    assert [learning_rate(s, config, 100) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert learning_rate(4, config, 100) == pytest.approx(1.0)


def test_cosine_decays_to_min_lr_then_holds() -> None:
    config = optim(warmup_steps=10, constant_steps=20)
    total = 100
    decay = total - 10 - 20
    halfway = 10 + decay // 2
    assert learning_rate(halfway, config, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(10 + decay, config, total) == pytest.approx(0.1)
    assert all(learning_rate(s, config, total) == pytest.approx(0.1) for s in range(81, 120))


def test_schedule_is_monotone_after_warmup() -> None:
    config = optim(warmup_steps=5)
    values = [learning_rate(s, config, 50) for s in range(5, 51)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(0.1)


def test_constant_schedule_keeps_lr_after_warmup() -> None:
    config = optim(name="constant", warmup_steps=2)
    assert learning_rate(0, config, 10) == pytest.approx(1 / 3)
    assert [learning_rate(s, config, 10) for s in range(3, 12)] == [1.0] * 9


def test_no_warmup_starts_at_lr() -> None:
    assert learning_rate(0, optim(), 10) == pytest.approx(1.0)
