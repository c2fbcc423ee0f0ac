"""Cross-entropy through the output layer, on the loss-carrying tokens only, in chunks (both backends).

With answer-only loss most positions carry no loss (T0: about 90% of tokens are prompt), yet a
plain LM head computes `[tokens, vocabulary]` logits for all of them: at 16k tokens and a 128k
vocabulary that is 4 GB of bf16 logits, more in float32 for the softmax, and a fifth of the 1B
model's FLOPs. `chunked_linear_cross_entropy` instead

- takes the hidden states of the loss positions only (`index`, computed on the host from the
  labels, so no device sync), and
- multiplies them with the output weight `chunk` tokens at a time; the forward keeps only each
  token's log-sum-exp, and the backward recomputes one chunk's logits at a time to form the
  softmax gradient. No `[tokens, vocabulary]` tensor of the whole micro-batch ever exists.

The gradient is the same as the plain head's (positions without loss contribute nothing to it);
only rounding differs (float32 softmax over bf16 logits, as the fused losses of Transformer Engine
and Liger do).
"""

from typing import Any

import numpy as np
import torch

DEFAULT_CHUNK = 4096


def loss_positions(labels: np.ndarray, ignore: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Flat int64 indices of the positions that carry loss: `mask > 0` if given, else `labels != ignore`."""
    flat = mask.reshape(-1) > 0 if mask is not None else np.asarray(labels).reshape(-1) != ignore
    return np.flatnonzero(flat).astype(np.int64)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token `cross_entropy(hidden @ weight.T, targets)` (no reduction), chunk by chunk."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")  # the backward runs under the forward's autocast state
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(losses)
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            logits = (hidden[part] @ weight.t()).float()
            lse[part] = torch.logsumexp(logits, dim=-1)
            losses[part] = lse[part] - logits.gather(1, targets[part, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        for start in range(0, hidden.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            probs = torch.exp((hidden[part] @ weight.t()).float() - lse[part, None])
            probs.scatter_add_(1, targets[part, None], torch.full_like(lse[part, None], -1.0))
            grad_logits = (probs * grad_losses[part, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits @ weight
            if ctx.needs_input_grad[1] and hidden.shape[0] <= ctx.chunk:  # one chunk: one GEMM, no fp32 sum
                grad_weight = grad_logits.t() @ hidden
            elif ctx.needs_input_grad[1]:
                step = (grad_logits.t() @ hidden[part]).float()
                grad_weight = step if grad_weight is None else grad_weight.add_(step)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Per-token cross-entropy (float32, shape `[n]`) of `hidden @ weight.T` against `targets`.

    `hidden` [n, H] (the loss positions' final hidden states), `weight` [V, H] (the output layer's,
    only the rows of real vocabulary), `targets` [n] in `[0, V)`. Differentiable in `hidden` and
    `weight`; peak extra memory is one `[chunk, V]` block in float32.
    """
    if hidden.shape[0] == 0:  # a micro-batch without loss tokens: a zero that still reaches the graph
        return hidden.new_zeros(0, dtype=torch.float32) + (hidden.sum() + weight.sum()).float() * 0.0
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)


def scatter_token_losses(losses: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """`[length]` float32 losses: `losses` at `index`, 0 elsewhere (differentiable)."""
    full = torch.zeros(length, dtype=torch.float32, device=losses.device)
    return full.index_put((index,), losses)
