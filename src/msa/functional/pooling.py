"""Chunk-wise mean pooling of per-token tensors (MSA_SPEC Part A.3, Part B section 4)."""

from __future__ import annotations

import torch
from torch import Tensor


def chunk_layout(doc_lengths: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Chunk bookkeeping for consecutive documents.

    Args:
        doc_lengths: [N] long, tokens per document (each >= 1).
        chunk_size: P, tokens per chunk.

    Returns:
        token_chunk: [T] long, the chunk (0..C-1) every token falls in.
        chunk_doc: [C] long, the document (0..N-1) owning every chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    doc_lengths = doc_lengths.to(torch.long)
    if doc_lengths.numel() and int(doc_lengths.min()) < 1:
        raise ValueError("every document needs at least one token")
    device = doc_lengths.device
    chunks_per_doc = (doc_lengths + chunk_size - 1) // chunk_size  # [N]
    chunk_doc = torch.repeat_interleave(torch.arange(len(doc_lengths), device=device), chunks_per_doc)
    token_doc = torch.repeat_interleave(torch.arange(len(doc_lengths), device=device), doc_lengths)
    doc_start = torch.cumsum(doc_lengths, 0) - doc_lengths  # [N]
    first_chunk = torch.cumsum(chunks_per_doc, 0) - chunks_per_doc  # [N]
    rank = torch.arange(int(doc_lengths.sum()), device=device) - doc_start[token_doc]
    token_chunk = first_chunk[token_doc] + rank // chunk_size
    return token_chunk, chunk_doc


def chunk_mean_pool(x: Tensor, doc_lengths: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Mean of every chunk of ``chunk_size`` tokens of every document.

    Chunks never cross documents; the last chunk of a document averages only its real tokens.
    Accumulation is in float32 whatever the input dtype; the result has the input dtype.

    Args:
        x: [T, H, D] tokens of consecutive documents.
        doc_lengths: [N] long, sum(doc_lengths) == T.
        chunk_size: P.

    Returns:
        pooled: [C, H, D] (C = sum ceil(len / P)), dtype of ``x``.
        chunk_doc: [C] long, owning document index 0..N-1.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [T, H, D], got shape {tuple(x.shape)}")
    if int(doc_lengths.sum()) != x.shape[0]:
        raise ValueError(f"doc_lengths sum to {int(doc_lengths.sum())} but x has {x.shape[0]} tokens")
    token_chunk, chunk_doc = chunk_layout(doc_lengths.to(x.device), chunk_size)
    num_chunks = chunk_doc.numel()
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = torch.zeros((num_chunks,) + tuple(x.shape[1:]), dtype=acc_dtype, device=x.device)
    sums.index_add_(0, token_chunk, x.to(acc_dtype))
    counts = torch.bincount(token_chunk, minlength=num_chunks).to(acc_dtype)
    pooled = sums / counts.view(-1, 1, 1)
    return pooled.to(x.dtype), chunk_doc
