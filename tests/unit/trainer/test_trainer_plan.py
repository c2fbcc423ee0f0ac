"""The loop's pure planning functions: steps, data order, rank/micro-batch split, validation size."""

import json

import numpy as np
import pytest

from sft_trainer.checkpoint import DataPosition
from sft_trainer.config import TrainerConfig
from sft_trainer.plan import (
    chunks,
    epoch_order,
    fault_signal,
    is_due,
    next_batch_position,
    rank_slice,
    steps_per_epoch,
    total_steps,
    validation_rows,
)
from sft_trainer.report.metrics_file import lines_up_to


@pytest.mark.parametrize("max_epochs", [-1, 1, 5])
def test_max_steps_wins_whatever_max_epochs_says(max_epochs: int) -> None:
    trainer = TrainerConfig(max_steps=7, max_epochs=max_epochs, save_interval=100, val_check_interval=100)
    assert total_steps(trainer, per_epoch=3) == 7


def test_epochs_times_steps_per_epoch_without_max_steps() -> None:
    assert total_steps(TrainerConfig(max_epochs=3), per_epoch=steps_per_epoch(100, 8)) == 36


def test_epoch_order_is_deterministic_and_reshuffled_each_epoch() -> None:
    first = epoch_order(50, seed=1, epoch=0, shuffle=True)
    assert np.array_equal(first, epoch_order(50, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(first, epoch_order(50, seed=1, epoch=1, shuffle=True))
    assert sorted(first.tolist()) == list(range(50))
    assert epoch_order(5, seed=1, epoch=3, shuffle=False).tolist() == [0, 1, 2, 3, 4]


def test_next_batch_position_rolls_over_to_next_epoch() -> None:
    assert next_batch_position(DataPosition(0, 16), num_rows=25, global_batch_size=8) == DataPosition(0, 16)
    assert next_batch_position(DataPosition(0, 24), num_rows=25, global_batch_size=8) == DataPosition(1, 0)


def test_rank_and_micro_batch_split() -> None:
    rows = np.arange(8)
    assert rank_slice(rows, 1, 2).tolist() == [4, 5, 6, 7]
    assert [c.tolist() for c in chunks(rank_slice(rows, 0, 2), 2)] == [[0, 1], [2, 3]]


def test_validation_rows() -> None:
    assert validation_rows(100, 8, 1.0) == 100
    assert validation_rows(100, 8, 2) == 16
    assert validation_rows(100, 8, 0.5) == 48
    assert validation_rows(100, 8, 0) == 0
    assert validation_rows(5, 8, 3) == 5


def test_cadence_includes_the_last_step() -> None:
    assert [s for s in range(1, 26) if is_due(s, 10, 25)] == [10, 20, 25]


def test_metrics_truncation_drops_later_steps_and_torn_lines() -> None:
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 6)] + ['{"step": 6, "lo']
    assert [json.loads(line)["step"] for line in lines_up_to(lines, 3)] == [1, 2, 3]


def test_fault_injection_only_when_asked() -> None:
    assert fault_signal(3, {}) is None
    assert fault_signal(3, {"SFT_FAULT_AT_STEP": "4"}) is None
    assert fault_signal(4, {"SFT_FAULT_AT_STEP": "4", "SFT_FAULT_SIGNAL": "term"}) == 15
