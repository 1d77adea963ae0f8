"""Routing as one GEMM (query max) or one GEMV (query mean) in plain PyTorch: the CPU path and the readable
reference of the Triton kernel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msa.kernels.routing_prep import RoutingKeys, query_bias, router_query_matrix

_BLOCK_ELEMS = 1 << 28  # scores [B*Tq, chunks] computed per step: 1 GiB of float32
_PARTIAL_SORT_MIN = 1 << 15  # CPU rows at least this long select with topk + a sort of the candidates
_KEY_TILE_ELEMS = 1 << 24  # key elements converted to the compute dtype per GEMV step (64 MiB of float32)


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


def _stable_topk_rows(masked: Tensor, k: int) -> Tensor:
    """The first k of a stable descending sort of every row, without sorting whole rows: ``torch.topk``
    finds the k-th largest value, then only the entries at least that large (ties included, in index
    order) are sorted stably. [B, N] -> [B, k] indices."""
    kth = torch.topk(masked, k, dim=1, sorted=False).values.amin(dim=1)  # [B]
    rows = []
    for r in range(masked.shape[0]):
        cand = (masked[r] >= kth[r]).nonzero().squeeze(1)  # ascending index
        rows.append(cand[torch.sort(masked[r, cand], descending=True, stable=True).indices[:k]])
    return torch.stack(rows)


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
    if not masked.is_cuda and 0 < k and n >= _PARTIAL_SORT_MIN and k <= n // 16:
        order = _stable_topk_rows(masked, k)
    else:
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


def router_query_rows(q_router: Tensor, num_kv_heads: int, cosine: bool, query_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One routing row per question for ``query_reduce="mean"``: the masked token mean of the GEMM rows.

    The token mean of Q[t] . K[c] is (mean_t Q[t]) . K[c], so routing a question is one GEMV.

    Args:
        q_router: [B, Tq, Hq, D] router queries.
        num_kv_heads: Hkv.
        cosine: as ``router_query_matrix``.
        query_mask: [B, Tq] bool, tokens taking part (default all).

    Returns:
        rows [B, Hkv*D] float32 (zero for a question with no token) and has_token [B] bool.
    """
    q = router_query_matrix(q_router, num_kv_heads, cosine)  # [B, Tq, K]
    b, tq, _ = q.shape
    if query_mask is None:
        query_mask = torch.ones(b, tq, dtype=torch.bool, device=q.device)
    if query_mask.shape != (b, tq):
        raise ValueError(f"query_mask shape {tuple(query_mask.shape)} != {(b, tq)}")
    w = query_mask.to(device=q.device, dtype=torch.float32)  # [B, Tq]
    count = w.sum(dim=1)  # [B]
    rows = torch.einsum("bt,btk->bk", w, q) / count.clamp_min(1.0)[:, None]
    return rows, count > 0


def doc_scores_rows_torch(
    q_rows: Tensor, keys: RoutingKeys, chunk_doc: Tensor, num_docs: int, valid: Tensor | None = None
) -> Tensor:
    """Document scores of B pre-reduced questions: max over documents' chunks of q_rows[b] . K[c].

    Keys are read once, in tiles of chunks converted to the compute dtype (float32 on the CPU, bfloat16
    operands with float32 accumulation on CUDA), so no float32 copy of the whole key matrix is made.

    Args:
        q_rows: [B, Hkv*D] float32 query rows (``router_query_rows``).
        keys: prepared routing keys (C chunks; bfloat16, float8 + scales or float32).
        chunk_doc: [C] int, owning document of every chunk.
        num_docs: N.
        valid: [B] bool, questions taking part (default all); the others score -inf everywhere.

    Returns:
        [B, N] float32; documents with no chunk get -inf.
    """
    _check(keys, chunk_doc, None)
    b, k = q_rows.shape
    if k != keys.keys.shape[1]:
        raise ValueError(f"query rows have {k} columns, the keys {keys.keys.shape[1]}")
    device = keys.keys.device
    fast = keys.keys.is_cuda and keys.keys.dtype != torch.float32
    compute = torch.bfloat16 if fast else torch.float32
    qm = q_rows.to(device=device, dtype=compute)
    chunk_doc = chunk_doc.to(device=device, dtype=torch.long)
    out = torch.full((b, num_docs), -math.inf, device=device)
    step = max(1, min(_BLOCK_ELEMS // max(1, b), _KEY_TILE_ELEMS // max(1, k)))
    for c0 in range(0, keys.num_chunks, step):
        kb = keys.keys[c0 : c0 + step].to(compute)  # float8 values are exact in bfloat16 and float32
        s = (qm @ kb.T).float()  # [B, cb]
        if keys.scale is not None:
            s = s * keys.scale[c0 : c0 + step]
        index = chunk_doc[c0 : c0 + step].expand(b, -1)
        out = out.scatter_reduce(1, index, s, reduce="amax", include_self=True)
    if valid is not None:
        out = out.masked_fill(~valid.to(device=device, dtype=torch.bool)[:, None], -math.inf)
    return out


def route_topk_rows(
    q_rows: Tensor, keys: RoutingKeys, chunk_doc: Tensor, num_docs: int, k: int, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k documents of B pre-reduced questions (``query_reduce="mean"``, head mean, chunk max).

    Args:
        q_rows: [B, Hkv*D] float32 (``router_query_rows``); keys: C chunks; chunk_doc: [C];
        num_docs: N; valid: [B] bool, questions with a routing token (default all).

    Returns:
        docs [B, k] long, best first, ties towards the lower index, -1 padded; scores [B, k] float32,
        -inf padded.
    """
    return topk_docs(doc_scores_rows_torch(q_rows, keys, chunk_doc, num_docs, valid), k)
