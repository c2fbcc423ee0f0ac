"""Packing, collation, the block-causal mask, and packed == unpacked loss."""

import random
from typing import Any

import numpy as np
import pytest

from sft_trainer.data.collate import collate
from sft_trainer.data.dataset import ExampleDataset, PackedDataset, store_from_examples
from sft_trainer.data.packing import bins_to_arrays, pack
from sft_trainer.data.types import IGNORE_INDEX
from tests.builders import tiny_llama


@pytest.mark.parametrize("algorithm", ["first_fit_decreasing", "first_fit_shuffle"])
def test_every_example_lands_in_exactly_one_bin_within_capacity(algorithm: Any) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(2000)]
    bins = pack(lengths, 128, algorithm, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # first-fit-decreasing on uniform lengths is near-optimal
    if algorithm == "first_fit_decreasing":
        assert sum(lengths) / (len(bins) * 128) > 0.97


def test_first_fit_decreasing_by_hand() -> None:
    # placed 8, 6, 5, 3, 2: the 3 joins the 6, the 2 joins the 8
    assert pack([3, 8, 5, 2, 6], 10, "first_fit_decreasing") == [[1, 3], [4, 0], [2]]


def test_first_fit_shuffle_is_seeded() -> None:
    lengths = list(range(1, 50))
    assert pack(lengths, 60, "first_fit_shuffle", seed=1) == pack(lengths, 60, "first_fit_shuffle", seed=1)
    assert pack(lengths, 60, "first_fit_shuffle", seed=1) != pack(lengths, 60, "first_fit_shuffle", seed=2)


def test_too_long_example_is_an_error() -> None:
    with pytest.raises(ValueError, match="more than the bin"):
        pack([5, 11], 10, "first_fit_decreasing")


def _examples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for length, prompt in ((7, 3), (5, 2), (9, 4), (4, 1)):
        ids = rng.integers(3, 50, size=length).astype(np.int32)
        targets = np.arange(length) >= prompt
        out.append((ids, targets))
    return out


def test_packed_rows_restart_positions_and_never_target_across_examples() -> None:
    store = store_from_examples(_examples())
    order, offsets = bins_to_arrays(pack(store.lengths, 16, "first_fit_decreasing"))
    packed = PackedDataset(store, order, offsets)
    assert len(packed) == 2 and packed.lengths.tolist() == [16, 9]  # 9+7 and 5+4
    row = packed[0]
    assert row.seq_lens.tolist() == [9, 7]
    assert row.position_ids.tolist() == [*range(9), *range(7)]
    assert row.labels[8] == IGNORE_INDEX  # the last token of the first example predicts nothing
    assert packed.loss_tokens.tolist() == [row.num_loss_tokens, packed[1].num_loss_tokens]
    assert packed.loss_tokens.sum() == ExampleDataset(store).loss_tokens.sum()


def test_collate_pads_and_describes_boundaries() -> None:
    store = store_from_examples(_examples())
    order, offsets = bins_to_arrays(pack(store.lengths, 16, "first_fit_decreasing"))
    packed = PackedDataset(store, order, offsets)
    batch = collate([packed[0], packed[1]], pad_id=0, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (2, 16)
    assert batch.segment_ids[0].tolist() == [1] * 9 + [2] * 7
    assert batch.segment_ids[1].tolist() == [1] * 5 + [2] * 4 + [0] * 7
    assert batch.cu_seqlens.tolist() == [0, 9, 16, 21, 25]
    assert batch.max_seqlen == 9
    assert (batch.labels[1, 9:] == IGNORE_INDEX).all() and (batch.input_ids[1, 9:] == 0).all()
    assert batch.num_loss_tokens == int(packed.loss_tokens.sum())


def test_block_causal_mask() -> None:
    torch = pytest.importorskip("torch")
    from sft_trainer.data.attention import block_causal_mask

    mask = block_causal_mask(torch.tensor([[1, 1, 2, 2, 0]]))
    assert mask.shape == (1, 1, 5, 5)
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]
    assert mask[0, 0].int().tolist() == expected


def test_packed_batch_gives_the_same_loss_as_unpacked() -> None:
    torch = pytest.importorskip("torch")
    from sft_trainer.data.attention import block_causal_mask

    model = tiny_llama()
    model.config._attn_implementation = "eager"
    store = store_from_examples(_examples())
    order, offsets = bins_to_arrays(pack(store.lengths, 16, "first_fit_shuffle", seed=0))

    def summed_loss(batch: Any, segments: Any = None) -> tuple[float, int]:
        ids = torch.from_numpy(batch.input_ids)
        mask = block_causal_mask(torch.from_numpy(batch.segment_ids if segments is None else segments).long())
        additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=additive, position_ids=torch.from_numpy(batch.position_ids)
            ).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.from_numpy(batch.labels).reshape(-1), reduction="sum"
        )
        return float(loss), batch.num_loss_tokens

    packed = PackedDataset(store, order, offsets)
    unpacked = ExampleDataset(store)
    packed_loss, packed_tokens = summed_loss(collate(list(packed), pad_id=0))
    unpacked_loss, unpacked_tokens = summed_loss(collate(list(unpacked), pad_id=0))
    assert packed_tokens == unpacked_tokens
    assert packed_loss / packed_tokens == pytest.approx(unpacked_loss / unpacked_tokens, rel=1e-5)
    # Control: one causal mask over the whole packed row lets examples see each other.
    packed_batch = collate(list(packed), pad_id=0)
    leaky_loss, _ = summed_loss(packed_batch, (packed_batch.segment_ids > 0).astype(np.int32))
    assert leaky_loss != pytest.approx(packed_loss, rel=1e-4)
