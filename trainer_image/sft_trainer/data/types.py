"""The contract between the data pipeline and the training backends.

A `Sample` is one training row: a single example, or several examples packed into one bin. Labels
are already shifted: `labels[t]` is the token the model must predict at position `t` (the next
token), or `IGNORE_INDEX` where no loss is taken (prompt tokens, the last token of each packed
example, padding). Backends therefore compute `cross_entropy(logits[t], labels[t])` without any
shifting, and packing never leaks a target across an example boundary.

A `MicroBatch` is what one forward pass sees: rows padded to a common length, with everything each
backend needs to keep packed examples apart (segment ids for a block-diagonal mask on the torch
backend; `cu_seqlens` for THD attention on the megatron backend).
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IGNORE_INDEX = -100

IntArray = npt.NDArray[np.int32]
LongArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Sample:
    """One training row (one example, or a bin of packed examples)."""

    input_ids: IntArray  # [L]
    labels: IntArray  # [L], next-token targets or IGNORE_INDEX
    position_ids: IntArray  # [L], restarting at 0 at each packed example
    seq_lens: IntArray  # [n], lengths of the examples in this row; sum == L

    @property
    def num_loss_tokens(self) -> int:
        """Positions that carry loss."""
        return int(np.count_nonzero(self.labels != IGNORE_INDEX))


@dataclass(frozen=True)
class MicroBatch:
    """Rows padded to one length T, ready to become tensors."""

    input_ids: LongArray  # [B, T], padding = pad id
    labels: LongArray  # [B, T], IGNORE_INDEX on padding
    position_ids: LongArray  # [B, T]
    segment_ids: IntArray  # [B, T], 0 on padding; 1, 2, ... for the examples of each row
    cu_seqlens: IntArray  # [n + 1], cumulative example lengths over all rows, padding excluded (THD)
    max_seqlen: int  # longest single example in the batch
    num_loss_tokens: int  # labels != IGNORE_INDEX over the whole micro-batch
