"""Checkpoint metadata, retention and resume discovery (no model involved)."""

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sft_trainer import checkpoint as ckpt


def meta(step: int, val_loss: float | None = None) -> ckpt.CheckpointMeta:
    return ckpt.CheckpointMeta(
        step=step,
        consumed_samples=step * 8,
        data_position=ckpt.DataPosition(epoch=step // 10, offset=(step % 10) * 8),
        total_steps=100,
        lr=1e-3,
        val_loss=val_loss,
        best_val_loss=val_loss,
        elapsed_s=1.5,
        config_hash="abc",
        rng=ckpt.capture_rng(),
    )


def info(step: int, val_loss: float | None) -> ckpt.CheckpointInfo:
    return ckpt.CheckpointInfo(Path(f"step-{step}"), step, val_loss)


def steps(infos: list[ckpt.CheckpointInfo]) -> list[int]:
    return [i.step for i in infos]


def test_retention_keeps_newest_and_top_k() -> None:
    found = [info(10, 2.0), info(20, 1.0), info(30, 1.5), info(40, 3.0)]
    assert steps(ckpt.checkpoints_to_delete(found, save_top_k=1)) == [10, 30]
    assert steps(ckpt.checkpoints_to_delete(found, save_top_k=2)) == [10]
    assert steps(ckpt.checkpoints_to_delete(found, save_top_k=0)) == [10, 20, 30]


def test_retention_ignores_missing_or_nan_val_loss_and_prefers_newer_ties() -> None:
    found = [info(10, None), info(20, float("nan")), info(30, 1.0), info(40, 1.0), info(50, None)]
    assert steps(ckpt.checkpoints_to_delete(found, save_top_k=1)) == [10, 20, 30]
    assert ckpt.checkpoints_to_delete([], save_top_k=1) == []


def test_meta_round_trips_through_json() -> None:
    original = meta(23, 0.5)
    again = ckpt.CheckpointMeta.from_json(original.to_json())
    assert again == original
    assert again.epoch == 2


def publish(root: Path, step: int, val_loss: float | None = None) -> Path:
    staging = ckpt.staging_dir(root, step)
    staging.mkdir(parents=True)
    (staging / "weights").write_text(str(step))
    return ckpt.publish(root, staging, meta(step, val_loss))


def test_resume_picks_newest_complete_checkpoint_by_metadata(tmp_path: Path) -> None:
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    publish(root, 10)
    newest = publish(root, 20)
    (root / "step-99").mkdir()  # a crash before meta.json: incomplete, never resumed from
    (root / ".tmp-step-30").mkdir()  # a crash mid-write
    renamed = root / "step-5"  # names mean nothing: the state comes from meta.json
    newest.rename(renamed)
    assert ckpt.find_resume(tmp_path, "auto") == renamed
    assert ckpt.read_meta(renamed).step == 20
    assert ckpt.find_resume(tmp_path, "never") is None
    assert ckpt.find_resume(tmp_path / "empty", "auto") is None


def test_publish_is_atomic_and_points_last_at_newest(tmp_path: Path) -> None:
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    publish(root, 10, 1.0)
    publish(root, 20, 2.0)
    assert (root / "last").resolve() == (root / "step-20").resolve()
    assert not list(root.glob(".tmp-*"))
    publish(root, 20, 0.5)  # re-saving a step replaces it
    assert ckpt.read_meta(root / "step-20").val_loss == 0.5
    deleted = ckpt.apply_retention(root, save_top_k=1)
    assert [p.name for p in deleted] == ["step-10"]


def test_rng_states_restore() -> None:
    state = ckpt.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_retention_with_mode_max_keeps_the_highest() -> None:
    found = [info(10, 2.0), info(20, 1.0), info(30, 1.5), info(40, 0.1)]
    assert steps(ckpt.checkpoints_to_delete(found, save_top_k=1, mode="max")) == [20, 30]


def test_retention_ranks_by_the_monitored_metric_of_meta_json(tmp_path: Path) -> None:
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    for step, val_loss, loss in ((10, 1.0, 3.0), (20, 2.0, 0.5), (30, 3.0, 2.0)):
        staging = ckpt.staging_dir(root, step)
        staging.mkdir(parents=True)
        original = meta(step, val_loss)
        ckpt.publish(root, staging, replace(original, metrics={"val_loss": val_loss, "loss": loss}))
    assert [c.score for c in ckpt.list_checkpoints(root, "loss")] == [3.0, 0.5, 2.0]
    ckpt.apply_retention(root, save_top_k=1, metric="loss", mode="min")
    assert sorted(p.name for p in root.glob("step-*")) == ["step-20", "step-30"]


def test_old_meta_without_metrics_still_ranks_by_val_loss() -> None:
    assert meta(5, 0.25).monitored("val_loss") == 0.25
    assert meta(5, 0.25).monitored("loss") is None


def test_monitor_accepts_nemo_names_and_a_mode() -> None:
    from sft_trainer.config import CheckpointConfig

    assert CheckpointConfig(monitor="validation_loss").metric == "val_loss"
    assert CheckpointConfig(monitor="reduced_train_loss", mode="min").metric == "loss"
    assert CheckpointConfig(monitor="val_perplexity").metric == "val_perplexity"
