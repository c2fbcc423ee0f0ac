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
