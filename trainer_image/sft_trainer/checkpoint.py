"""Checkpoints: `<output_dir>/checkpoints/step-<N>/` holding the backend's state and `meta.json`.

The training state (step, consumed samples, data position, RNG, best val loss) lives in
`meta.json` and is never parsed from directory names. A checkpoint is written into a hidden
temporary directory and renamed into place with `os.replace`, and `meta.json` is its last file,
so a crash mid-write leaves the previous checkpoint intact and a directory without `meta.json`
is never resumed from. `last` is a symlink to the newest checkpoint.
"""

import base64
import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sft_trainer.config.schema import SFTConfig

CHECKPOINTS_DIR = "checkpoints"
META_FILE = "meta.json"
LAST_LINK = "last"
META_VERSION = 1


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: `offset` rows of epoch `epoch`'s shuffled order are consumed."""

    epoch: int = 0
    offset: int = 0


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything besides model and optimizer state that a resumed run needs."""

    step: int
    consumed_samples: int
    data_position: DataPosition
    total_steps: int
    lr: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed_s: float
    config_hash: str
    rng: dict[str, Any] = field(default_factory=dict)
    version: int = META_VERSION
    metrics: dict[str, float] = field(default_factory=dict)  # what was logged at this step: loss, val_loss, ...

    def monitored(self, metric: str) -> float | None:
        """The value of `metric` at this checkpoint (older metas have only `val_loss`)."""
        if metric in self.metrics:
            return self.metrics[metric]
        return self.val_loss if metric == "val_loss" else None

    @property
    def epoch(self) -> int:
        """The epoch the next step reads from."""
        return self.data_position.epoch

    def to_json(self) -> str:
        """Serialise (including the epoch at top level, for people reading the file)."""
        return json.dumps({**asdict(self), "epoch": self.epoch}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        """Parse what `to_json` wrote."""
        raw = json.loads(text)
        raw.pop("epoch", None)
        raw["data_position"] = DataPosition(**raw["data_position"])
        return cls(**raw)


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk."""

    path: Path
    step: int
    score: float | None  # the monitored metric (checkpoint.monitor) at this step


def config_hash(config: SFTConfig) -> str:
    """A digest of the settings that shape training (not output, logging or checkpoint knobs)."""
    relevant = config.model_dump(mode="json", exclude={"name", "output_dir", "checkpoint", "logging"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def checkpoints_to_delete(
    checkpoints: list[CheckpointInfo], save_top_k: int, mode: Literal["min", "max"] = "min"
) -> list[CheckpointInfo]:
    """Retention: keep the newest checkpoint (resume needs it) and the `save_top_k` best scores
    (lowest with `mode=min`, highest with `max`).

    Checkpoints without a finite score only survive as the newest one. Ties keep the newer one.
    """
    if not checkpoints:
        return []
    newest = max(checkpoints, key=lambda c: c.step)
    sign = 1.0 if mode == "min" else -1.0
    scored = [c for c in checkpoints if c.score is not None and np.isfinite(c.score)]
    best = sorted(scored, key=lambda c: (sign * float(c.score or 0.0), -c.step))[:save_top_k]
    keep = {newest.path, *(c.path for c in best)}
    return sorted((c for c in checkpoints if c.path not in keep), key=lambda c: c.step)


def read_meta(directory: Path) -> CheckpointMeta:
    """The metadata of a checkpoint directory."""
    return CheckpointMeta.from_json((directory / META_FILE).read_text(encoding="utf-8"))


def list_checkpoints(root: Path, metric: str = "val_loss") -> list[CheckpointInfo]:
    """Complete checkpoints under `root` (those with a readable meta.json), oldest first, scored by `metric`."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            try:
                meta = read_meta(child)
            except (OSError, ValueError, TypeError, KeyError):
                continue
            found.append(CheckpointInfo(child, meta.step, meta.monitored(metric)))
    return sorted(found, key=lambda c: c.step)


def find_resume(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `auto` = newest complete one (or None), `never`, or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir / CHECKPOINTS_DIR)
        return found[-1].path if found else None
    path = Path(resume)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume}: not a complete checkpoint (no {META_FILE})")
    return path


def staging_dir(root: Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is renamed into place."""
    return root / f".tmp-step-{step}"


def publish(root: Path, staging: Path, meta: CheckpointMeta, link_last: bool = True) -> Path:
    """Write meta.json into `staging`, rename it to `step-<N>` atomically and (optionally) point `last` at it."""
    (staging / META_FILE).write_text(meta.to_json(), encoding="utf-8")
    final = root / f"step-{meta.step}"
    if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old one
        retired = root / f".old-step-{meta.step}"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)
    if link_last:
        _point_last(root, final)
    return final


def _point_last(root: Path, final: Path) -> None:
    """Atomically repoint the `last` symlink."""
    link = root / f".{LAST_LINK}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(final.name)
    os.replace(link, root / LAST_LINK)


def apply_retention(
    root: Path, save_top_k: int, metric: str = "val_loss", mode: Literal["min", "max"] = "min"
) -> list[Path]:
    """Delete checkpoints that `checkpoints_to_delete` rejects (ranked by `metric`), and leftovers of crashed writes."""
    for leftover in [*root.glob(".tmp-step-*"), *root.glob(".old-step-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    doomed = checkpoints_to_delete(list_checkpoints(root, metric), save_top_k, mode)
    for info in doomed:
        shutil.rmtree(info.path, ignore_errors=True)
    return [info.path for info in doomed]


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode()


def _from_b64(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) random states, JSON-serialisable."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np.asarray(np_keys).tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `capture_rng`."""
    if "python" in state:
        version, py_state, gauss = state["python"]
        random.setstate((version, tuple(py_state), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(_from_b64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_from_b64(s) for s in state["cuda"]])
