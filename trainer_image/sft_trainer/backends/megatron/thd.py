"""MicroBatch -> the packed THD token stream megatron-core's TE attention consumes (pure numpy).

A micro-batch holds rows padded to one length; each row holds one example or several packed ones.
The THD stream drops every padding position, concatenates the examples row by row (the order of
`cu_seqlens`), and, where the token count must be a multiple of some number (sequence
parallelism splits tokens over TP ranks; FP8 GEMMs want multiples of 16), appends one dummy
example of padding that only attends to itself and carries no loss. No example attends to
another and no compute is spent on the rows' padding.

Context parallelism (CP) splits every example over the CP ranks in TE's dual-chunk ("zigzag")
order: each example is padded at its end to a multiple of 2 x CP (the padding belongs to the
example, sits after its last real token, so causal attention never lets a real token see it, and
carries no loss), cut into 2 x CP chunks, and CP rank r keeps chunks r and 2 x CP - 1 - r, which
balances causal attention work. `cp_partition_indices` is a numpy copy of TE's
`thd_get_partitioned_indices` (the device check compares the two); `cp_shard` keeps one rank's
tokens, labels and loss mask while `cu_seqlens` keeps describing the whole (padded) stream, as TE's
attention and megatron's THD RoPE expect.
"""

import math
from dataclasses import dataclass, replace

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


def thd_length(batch: MicroBatch, multiple: int = 1, example_multiple: int = 1) -> int:
    """Tokens of the THD stream of `batch`: its non-padding tokens (each example rounded up to
    `example_multiple`) rounded up to `multiple`."""
    cu = np.asarray(batch.cu_seqlens)
    real = int(padded_example_lengths(cu, example_multiple).sum()) if example_multiple > 1 else int(cu[-1])
    return round_up(max(real, 1), multiple)


def stream_multiple(token_multiple: int = 1, cp: int = 1) -> int:
    """What a THD stream's length must be a multiple of: every CP rank's share (length / CP) a multiple of
    `token_multiple` (SP: TP; FP8: 16), and, under CP, every example a multiple of 2 x CP."""
    return math.lcm(token_multiple * cp, 2 * cp) if cp > 1 else token_multiple


def padded_example_lengths(cu_seqlens: IntArray, example_multiple: int) -> IntArray:
    """Each example's length rounded up to `example_multiple` (int32)."""
    lengths = np.diff(np.asarray(cu_seqlens, dtype=np.int64))
    return (-(-lengths // example_multiple) * example_multiple).astype(np.int32)


def _pad_examples(
    tokens: LongArray, labels: LongArray, cu: IntArray, example_multiple: int, pad_id: int
) -> tuple[LongArray, LongArray, LongArray, IntArray]:
    """Append no-loss padding to the end of every example so each length is a multiple of `example_multiple`."""
    lengths: LongArray = (cu[1:].astype(np.int64) - cu[:-1].astype(np.int64)).astype(np.int64)
    padded: LongArray = padded_example_lengths(cu, example_multiple).astype(np.int64)
    new_cu = np.concatenate([[0], np.cumsum(padded)]).astype(np.int32)
    total = int(new_cu[-1])
    # positions restart at every example and keep counting through its padding (RoPE reads cu_seqlens)
    out_positions = np.arange(total, dtype=np.int64) - np.repeat(new_cu[:-1].astype(np.int64), padded)
    if np.array_equal(lengths, padded):
        return tokens, labels, out_positions, new_cu
    out_tokens = np.full(total, pad_id, dtype=np.int64)
    out_labels = np.full(total, IGNORE_INDEX, dtype=np.int64)
    # destination of every real token: its example's new start + its offset inside the example
    example = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), lengths)
    dest = new_cu[:-1].astype(np.int64)[example] + offset
    out_tokens[dest] = tokens
    out_labels[dest] = labels
    return out_tokens, out_labels, out_positions, new_cu


#: Transformer Engine's fused RoPE launches a grid of (max_seqlen, sequences) blocks; CUDA's grid
#: y-dimension stops at 65,535, so more sequences in one THD micro-batch fail with "invalid argument".
MAX_SEQUENCES_PER_MICRO_BATCH = 65_535


