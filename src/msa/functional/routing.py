"""Document routing: scores (MSA_SPEC Part A.4, Part B 3.2-3.4) and top-k selection."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

HeadReduce = Literal["mean", "max"]
QueryReduce = Literal["max", "mean", "last"]
ChunkReduce = Literal["max", "mean"]


def chunk_scores(
    q_router: Tensor,
    k_router: Tensor,
    query_mask: Tensor | None = None,
    cosine: bool = True,
    head_reduce: HeadReduce = "mean",
    query_reduce: QueryReduce = "max",
) -> Tensor:
    """Score of every chunk against one query: reduce over heads, then over query tokens.

    Args:
        q_router: [Tq, Hq, D] router queries.
        k_router: [C, Hkv, D] pooled router keys; query head h pairs with kv head h // (Hq // Hkv).
        query_mask: [Tq] bool, tokens that take part (default all). With no token, all scores are -inf.
        cosine: L2-normalise q and k per head vector (scale 1); else raw dot product / sqrt(D).

    Returns:
        [C] float32 chunk scores.
    """
    tq, hq, d = q_router.shape
    c, hkv, dk = k_router.shape
    if dk != d:
        raise ValueError(f"router query head_dim {d} != router key head_dim {dk}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key heads ({hkv})")
    q = q_router.float()
    k = k_router.float()
    if cosine:
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        scale = 1.0
    else:
        scale = 1.0 / math.sqrt(d)
    group = hq // hkv
    q = q.view(tq, hkv, group, d)
    s = torch.einsum("tkgd,ckd->tkgc", q, k).reshape(tq, hq, c) * scale  # [Tq, Hq, C]
    s = s.mean(dim=1) if head_reduce == "mean" else s.amax(dim=1)  # [Tq, C]
    if query_mask is None:
        query_mask = torch.ones(tq, dtype=torch.bool, device=s.device)
    query_mask = query_mask.to(device=s.device, dtype=torch.bool)
    if not bool(query_mask.any()):
        return torch.full((c,), float("-inf"), device=s.device)
    if query_reduce == "max":
        return s.masked_fill(~query_mask[:, None], float("-inf")).amax(dim=0)
    if query_reduce == "mean":
        return s[query_mask].mean(dim=0)
    if query_reduce == "last":
        return s[int(query_mask.nonzero()[-1])]
    raise ValueError(f"unknown query_reduce {query_reduce!r}")


def reduce_chunks_to_docs(
    chunk_score: Tensor, chunk_doc: Tensor, num_docs: int, chunk_reduce: ChunkReduce = "max"
) -> Tensor:
    """Document score from its chunks' scores.

    Args:
        chunk_score: [..., C] float.
        chunk_doc: [C] long, document of every chunk (0..num_docs-1).

    Returns:
        [..., num_docs] float32; documents with no chunk get -inf.
    """
    lead = chunk_score.shape[:-1]
    out = torch.full(lead + (num_docs,), float("-inf"), device=chunk_score.device, dtype=torch.float32)
    index = chunk_doc.to(chunk_score.device).expand(lead + chunk_doc.shape)
    if chunk_reduce == "max":
        return out.scatter_reduce(-1, index, chunk_score.float(), reduce="amax", include_self=True)
    if chunk_reduce == "mean":
        sums = torch.zeros_like(out).scatter_add(-1, index, chunk_score.float())
        counts = torch.bincount(chunk_doc, minlength=num_docs).to(out)
        return torch.where(counts > 0, sums / counts.clamp(min=1), out)
    raise ValueError(f"unknown chunk_reduce {chunk_reduce!r}")


def doc_scores(
    q_router: Tensor,
    k_router: Tensor,
    chunk_doc: Tensor,
    num_docs: int,
    query_mask: Tensor | None = None,
    cosine: bool = True,
    *,
    head_reduce: HeadReduce = "mean",
    query_reduce: QueryReduce = "max",
    chunk_reduce: ChunkReduce = "max",
) -> Tensor:
    """Routing score of every document for one query (paper eq. 2).

    score[i] = max over chunks j of document i of max over masked query tokens t of
    mean over the Hq heads of cos(q[t, h], k[j, h // (Hq // Hkv)]).
    ``cosine=False`` uses the raw dot product scaled by 1/sqrt(D), as the official engine does for
    ``aux_loss_method == "INFONCE_DECOUPLE"``. The reductions are configurable as in ``msa_config``.

    Args:
        q_router: [Tq, Hq, D] router queries (any float dtype).
        k_router: [C, Hkv, D] pooled router keys.
        chunk_doc: [C] long, owning document 0..num_docs-1.
        num_docs: N.
        query_mask: [Tq] bool, tokens taking part (default all).

    Returns:
        [N] float32; documents with no chunk (or no query token) get -inf.
    """
    if chunk_doc.numel() != k_router.shape[0]:
        raise ValueError(f"chunk_doc has {chunk_doc.numel()} entries for {k_router.shape[0]} chunks")
    s = chunk_scores(q_router, k_router, query_mask, cosine, head_reduce, query_reduce)
    return reduce_chunks_to_docs(s, chunk_doc, num_docs, chunk_reduce)


def select_docs(scores: Tensor, k: int) -> Tensor:
    """The k best finite-scored documents, best first, ties broken towards the lower index.

    Args:
        scores: [N] float.

    Returns:
        LongTensor [<= k] of document indices.
    """
    scores = scores.float()
    finite = torch.isfinite(scores)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    # A stable descending sort keeps equal scores in index order.
    masked = torch.where(finite, scores, torch.full_like(scores, float("-inf")))
    order = torch.sort(masked, descending=True, stable=True).indices
    return order[:k]


def batched_doc_scores(
    q_router: Tensor,
    query_mask: Tensor,
    k_router: Tensor,
    chunk_doc: Tensor,
    num_docs: int,
    cosine: bool = True,
    *,
    head_reduce: HeadReduce = "mean",
    query_reduce: QueryReduce = "max",
    chunk_reduce: ChunkReduce = "max",
) -> Tensor:
    """``doc_scores`` for B independent queries at once (training: one routing query per sample).

    Args:
        q_router: [B, Tq, Hq, D] router queries; query_mask: [B, Tq] bool, tokens taking part.
        k_router: [B, C, Hkv, D] pooled router keys of each sample's own chunks (padded).
        chunk_doc: [B, C] long, owning document 0..num_docs-1 of each chunk, -1 for padding.

    Returns:
        [B, num_docs] float32, equal (up to float rounding) to ``doc_scores`` row by row; documents with
        no chunk, and rows with no query token, get -inf.
    """
    b, tq, hq, d = q_router.shape
    hkv = k_router.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key heads ({hkv})")
    q, k = q_router.float(), k_router.float()
    if cosine:
        q, k, scale = F.normalize(q, dim=-1), F.normalize(k, dim=-1), 1.0
    else:
        scale = 1.0 / math.sqrt(d)
    q = q.view(b, tq, hkv, hq // hkv, d)
    s = torch.einsum("btkgd,bckd->btkgc", q, k).reshape(b, tq, hq, -1) * scale  # [B, Tq, Hq, C]
    s = s.mean(dim=2) if head_reduce == "mean" else s.amax(dim=2)  # [B, Tq, C]
    m = query_mask.to(device=s.device, dtype=torch.bool)
    n = m.sum(1)  # [B]
    if query_reduce == "max":
        cs = s.masked_fill(~m[:, :, None], float("-inf")).amax(dim=1)
    elif query_reduce == "mean":
        cs = (s * m[:, :, None]).sum(1) / n.clamp(min=1)[:, None]
    elif query_reduce == "last":
        last = (torch.arange(tq, device=s.device) * m).argmax(1)  # index of the last masked token
        cs = s.gather(1, last[:, None, None].expand(-1, 1, s.shape[2])).squeeze(1)
    else:
        raise ValueError(f"unknown query_reduce {query_reduce!r}")
    cs = cs.masked_fill((n == 0)[:, None], float("-inf"))
    pad = chunk_doc < 0
    return _chunks_to_columns(cs, chunk_doc.masked_fill(pad, num_docs), pad, num_docs, chunk_reduce)


def _chunks_to_columns(cs: Tensor, index: Tensor, pad: Tensor, width: int, chunk_reduce: ChunkReduce) -> Tensor:
    """Chunk scores cs [B, C] into document columns [B, width]: chunk c goes to column index[b, c]
    (``width`` for padding, pad [B, C] or [1, C] True there: a dropped extra column)."""
    out = torch.full((cs.shape[0], width + 1), float("-inf"), device=cs.device)
    if chunk_reduce == "max":
        out = out.scatter_reduce(1, index, cs, reduce="amax", include_self=True)
    elif chunk_reduce == "mean":
        sums = torch.zeros_like(out).scatter_add(1, index, cs.masked_fill(pad, 0.0))
        counts = torch.zeros_like(out).scatter_add(1, index, (~pad).float().expand_as(cs))
        out = torch.where(counts > 0, sums / counts.clamp(min=1), out)
    else:
        raise ValueError(f"unknown chunk_reduce {chunk_reduce!r}")
    return out[:, :width]


def batched_select_docs(scores: Tensor, k: int) -> Tensor:
    """``select_docs`` per row: [B, N] scores -> [B, min(k, N)] document indices, best first (ties to the
    lower index), -1 where a row has fewer finite scores."""
    scores = scores.float()
    finite = torch.isfinite(scores)
    masked = torch.where(finite, scores, torch.full_like(scores, float("-inf")))
    order = torch.sort(masked, descending=True, stable=True).indices[:, : min(k, scores.shape[1])]
    return order.masked_fill(~finite.gather(1, order), -1)


def route_topk(q_router: Tensor, k_router: Tensor, chunk_doc: Tensor, num_docs: int, k: int,
               query_mask: Tensor | None = None, cosine: bool = True, *, head_reduce: HeadReduce = "mean",
               query_reduce: QueryReduce = "max", chunk_reduce: ChunkReduce = "max") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Top-k documents of B questions over one layer's pooled router keys: ``doc_scores`` +
    ``select_docs`` per question, in float32 (``msa.kernels.route_docs`` is the fast version).

    Args:
        q_router: [B, Tq, Hq, D] router queries (questions padded to a common Tq).
        k_router: [C, Hkv, D] pooled router keys (raw; normalised here in cosine mode).
        chunk_doc: [C] long, owning document 0..num_docs-1 of every chunk.
        num_docs: N.
        k: documents to select.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine, head_reduce, query_reduce, chunk_reduce: as ``doc_scores``.

    Returns:
        docs [B, k] long, best first, ties towards the lower index, -1 where fewer than k documents
        have a finite score; scores [B, k] float32, -inf there. On k_router's device.
    """
    if q_router.dim() != 4 or k_router.dim() != 3:
        raise ValueError(f"q_router must be [B, Tq, Hq, D] and k_router [C, Hkv, D], got {tuple(q_router.shape)}, {tuple(k_router.shape)}")
    b, device = q_router.shape[0], k_router.device
    docs = torch.full((b, k), -1, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    chunk_doc = chunk_doc.to(device=device, dtype=torch.long)
    for s in range(b):
        m = None if query_mask is None else query_mask[s].to(device)
        sc = doc_scores(q_router[s].to(device), k_router, chunk_doc, num_docs, m, cosine,
                        head_reduce=head_reduce, query_reduce=query_reduce, chunk_reduce=chunk_reduce)  # fmt: skip
        top = select_docs(sc, k)
        docs[s, : top.numel()] = top
        scores[s, : top.numel()] = sc[top]
    return docs, scores


def cross_doc_scores(q_router: Tensor, query_mask: Tensor, k_router: Tensor, chunk_doc: Tensor, num_docs: int,
                     cosine: bool = True, *, head_reduce: HeadReduce = "mean", query_reduce: QueryReduce = "max",
                     chunk_reduce: ChunkReduce = "max") -> Tensor:  # fmt: skip
    """Every sample's query against every sample's documents (training with batch negatives).

    Args: as ``batched_doc_scores``: q_router [B, Tq, Hq, D], query_mask [B, Tq], k_router [B, C, Hkv, D],
        chunk_doc [B, C] (-1 = padding), num_docs: the per-sample document width N.

    Returns:
        [B, B * N] float32: column ``j * N + d`` is document d of sample j; the block of sample b's own
        documents equals ``batched_doc_scores`` row b (to rounding). -inf where there is no document.
    """
    b, tq, hq, d = q_router.shape
    c, hkv = k_router.shape[1], k_router.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key heads ({hkv})")
    if not (head_reduce == "mean" and query_reduce == "mean"):
        # general reductions: one key sample at a time (B passes over [B, Tq, Hq, C])
        blocks = [batched_doc_scores(q_router, query_mask, k_router[j].expand(b, c, hkv, d), chunk_doc[j].expand(b, c),
                                     num_docs, cosine, head_reduce=head_reduce, query_reduce=query_reduce,
                                     chunk_reduce=chunk_reduce) for j in range(b)]  # fmt: skip
        return torch.cat(blocks, dim=1)
    # Means over heads and tokens are linear: the score of a chunk is the dot product of its key with
    # one effective query per KV head, (1 / (Hq * n)) * sum over the group's heads and tokens of q.
    q, k = q_router.float(), k_router.float()
    if cosine:
        q, k, scale = F.normalize(q, dim=-1), F.normalize(k, dim=-1), 1.0
    else:
        scale = 1.0 / math.sqrt(d)
    m = query_mask.to(device=q.device, dtype=q.dtype)
    n = m.sum(1)  # [B]
    q_eff = torch.einsum("btkgd,bt->bkd", q.view(b, tq, hkv, hq // hkv, d), m) / (hq * n.clamp(min=1))[:, None, None]
    cs = torch.einsum("bkd,ckd->bc", q_eff, k.reshape(b * c, hkv, d)) * scale  # [B, B*C]
    cs = cs.masked_fill((n == 0)[:, None], float("-inf"))
    owner = chunk_doc.to(q.device)
    pad = (owner < 0).flatten()[None]  # [1, B*C]
    index = (owner + torch.arange(b, device=q.device)[:, None] * num_docs).flatten()[None].masked_fill(pad, b * num_docs)
    return _chunks_to_columns(cs, index.expand(b, -1), pad, b * num_docs, chunk_reduce)
