"""From a run config to the train/validation datasets: read, encode, truncate, mask, pack, cache."""

import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sft_trainer.config.data import DataConfig
from sft_trainer.config.schema import SFTConfig
from sft_trainer.data.cache import CachedSplit, cache_key, load_split, save_split, split_dir, tokenizer_fingerprint
from sft_trainer.data.dataset import ExampleDataset, PackedDataset, store_from_examples
from sft_trainer.data.errors import BadRows, DataError
from sft_trainer.data.jsonl import read_jsonl
from sft_trainer.data.packing import bins_to_arrays, pack
from sft_trainer.data.prompt_response import EncodeCounts, Example, encode_prompt_response
from sft_trainer.data.synthetic import write_synthetic
from sft_trainer.data.types import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Dataset = ExampleDataset | PackedDataset


@dataclass
class DatasetSplits:
    """What the trainer gets: datasets of Samples (each with `lengths`/`loss_tokens` arrays) and stats."""

    train: Dataset
    validation: Dataset | None
    stats: dict[str, Any] = field(default_factory=dict)


def data_files(config: SFTConfig) -> tuple[str, str | None]:
    """The train and validation files; a synthetic task is written to `<output_dir>/data/` first."""
    data = config.data
    if data.synthetic is not None:
        train, validation = write_synthetic(data.synthetic, Path(config.output_dir) / "data")
        return str(train), str(validation)
    assert data.train_file is not None  # the schema requires one source
    return data.train_file, data.validation_file


def cache_root(config: SFTConfig) -> Path:
    """`data.cache_dir`, or `<output_dir>/data_cache`."""
    return Path(config.data.cache_dir) if config.data.cache_dir else Path(config.output_dir) / "data_cache"


def encode_file(
    path: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase", bad_rows: BadRows | None, counts: EncodeCounts
) -> Iterator[Example]:
    """Examples of one file in the configured format."""
    rows = read_jsonl(path, bad_rows)
    if config.format == "prompt_response":
        return encode_prompt_response(rows, path, config, tokenizer, bad_rows, counts)
    if config.format == "nemo_chat":
        from sft_trainer.data.nemo_chat import encode_nemo_chat

        return encode_nemo_chat(rows, path, config, tokenizer, bad_rows, counts)
    from sft_trainer.data.hf_chat import encode_hf_chat

    return encode_hf_chat(rows, path, config, tokenizer, bad_rows, counts)


def prepare_split(path: str, config: DataConfig, tokenizer: "PreTrainedTokenizerBase") -> CachedSplit:
    """Encode one file and pack it (when configured): the content of one cache directory."""
    started = time.perf_counter()
    bad_rows = BadRows() if config.skip_bad_rows else None
    counts = EncodeCounts()
    examples: list[Example] = list(encode_file(path, config, tokenizer, bad_rows, counts))
    if not examples:
        raise DataError("no usable example (every row was dropped or skipped)", file=path)
    store = store_from_examples(examples)
    del examples
    lengths = store.lengths
    if config.packing:
        bins = pack(lengths, config.max_seq_length, config.packing_algorithm, config.seed)
        order, bin_offsets = bins_to_arrays(bins)
        rows = len(bins)
    else:
        order, bin_offsets = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = store.num_examples
    tokens = int(lengths.sum())
    stats: dict[str, Any] = {
        "file": path,
        "examples": store.num_examples,
        "tokens": tokens,
        "answer_tokens": int(store.loss_tokens.sum()),
        "dropped": counts.dropped,
        "truncated": counts.truncated,
        "bad_rows": bad_rows.count if bad_rows else 0,
        "bad_row_examples": bad_rows.examples if bad_rows else [],
        "packed_sequences": rows,
        "fill_ratio": round(tokens / (rows * config.max_seq_length), 4),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if config.format != "prompt_response":
        stats["chat"] = counts.chat.most_common()  # generation defaults: what training used most
    return CachedSplit(store=store, order=order, bin_offsets=bin_offsets, stats=stats)


def load_or_prepare(
    path: str, split: str, config: SFTConfig, tokenizer: "PreTrainedTokenizerBase", tokenizer_hash: str
) -> tuple[CachedSplit, bool]:
    """The split from the cache when its key matches, else prepared and cached. Returns (split, was_cached)."""
    if not Path(path).is_file():
        raise DataError("no such file", file=path)
    directory = split_dir(cache_root(config), split, cache_key(config.data, tokenizer_hash, path))
    cached = load_split(directory)
    if cached is not None:
        return cached, True
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)  # incomplete or from another version
    prepared = prepare_split(path, config.data, tokenizer)
    save_split(directory, prepared)
    return load_split(directory) or prepared, False


def make_dataset(split: CachedSplit) -> Dataset:
    """The Sequence[Sample] view of a split: packed bins when it was packed."""
    if len(split.bin_offsets):
        return PackedDataset(split.store, split.order, split.bin_offsets)
    return ExampleDataset(split.store)


def build_datasets(config: SFTConfig, tokenizer: "PreTrainedTokenizerBase") -> DatasetSplits:
    """Train (and validation, if any) datasets of the run, through the tokenized cache.

    `stats` holds the train split's numbers (`examples`, `tokens`, `answer_tokens`, `dropped`,
    `packed_sequences`, `fill_ratio`, `seconds`, ...), `validation` the same for validation, and
    `cache` whether each split came from the cache. Call it on one rank first in a distributed
    run; the others then find the cache.
    """
    started = time.perf_counter()
    train_file, validation_file = data_files(config)
    fingerprint = tokenizer_fingerprint(tokenizer)
    train, train_cached = load_or_prepare(train_file, "train", config, tokenizer, fingerprint)
    stats: dict[str, Any] = dict(train.stats)
    stats["cache"] = {"train": "hit" if train_cached else "miss"}
    validation_dataset = None
    if validation_file:
        validation, validation_cached = load_or_prepare(validation_file, "validation", config, tokenizer, fingerprint)
        validation_dataset = make_dataset(validation)
        stats["validation"] = dict(validation.stats)
        stats["cache"]["validation"] = "hit" if validation_cached else "miss"
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return DatasetSplits(train=make_dataset(train), validation=validation_dataset, stats=stats)


def total_loss_tokens(dataset: Sequence[Sample], indices: Sequence[int]) -> int:
    """Loss tokens of some rows, from the dataset's `loss_tokens` array (no Sample is built)."""
    loss_tokens = getattr(dataset, "loss_tokens", None)
    if loss_tokens is not None:
        return int(np.asarray(loss_tokens)[np.asarray(indices, dtype=np.int64)].sum())
    return sum(dataset[i].num_loss_tokens for i in indices)
