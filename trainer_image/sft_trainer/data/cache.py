"""The tokenized cache: one directory of `.npy` arrays + `index.json` per split, memory-mapped on load.

The directory name is a hash of everything that decides its content (the data config, the
tokenizer, and the input file's path, size and modification time), so a changed input or knob
prepares afresh and an unchanged one is reused by every rank and every restart. A cache directory
is written under a temporary name and renamed into place: it is complete or absent.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sft_trainer.config.data import DataConfig
from sft_trainer.data.dataset import Int64Array, TokenStore

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CACHE_VERSION = 2  # 2: masks train a token straddling an answer start; empty answers; left-cut separators
ARRAYS = ("input_ids", "labels", "offsets", "order", "bin_offsets")
_IGNORED_KNOBS = {"train_file", "validation_file", "synthetic", "cache_dir", "shuffle"}


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """A hash of the tokenizer's vocabulary, rules and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    if hasattr(tokenizer, "backend_tokenizer"):
        digest.update(tokenizer.backend_tokenizer.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad", "sep", "unk")}
    digest.update(json.dumps(specials, sort_keys=True).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def cache_key(config: DataConfig, tokenizer_hash: str, file: str | Path) -> str:
    """The cache key of one split: data knobs + tokenizer + the file's identity (path, size, mtime)."""
    stat = Path(file).stat()
    knobs = config.model_dump(mode="json", exclude=_IGNORED_KNOBS)
    template = Path(config.chat_template) if config.chat_template else None
    identity = {
        "version": CACHE_VERSION,
        "knobs": knobs,
        "tokenizer": tokenizer_hash,
        "file": [str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns],
        "chat_template": template.read_text(encoding="utf-8") if template and template.is_file() else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CachedSplit:
    """One split as stored: the examples, the packing (empty arrays when unpacked), and its stats."""

    store: TokenStore
    order: Int64Array
    bin_offsets: Int64Array
    stats: dict[str, Any]


def split_dir(root: str | Path, split: str, key: str) -> Path:
    """Where a split with this key lives."""
    return Path(root) / f"{split}-{key}"


def load_split(directory: Path) -> CachedSplit | None:
    """Memory-map a complete cache directory; None when absent or unreadable (it is then rebuilt)."""
    index = directory / "index.json"
    if not index.is_file():
        return None
    try:
        meta = json.loads(index.read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            return None
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    except (OSError, ValueError):
        return None
    store = TokenStore(input_ids=arrays["input_ids"], labels=arrays["labels"], offsets=arrays["offsets"])
    return CachedSplit(store=store, order=arrays["order"], bin_offsets=arrays["bin_offsets"], stats=meta["stats"])


def save_split(directory: Path, split: CachedSplit) -> Path:
    """Write a split under a temporary name and rename it into place (another writer's copy wins a race)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        arrays = {
            "input_ids": split.store.input_ids,
            "labels": split.store.labels,
            "offsets": split.store.offsets,
            "order": split.order,
            "bin_offsets": split.bin_offsets,
        }
        for name, array in arrays.items():
            np.save(temporary / f"{name}.npy", np.ascontiguousarray(array))
        meta = {"version": CACHE_VERSION, "stats": split.stats}
        (temporary / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.rename(temporary, directory)
        except OSError:
            if not (directory / "index.json").is_file():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # a concurrent writer finished first
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory
