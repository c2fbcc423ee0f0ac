"""MicroBatch -> THD stream (pure numpy) and the CPU-import promise of the megatron backend package."""

import subprocess
import sys

import numpy as np
import pytest

from sft_trainer.backends.megatron.thd import empty_thd, thd_length, to_thd
from sft_trainer.data.collate import collate
from sft_trainer.data.types import IGNORE_INDEX, Sample


def _sample(lengths: list[int], start: int = 1) -> Sample:
    ids = np.arange(start, start + sum(lengths), dtype=np.int32)
    labels = ids + 1000
    labels[0] = IGNORE_INDEX  # a prompt token
    return Sample(
        input_ids=ids,
        labels=labels.astype(np.int32),
        position_ids=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        seq_lens=np.asarray(lengths, dtype=np.int32),
    )


def test_padding_dropped_and_examples_kept_apart() -> None:
    batch = collate([_sample([3, 2], start=1), _sample([4], start=100)], pad_id=0, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (2, 8)
    thd = to_thd(batch)
    assert thd.tokens.tolist() == [1, 2, 3, 4, 5, 100, 101, 102, 103]
    assert thd.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert thd.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert thd.max_seqlen == 4
    assert thd.num_loss_tokens == batch.num_loss_tokens == 7
    assert thd.loss_mask.tolist() == [0, 1, 1, 1, 1, 0, 1, 1, 1]
    assert thd.labels[0] == 0 and thd.labels[1] == 1002  # ignored targets become a valid id, masked out


def test_rounding_adds_one_dummy_example_without_loss() -> None:
    batch = collate([_sample([3, 2])], pad_id=0)
    thd = to_thd(batch, multiple=8)
    assert len(thd.tokens) == 8 == thd_length(batch, 8)
    assert thd.cu_seqlens.tolist() == [0, 3, 5, 8]
    assert thd.loss_mask[5:].sum() == 0
    fixed = to_thd(batch, multiple=8, length=64)
    assert len(fixed.tokens) == 64 and fixed.cu_seqlens.tolist() == [0, 3, 5, 64] and fixed.max_seqlen == 59
    with pytest.raises(ValueError, match="shorter"):
        to_thd(batch, multiple=8, length=4)


def test_empty_micro_batch_carries_no_loss() -> None:
    empty = empty_thd(16)
    assert empty.num_loss_tokens == 0 and empty.loss_mask.sum() == 0 and empty.cu_seqlens.tolist() == [0, 16]


def test_importing_the_backend_package_needs_no_megatron() -> None:
    code = (
        "import sys; import sft_trainer.backends.megatron as m; "
        "assert m.MegatronBackend.__doc__; "
        "assert not any(k.startswith(('megatron', 'transformer_engine')) for k in sys.modules), 'megatron imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- context parallelism


def test_examples_padded_to_twice_cp_and_stream_to_the_stream_multiple() -> None:
    from sft_trainer.backends.megatron.thd import stream_multiple

    batch = collate([_sample([3, 2]), _sample([5], start=100)], pad_id=0)
    multiple = stream_multiple(token_multiple=1, cp=2)
    assert multiple == 4 and stream_multiple(token_multiple=2, cp=2) == 4 and stream_multiple(16, 2) == 32
    thd = to_thd(batch, multiple=multiple, example_multiple=4)
    # 3 -> 4, 2 -> 4, 5 -> 8: 16 tokens, already a multiple of 4: no dummy example
    assert thd.cu_seqlens.tolist() == [0, 4, 8, 16] and len(thd.tokens) == 16 == thd_length(batch, 4, 4)
    assert thd.tokens.tolist()[:8] == [1, 2, 3, 0, 4, 5, 0, 0]
    assert thd.position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, *range(8)]
    assert thd.max_seqlen == 8
    # real tokens keep their targets; the padding inside an example carries no loss
    assert thd.num_loss_tokens == batch.num_loss_tokens
    assert thd.loss_mask.tolist()[:8] == [0, 1, 1, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="example_multiple"):
        to_thd(batch, multiple=2, example_multiple=4)


def test_cp_stream_with_dummy_example_keeps_every_length_divisible() -> None:
    batch = collate([_sample([3])], pad_id=0)
    thd = to_thd(batch, multiple=8, example_multiple=4, length=24)
    assert thd.cu_seqlens.tolist() == [0, 4, 24]
    assert all(n % 4 == 0 for n in np.diff(thd.cu_seqlens))


def test_cp_partition_indices_are_te_dual_chunks() -> None:
    from sft_trainer.backends.megatron.thd import cp_partition_indices

    cu = np.asarray([0, 8, 12], dtype=np.int32)  # examples of 8 and 4 tokens, CP = 2: chunks of 2 and 1
    assert cp_partition_indices(cu, 2, 0).tolist() == [0, 1, 6, 7, 8, 11]
    assert cp_partition_indices(cu, 2, 1).tolist() == [2, 3, 4, 5, 9, 10]
    with pytest.raises(ValueError, match="multiple of 2 x CP"):
        cp_partition_indices(np.asarray([0, 6], dtype=np.int32), 2, 0)


@pytest.mark.parametrize("cp", [2, 4])
def test_cp_shards_partition_the_stream_and_its_loss(cp: int) -> None:
    from sft_trainer.backends.megatron.thd import cp_partition_indices, cp_shard, stream_multiple

    rng = np.random.default_rng(0)
    samples = [_sample([int(n) for n in rng.integers(1, 40, size=3)], start=10 * i) for i in range(3)]
    thd = to_thd(collate(samples, pad_id=0), multiple=stream_multiple(1, cp), example_multiple=2 * cp)
    shards = [cp_shard(thd, cp, rank) for rank in range(cp)]
    every = np.sort(np.concatenate([cp_partition_indices(thd.cu_seqlens, cp, r) for r in range(cp)]))
    assert every.tolist() == list(range(len(thd.tokens)))  # each position on exactly one rank
    assert all(len(s.tokens) == len(thd.tokens) // cp for s in shards)  # equal shares
    assert sum(s.num_loss_tokens for s in shards) == thd.num_loss_tokens
    assert all(s.cu_seqlens is thd.cu_seqlens and s.max_seqlen == thd.max_seqlen for s in shards)
    assert cp_shard(thd, 1, 0) is thd


def test_more_sequences_than_te_launches_is_a_config_error_naming_the_field() -> None:
    from sft_trainer.backends.megatron.thd import MAX_SEQUENCES_PER_MICRO_BATCH
    from sft_trainer.config import ConfigError

    count = MAX_SEQUENCES_PER_MICRO_BATCH + 1
    batch = collate([_sample([1] * count)], pad_id=0)
    with pytest.raises(ConfigError, match=r"trainer\.micro_batch_size") as error:
        to_thd(batch)
    assert "65,536 sequences" in str(error.value)
    assert len(to_thd(collate([_sample([1] * (count - 1))], pad_id=0)).cu_seqlens) == count
