"""`backends.loss`: the chunked loss-positions-only cross-entropy equals the plain LM head + cross-entropy."""

import numpy as np
import pytest
import torch
from torch.nn import functional

from sft_trainer.backends.loss import chunked_linear_cross_entropy, loss_positions, scatter_token_losses
from sft_trainer.data.types import IGNORE_INDEX


def _reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = hidden.double() @ weight.double().t()
    return functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_losses_and_gradients_match_the_full_head(chunk: int) -> None:
    generator = torch.Generator().manual_seed(chunk)
    hidden = torch.randn(20, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (20,), generator=generator)
    labels[torch.randperm(20, generator=generator)[:12]] = IGNORE_INDEX  # most positions carry no loss
    upstream = torch.rand(20, generator=generator, dtype=torch.float64)

    expected = _reference(hidden, weight, labels)
    (expected * upstream).sum().backward()
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()  # type: ignore[union-attr]
    hidden.grad = weight.grad = None

    index = torch.from_numpy(loss_positions(labels.numpy(), ignore=IGNORE_INDEX))
    losses = chunked_linear_cross_entropy(hidden[index], weight, labels[index], chunk=chunk)
    full = scatter_token_losses(losses, index, 20)
    (full * upstream).sum().backward()

    assert torch.allclose(full.double(), expected, atol=1e-5)
    assert torch.allclose(hidden.grad, want_h, atol=1e-5)  # type: ignore[arg-type]
    assert torch.allclose(weight.grad, want_w, atol=1e-5)  # type: ignore[arg-type]
    assert float(hidden.grad[labels == IGNORE_INDEX].abs().max()) == 0.0  # type: ignore[index]


def test_no_loss_positions_give_zero_loss_and_gradients() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    index = torch.from_numpy(loss_positions(np.zeros(4, dtype=np.float32), mask=np.zeros(4, dtype=np.float32)))
    losses = chunked_linear_cross_entropy(hidden[index], weight, torch.zeros(0, dtype=torch.long))
    scatter_token_losses(losses, index, 4).sum().backward()
    assert losses.shape == (0,)
    assert float(weight.grad.abs().sum()) == 0.0  # type: ignore[union-attr]


def test_loss_positions_reads_the_mask_before_the_labels() -> None:
    labels = np.array([[5, IGNORE_INDEX, 7, 0]])
    assert loss_positions(labels, ignore=IGNORE_INDEX).tolist() == [0, 2, 3]
    assert loss_positions(labels, mask=np.array([1.0, 0.0, 1.0, 0.0])).tolist() == [0, 2]