def check_sequence_count(cu_seqlens: IntArray) -> None:
    """Refuse a micro-batch with more sequences than TE's kernels launch (a config problem, exit 10)."""
    from sft_trainer.config import ConfigError, ConfigProblem

    count = len(cu_seqlens) - 1
    if count > MAX_SEQUENCES_PER_MICRO_BATCH:
        message = (
            f"a micro-batch holds {count:,} sequences; Transformer Engine's THD kernels take at most "
            f"{MAX_SEQUENCES_PER_MICRO_BATCH:,}: lower trainer.micro_batch_size (or data.max_seq_length when packing)"
        )
        raise ConfigError([ConfigProblem("trainer.micro_batch_size", message)])


def to_thd(
    batch: MicroBatch, multiple: int = 1, pad_id: int = 0, length: int | None = None, example_multiple: int = 1
) -> ThdBatch:
    """Flatten a micro-batch into THD form, padded up to a multiple of `multiple` (or to exactly `length`,
    e.g. one length for every micro-batch of a step, as pipeline stages exchange fixed shapes).

    `example_multiple` (context parallelism: 2 x CP) first pads every example at its end to a multiple
    of it; `multiple` must then be a multiple of `example_multiple` (see `stream_multiple`), so the
    dummy example that fills the stream is one too.
    """
    if multiple % example_multiple:
        raise ValueError(f"multiple {multiple} is not a multiple of example_multiple {example_multiple}")
    real = batch.segment_ids > 0
    tokens = batch.input_ids[real].astype(np.int64)
    labels = batch.labels[real].astype(np.int64)
    positions = batch.position_ids[real].astype(np.int64)
    cu = np.asarray(batch.cu_seqlens, dtype=np.int32)
    if int(cu[-1]) != tokens.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the batch has {tokens.shape[0]} non-padding tokens")
    max_seqlen = int(batch.max_seqlen)
    if example_multiple > 1 and len(cu) > 1:
        tokens, labels, positions, cu = _pad_examples(tokens, labels, cu, example_multiple, pad_id)
        max_seqlen = int(np.diff(cu).max())
    total = round_up(max(tokens.shape[0], 1), multiple) if length is None else length
    if total < tokens.shape[0] or total % multiple:
        raise ValueError(f"length {total} is shorter than {tokens.shape[0]} tokens or not a multiple of {multiple}")
    extra = total - tokens.shape[0]
    if extra:
        tokens = np.concatenate([tokens, np.full(extra, pad_id, dtype=np.int64)])
        labels = np.concatenate([labels, np.full(extra, IGNORE_INDEX, dtype=np.int64)])
        positions = np.concatenate([positions, np.arange(extra, dtype=np.int64)])
        cu = np.concatenate([cu, np.asarray([total], dtype=np.int32)])
        max_seqlen = max(max_seqlen, extra)
    check_sequence_count(cu)
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


def cp_partition_indices(cu_seqlens: IntArray, cp_size: int, cp_rank: int) -> LongArray:
    """The stream positions CP rank `cp_rank` keeps: per example, chunks `cp_rank` and `2 x cp_size - 1 - cp_rank`
    of its 2 x cp_size equal chunks, examples in order (TE's `thd_get_partitioned_indices`)."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} outside [0, {cp_size})")
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    lengths = np.diff(cu)
    if np.any(lengths % (2 * cp_size)):
        raise ValueError(f"every example length must be a multiple of 2 x CP = {2 * cp_size}: {lengths.tolist()}")
    parts: list[np.ndarray] = []
    for start, length in zip(cu[:-1].tolist(), lengths.tolist(), strict=True):
        chunk = length // (2 * cp_size)
        for index in (cp_rank, 2 * cp_size - 1 - cp_rank):
            parts.append(np.arange(start + index * chunk, start + (index + 1) * chunk, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def cp_shard(thd: ThdBatch, cp_size: int, cp_rank: int) -> ThdBatch:
    """CP rank `cp_rank`'s share of a THD stream: its tokens, labels, loss mask and positions;
    `cu_seqlens` and `max_seqlen` still describe the whole stream (what TE's CP attention wants)."""
    if cp_size == 1:
        return thd
    if int(thd.cu_seqlens[-1]) != len(thd.tokens):
        raise ValueError("cp_shard takes a whole stream (cu_seqlens must end at its length)")
    index = cp_partition_indices(thd.cu_seqlens, cp_size, cp_rank)
    mask = thd.loss_mask[index]
    return replace(
        thd,
        tokens=thd.tokens[index],
        labels=thd.labels[index],
        loss_mask=mask,
        position_ids=thd.position_ids[index],
        num_loss_tokens=int(mask.sum()),
    )
