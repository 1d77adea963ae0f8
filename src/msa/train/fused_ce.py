"""Chunked cross-entropy fused with the LM head: the loss over a 151,936-token vocabulary without ever
holding [M, V] logits (fp32 or otherwise) for all M target tokens at once.

Forward and backward walk the targets in chunks of ``chunk`` tokens; each chunk's logits are computed
in the matmul dtype, reduced in float32 (logsumexp, target logit), and recomputed in the backward for
the softmax gradient. Peak extra memory is one [chunk, V] float32 block instead of [M, V].
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chunked_cross_entropy"]


def _matmul_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        h, w = hidden.to(dtype), weight.to(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # reductions: float32 or better
        lse = torch.empty(h.shape[0], dtype=acc, device=h.device)
        picked = torch.empty_like(lse)
        for s in range(0, h.shape[0], chunk):
            logits = (h[s : s + chunk] @ w.T).to(acc)
            lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
            picked[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return (lse - picked).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        h, w = hidden.to(ctx.dtype), weight.to(ctx.dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        for s in range(0, h.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, h.shape[0])
            p = torch.exp((h[s:e] @ w.T).to(lse.dtype) - lse[s:e, None])  # softmax [n, V]
            p[torch.arange(e - s, device=p.device), targets[s:e]] -= 1.0
            p = (p * grad).to(ctx.dtype)
            grad_h[s:e] = p @ w
            grad_w += p.T @ h[s:e]  # accumulated over chunks in float32 (or float64)
        return grad_h.to(hidden.dtype), grad_w.to(weight.dtype), None, None, None


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = 4096) -> Tensor:
    """Sum over M tokens of cross_entropy(hidden @ weight.T, targets), chunked.

    Args:
        hidden: [M, H] final hidden states at the target positions; weight: [V, H] LM head.
        targets: [M] long token ids. chunk: tokens per chunk (>= 1).

    Returns:
        scalar float32 (float64 for float64 inputs), equal to ``F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")``
        with the matmul in the autocast dtype when autocast is on (values and gradients, up to rounding).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if hidden.shape[0] == 0:
        return (hidden.sum() * 0.0 + weight.sum() * 0.0).float()
    return _ChunkedCE.apply(hidden, weight, targets, chunk, _matmul_dtype(hidden))
