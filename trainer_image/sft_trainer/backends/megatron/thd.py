"""MicroBatch -> the packed THD token stream megatron-core's TE attention consumes (pure numpy).

A micro-batch holds rows padded to one length; each row holds one example or several packed ones.
The THD stream drops every padding position, concatenates the examples row by row (the order of
`cu_seqlens`), and, where the token count must be a multiple of some number (sequence
parallelism splits tokens over TP ranks; FP8 GEMMs want multiples of 16), appends one dummy
example of padding that only attends to itself and carries no loss. No example attends to
another and no compute is spent on the rows' padding.
"""

from dataclasses import dataclass

import numpy as np

from sft_trainer.data.types import IGNORE_INDEX, IntArray, LongArray, MicroBatch


@dataclass(frozen=True)
class ThdBatch:
    """One micro-batch as a single packed sequence of `len(tokens)` positions."""

    tokens: LongArray  # [N]
    labels: LongArray  # [N], next-token targets, 0 where `loss_mask` is 0
    loss_mask: np.ndarray  # [N] float32, 1 where a loss is taken
    position_ids: LongArray  # [N], restarting at every example
    cu_seqlens: IntArray  # [n + 1] (int32), the dummy padding example included
    max_seqlen: int
    num_loss_tokens: int


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value."""
    return -(-value // multiple) * multiple


def thd_length(batch: MicroBatch, multiple: int = 1) -> int:
    """Tokens of the THD stream of `batch`: its non-padding tokens rounded up to `multiple`."""
    return round_up(max(int(batch.cu_seqlens[-1]), 1), multiple)


def to_thd(batch: MicroBatch, multiple: int = 1, pad_id: int = 0, length: int | None = None) -> ThdBatch:
    """Flatten a micro-batch into THD form, padded up to a multiple of `multiple` (or to exactly `length`,
    e.g. one length for every micro-batch of a step, as pipeline stages exchange fixed shapes)."""
    real = batch.segment_ids > 0
    tokens = batch.input_ids[real].astype(np.int64)
    labels = batch.labels[real].astype(np.int64)
    positions = batch.position_ids[real].astype(np.int64)
    cu = np.asarray(batch.cu_seqlens, dtype=np.int32)
    if int(cu[-1]) != tokens.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the batch has {tokens.shape[0]} non-padding tokens")
    total = round_up(max(tokens.shape[0], 1), multiple) if length is None else length
    if total < tokens.shape[0] or total % multiple:
        raise ValueError(f"length {total} is shorter than {tokens.shape[0]} tokens or not a multiple of {multiple}")
    extra = total - tokens.shape[0]
    max_seqlen = int(batch.max_seqlen)
    if extra:
        tokens = np.concatenate([tokens, np.full(extra, pad_id, dtype=np.int64)])
        labels = np.concatenate([labels, np.full(extra, IGNORE_INDEX, dtype=np.int64)])
        positions = np.concatenate([positions, np.arange(extra, dtype=np.int64)])
        cu = np.concatenate([cu, np.asarray([total], dtype=np.int32)])
        max_seqlen = max(max_seqlen, extra)
    mask = labels != IGNORE_INDEX
    return ThdBatch(
        tokens=tokens,
        labels=np.where(mask, labels, 0),
        loss_mask=mask.astype(np.float32),
        position_ids=positions,
        cu_seqlens=cu,
        max_seqlen=max_seqlen,
        num_loss_tokens=int(mask.sum()),
    )


def empty_thd(length: int, pad_id: int = 0) -> ThdBatch:
    """A micro-batch of one dummy example and no loss: fills the interleaved pipeline schedule, which
    needs the number of micro-batches to be a multiple of the pipeline size."""
    return ThdBatch(
        tokens=np.full(length, pad_id, dtype=np.int64),
        labels=np.zeros(length, dtype=np.int64),
        loss_mask=np.zeros(length, dtype=np.float32),
        position_ids=np.arange(length, dtype=np.int64),
        cu_seqlens=np.asarray([0, length], dtype=np.int32),
        max_seqlen=length,
        num_loss_tokens=0,
    )
