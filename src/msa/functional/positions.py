"""Position ids: document-wise RoPE for memory, global positions for the active context."""

from __future__ import annotations

import torch
from torch import Tensor


def doc_position_ids(doc_lengths: Tensor) -> Tensor:
    """Positions restarting at 0 in every document.

    Args:
        doc_lengths: [N] long.

    Returns:
        [sum(doc_lengths)] long: 0..len_0-1, 0..len_1-1, ...
    """
    doc_lengths = doc_lengths.to(torch.long)
    starts = torch.cumsum(doc_lengths, 0) - doc_lengths
    token_doc = torch.repeat_interleave(torch.arange(len(doc_lengths), device=doc_lengths.device), doc_lengths)
    return torch.arange(int(doc_lengths.sum()), device=doc_lengths.device) - starts[token_doc]


def query_position_ids(attention_mask: Tensor, offset: int) -> Tensor:
    """Positions of left-padded query tokens: the first real token gets ``offset``.

    Pads take the first real token's position (the official engine's convention).

    Args:
        attention_mask: [B, T] bool/int, 1 for real tokens (left padding).
        offset: position of the first real token (official: template length + top_k = 19).

    Returns:
        [B, T] long.
    """
    mask = attention_mask.to(torch.long)
    return offset + (torch.cumsum(mask, dim=-1) - 1).clamp(min=0)
