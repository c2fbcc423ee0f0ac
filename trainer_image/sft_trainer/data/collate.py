"""Samples -> one padded MicroBatch."""

from collections.abc import Sequence

import numpy as np

from sft_trainer.data.types import IGNORE_INDEX, MicroBatch, Sample


def collate(samples: Sequence[Sample], pad_id: int, pad_to_multiple_of: int = 1) -> MicroBatch:
    """Pad rows to the longest (rounded up to `pad_to_multiple_of`) and describe example boundaries.

    Padding gets `pad_id`, IGNORE_INDEX labels, position 0 and segment 0; the examples of each row
    are segments 1, 2, ...; `cu_seqlens` runs over every example of every row, padding excluded.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    if pad_to_multiple_of < 1:
        raise ValueError("pad_to_multiple_of must be >= 1")
    longest = max(len(s.input_ids) for s in samples)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    rows = len(samples)
    input_ids = np.full((rows, width), pad_id, dtype=np.int64)
    labels = np.full((rows, width), IGNORE_INDEX, dtype=np.int64)
    position_ids = np.zeros((rows, width), dtype=np.int64)
    segment_ids = np.zeros((rows, width), dtype=np.int32)
    for row, sample in enumerate(samples):
        length = len(sample.input_ids)
        if int(np.sum(sample.seq_lens)) != length:
            raise ValueError(f"row {row}: seq_lens sum to {int(np.sum(sample.seq_lens))}, not its length {length}")
        input_ids[row, :length] = sample.input_ids
        labels[row, :length] = sample.labels
        position_ids[row, :length] = sample.position_ids
        segment_ids[row, :length] = np.repeat(np.arange(1, len(sample.seq_lens) + 1, dtype=np.int32), sample.seq_lens)
    all_lens = np.concatenate([np.asarray(s.seq_lens, dtype=np.int32) for s in samples])
    cu_seqlens = np.zeros(len(all_lens) + 1, dtype=np.int32)
    np.cumsum(all_lens, out=cu_seqlens[1:])
    return MicroBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=position_ids,
        segment_ids=segment_ids,
        cu_seqlens=cu_seqlens,
        max_seqlen=int(all_lens.max()) if len(all_lens) else 0,
        num_loss_tokens=int(np.count_nonzero(labels != IGNORE_INDEX)),
    )
