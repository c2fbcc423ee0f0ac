"""The torch backend's flex-attention mask for packed rows keeps examples apart exactly like the dense mask."""

import torch

from sft_trainer.backends.torch_backend import packed_block_mask
from sft_trainer.data.attention import block_causal_mask


def test_the_block_mask_allows_what_the_dense_mask_allows_for_every_real_query() -> None:
    segments = torch.tensor([[1] * 5 + [2] * 4 + [3] * 3 + [0] * 4, [1] * 8 + [2] * 7 + [0]])
    mask = packed_block_mask(segments)
    positions = torch.arange(segments.shape[1])
    allowed = torch.stack(
        [mask.mask_mod(torch.tensor(row), torch.tensor(0), positions[:, None], positions[None, :]) for row in range(2)]
    )
    dense = block_causal_mask(segments)[:, 0]
    real = segments != 0
    assert torch.equal(allowed[real], dense[real])  # every real query: causal, its own example only
    assert mask.shape[-2:] == (16, 16)
