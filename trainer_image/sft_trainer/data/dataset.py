"""Tokenized examples in flat arrays, and the `Sequence[Sample]` views the training loop reads.

A `TokenStore` keeps every example of a split end to end: `input_ids` and pre-shifted `labels`
(int32) plus `offsets` (example i is `[offsets[i], offsets[i+1])`). The arrays may be memory-mapped
`.npy` files of the cache, so every rank shares one copy in the page cache.

`ExampleDataset` serves one example per Sample; `PackedDataset` serves bins of examples (see
packing.py). Both expose `lengths` and `loss_tokens` per row as arrays, so the loop can plan
global batches without building any Sample.
"""

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import overload

import numpy as np
import numpy.typing as npt

from sft_trainer.data.types import IGNORE_INDEX, IntArray, Sample

BoolArray = npt.NDArray[np.bool_]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TokenStore:
    """Examples laid end to end: ids, shifted labels, and example offsets."""

    input_ids: IntArray  # [N]
    labels: IntArray  # [N]
    offsets: Int64Array  # [n + 1], offsets[0] == 0, offsets[-1] == N

    @property
    def num_examples(self) -> int:
        """Examples stored."""
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> Int64Array:
        """Tokens of each example."""
        return np.diff(self.offsets)

    @cached_property
    def loss_tokens(self) -> Int64Array:
        """Positions carrying loss in each example."""
        if self.num_examples == 0:
            return np.zeros(0, dtype=np.int64)
        carries = np.asarray(self.labels) != IGNORE_INDEX
        return np.add.reduceat(carries, np.asarray(self.offsets[:-1]), dtype=np.int64)

    def example(self, index: int) -> tuple[IntArray, IntArray]:
        """`(input_ids, labels)` of example `index` (views, no copy)."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.input_ids[start:end], self.labels[start:end]


def shift_targets(input_ids: IntArray, targets: BoolArray, offsets: Int64Array) -> IntArray:
    """Pre-shifted labels: `labels[t] = input_ids[t+1]` where token t+1 is a target, else IGNORE_INDEX.

    `targets[t]` says the model is trained to produce token t. The last position of every example
    gets IGNORE_INDEX, so no target crosses an example boundary.
    """
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int32)
    if len(input_ids) > 1:
        labels[:-1] = np.where(targets[1:], input_ids[1:], IGNORE_INDEX)
    ends = offsets[1:] - 1
    labels[ends[ends >= 0]] = IGNORE_INDEX
    return labels


def store_from_examples(examples: Sequence[tuple[IntArray, BoolArray]]) -> TokenStore:
    """Build a TokenStore from `(input_ids, targets)` pairs of int32 ids and boolean target masks."""
    lengths = np.fromiter((len(ids) for ids, _ in examples), dtype=np.int64, count=len(examples))
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if examples:
        input_ids = np.concatenate([ids for ids, _ in examples]).astype(np.int32, copy=False)
        targets = np.concatenate([mask for _, mask in examples]).astype(bool, copy=False)
    else:
        input_ids, targets = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool)
    return TokenStore(input_ids=input_ids, labels=shift_targets(input_ids, targets, offsets), offsets=offsets)


class SampleSequence(Sequence[Sample]):
    """A sequence of Samples: indexing (negative indices, slices) and iteration around one `sample(index)`."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sample(self, index: int) -> Sample:
        """Sample `index`, already checked to be in range."""

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self.sample(i) for i in range(*index.indices(len(self)))]
        return self.sample(_check_index(index, len(self)))

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self)))


class ExampleDataset(SampleSequence):
    """One example per Sample."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self.lengths: Int64Array = store.lengths
        self.loss_tokens: Int64Array = store.loss_tokens

    def __len__(self) -> int:
        return self.store.num_examples

    def sample(self, index: int) -> Sample:
        """Example `index` (0 <= index < len) as a Sample."""
        ids, labels = self.store.example(index)
        length = len(ids)
        return Sample(
            input_ids=np.asarray(ids, dtype=np.int32),
            labels=np.asarray(labels, dtype=np.int32),
            position_ids=np.arange(length, dtype=np.int32),
            seq_lens=np.array([length], dtype=np.int32),
        )


class PackedDataset(SampleSequence):
    """Bins of examples per Sample: `order[bin_offsets[j]:bin_offsets[j+1]]` are bin j's examples."""

    def __init__(self, store: TokenStore, order: Int64Array, bin_offsets: Int64Array) -> None:
        self.store = store
        self.order = order
        self.bin_offsets = bin_offsets
        example_lengths = store.lengths[order]
        example_loss = store.loss_tokens[order]
        starts = np.asarray(bin_offsets[:-1])
        self.lengths: Int64Array = np.add.reduceat(example_lengths, starts) if len(starts) else example_lengths
        self.loss_tokens: Int64Array = np.add.reduceat(example_loss, starts) if len(starts) else example_loss

    def __len__(self) -> int:
        return len(self.bin_offsets) - 1

    def members(self, index: int) -> Int64Array:
        """Example indices packed into bin `index`, in row order."""
        return self.order[self.bin_offsets[index] : self.bin_offsets[index + 1]]

    def sample(self, index: int) -> Sample:
        """Bin `index` (0 <= index < len) as one Sample of its examples back to back."""
        parts = [self.store.example(int(i)) for i in self.members(index)]
        seq_lens = np.array([len(ids) for ids, _ in parts], dtype=np.int32)
        return Sample(
            input_ids=np.concatenate([ids for ids, _ in parts]).astype(np.int32, copy=False),
            labels=np.concatenate([labels for _, labels in parts]).astype(np.int32, copy=False),
            position_ids=np.concatenate([np.arange(n, dtype=np.int32) for n in seq_lens]),
            seq_lens=seq_lens,
        )


def _check_index(index: int, length: int) -> int:
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {length} rows")
    return index
