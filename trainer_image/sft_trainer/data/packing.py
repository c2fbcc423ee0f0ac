"""Pack examples into bins of at most `capacity` tokens.

Both algorithms are first-fit: each example goes into the first (lowest-numbered) bin with room,
found in O(log bins) with a max segment tree over the bins' free space. `first_fit_decreasing`
places the longest examples first (the best fill); `first_fit_shuffle` places them in a seeded
random order (bins mix lengths, closer to the data's natural order).
"""

import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

PackingAlgorithm = Literal["first_fit_decreasing", "first_fit_shuffle"]


class _FreeSpaceTree:
    """Max segment tree over bins' free space; unused bins have the full capacity."""

    def __init__(self, max_bins: int, capacity: int) -> None:
        self.size = 1
        while self.size < max_bins:
            self.size *= 2
        self.tree = [capacity] * (2 * self.size)

    def first_fit(self, need: int) -> int:
        """Index of the first bin with at least `need` free tokens."""
        tree, node = self.tree, 1
        while node < self.size:
            node = 2 * node if tree[2 * node] >= need else 2 * node + 1
        return node - self.size

    def take(self, bin_index: int, amount: int) -> None:
        """Use `amount` tokens of bin `bin_index`."""
        tree = self.tree
        node = bin_index + self.size
        tree[node] -= amount
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2


def pack(
    lengths: Sequence[int] | npt.NDArray[np.int64], capacity: int, algorithm: PackingAlgorithm, seed: int = 0
) -> list[list[int]]:
    """Group example indices into bins whose lengths sum to at most `capacity`.

    Returns bins in creation order, each listing its examples in placement order.
    """
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens, more than the bin ({capacity})")
    if algorithm == "first_fit_decreasing":
        # Stable: equal lengths keep their original order, so the result is deterministic.
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    elif algorithm == "first_fit_shuffle":
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
    else:
        raise ValueError(f"unknown packing algorithm {algorithm!r}")
    tree = _FreeSpaceTree(max(1, len(lengths)), capacity)
    bins: list[list[int]] = []
    for index in order:
        chosen = tree.first_fit(lengths[index])
        tree.take(chosen, lengths[index])
        if chosen == len(bins):
            bins.append([])
        bins[chosen].append(index)
    return bins


def bins_to_arrays(bins: list[list[int]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`(order, bin_offsets)`: bin j holds `order[bin_offsets[j]:bin_offsets[j+1]]`."""
    sizes = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=int(offsets[-1]))
    return order, offsets
