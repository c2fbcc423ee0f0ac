"""Attention masks for packed rows (the torch backend). The only module of the package that needs torch."""

import torch


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """`[B, T]` segment ids -> `[B, 1, T, T]` bool mask, True where query t may attend to key s.

    A query attends to keys at or before it in the same segment; padding (segment 0) attends only
    to itself so no row of the mask is empty (softmax stays finite) and nothing attends to padding.
    """
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [batch, time], got shape {tuple(segment_ids.shape)}")
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, None, :]
    diagonal = torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = (same & causal & real) | diagonal
    return mask[:, None, :, :]
