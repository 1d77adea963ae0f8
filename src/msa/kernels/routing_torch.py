"""Routing as one GEMM in plain PyTorch: the CPU path and the readable reference of the Triton kernel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msa.kernels.routing_prep import RoutingKeys, query_bias, router_query_matrix

_BLOCK_ELEMS = 1 << 28  # scores [B*Tq, chunks] computed per step: 1 GiB of float32


def _check(keys: RoutingKeys, chunk_doc: Tensor, cosine: bool | None) -> None:
    if chunk_doc.numel() != keys.num_chunks:
        raise ValueError(f"chunk_doc has {chunk_doc.numel()} entries for {keys.num_chunks} chunks")
    if cosine is not None and cosine != keys.cosine:
        raise ValueError(f"cosine={cosine} but the keys were prepared with cosine={keys.cosine}")


def doc_scores_batched_torch(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
) -> Tensor:
    """Document scores of B questions: max over documents' chunks of max over masked tokens of Q.K.

    Same meaning as ``msa.functional.doc_scores`` (head mean, token max, chunk max) per question.

    Args:
        q_router: [B, Tq, Hq, D] router queries.
        keys: prepared routing keys (C chunks).
        chunk_doc: [C] int, owning document of every chunk.
        num_docs: N.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine: must match ``keys.cosine`` when given.

    Returns:
        [B, N] float32; documents with no chunk, or questions with no token, get -inf.
    """
    _check(keys, chunk_doc, cosine)
    q = router_query_matrix(q_router, keys.num_kv_heads, keys.cosine)  # [B, Tq, K]
    b, tq, k = q.shape
    device = keys.keys.device
    bias = query_bias(query_mask, b, tq, device)  # [B, Tq]
    fast = keys.keys.is_cuda and keys.keys.dtype != torch.float32
    compute = torch.bfloat16 if fast else torch.float32
    qm = q.to(device=device, dtype=compute).reshape(b * tq, k)
    chunk_doc = chunk_doc.to(device=device, dtype=torch.long)
    out = torch.full((b, num_docs), -math.inf, device=device)
    step = max(1, _BLOCK_ELEMS // max(1, b * tq))
    for c0 in range(0, keys.num_chunks, step):
        kb = keys.keys[c0 : c0 + step].to(compute)  # float8 values are exact in bfloat16
        s = (qm @ kb.T).float()  # [B*Tq, cb]
        if keys.scale is not None:
            s = s * keys.scale[c0 : c0 + step]
        s = (s.view(b, tq, -1) + bias[:, :, None]).amax(dim=1)  # [B, cb]
        index = chunk_doc[c0 : c0 + step].expand(b, -1)
        out = out.scatter_reduce(1, index, s, reduce="amax", include_self=True)
    return out


def topk_docs(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best k finite-scored documents per row, best first, ties towards the lower index.

    Args:
        scores: [B, N] float.

    Returns:
        docs [B, k] long (-1 where fewer than k finite scores) and their scores [B, k] float32 (-inf there).
    """
    b, n = scores.shape
    scores = scores.float()
    finite = torch.isfinite(scores)
    masked = torch.where(finite, scores, torch.full_like(scores, -math.inf))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    top = torch.gather(masked, 1, order)
    docs = torch.full((b, k), -1, dtype=torch.long, device=scores.device)
    vals = torch.full((b, k), -math.inf, device=scores.device)
    kk = order.shape[1]
    valid = torch.isfinite(top)
    docs[:, :kk] = torch.where(valid, order, torch.full_like(order, -1))
    vals[:, :kk] = top
    return docs, vals


def route_topk_torch(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    k: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k documents of B questions (the GEMM formulation of ``doc_scores`` + ``select_docs``).

    Args:
        q_router: [B, Tq, Hq, D]; keys: C chunks; chunk_doc: [C]; query_mask: [B, Tq] bool.

    Returns:
        docs [B, k] long, -1 padded; scores [B, k] float32, -inf padded.
    """
    return topk_docs(doc_scores_batched_torch(q_router, keys, chunk_doc, num_docs, query_mask, cosine), k)
