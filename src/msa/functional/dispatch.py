"""Routing of B questions with one call: the fused kernel where it applies, else the reference.

``route_topk`` runs ``msa.kernels.route_topk`` on CUDA tensors when ``MSA_FORCE_REFERENCE`` is unset: the
Triton kernel for the default reductions (head mean, query max, chunk max; triton importable) and the
one-row-per-question GEMV for query mean (head mean, query mean, chunk max). Otherwise ``doc_scores`` +
``select_docs`` per question, in float32. Both return the same layout.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from msa.functional.routing import ChunkReduce, HeadReduce, QueryReduce, doc_scores, select_docs

DEFAULT_REDUCTIONS = ("mean", "max", "max")  # head, query, chunk
MEAN_REDUCTIONS = ("mean", "mean", "max")  # query mean: one query row per question, a GEMV


def kernel_applies(t: Tensor, head_reduce: str = "mean", query_reduce: str = "max", chunk_reduce: str = "max") -> bool:
    """Whether ``route_topk`` would run the fused path for tensors on t's device and these reductions."""
    if os.environ.get("MSA_FORCE_REFERENCE", "0") not in ("", "0"):
        return False
    reductions = (head_reduce, query_reduce, chunk_reduce)
    if reductions == MEAN_REDUCTIONS:
        return t.is_cuda
    if reductions != DEFAULT_REDUCTIONS:
        return False
    return t.is_cuda and importlib.util.find_spec("triton") is not None


def route_topk(
    q_router: Tensor,
    k_router: Tensor,
    chunk_doc: Tensor,
    num_docs: int,
    k: int,
    query_mask: Tensor | None = None,
    cosine: bool = True,
    *,
    head_reduce: HeadReduce = "mean",
    query_reduce: QueryReduce = "max",
    chunk_reduce: ChunkReduce = "max",
) -> tuple[Tensor, Tensor]:
    """Top-k documents of B questions over one layer's pooled router keys.

    Args:
        q_router: [B, Tq, Hq, D] router queries (questions padded to a common Tq).
        k_router: [C, Hkv, D] pooled router keys (raw; normalised here in cosine mode).
        chunk_doc: [C] long, owning document 0..num_docs-1 of every chunk, documents contiguous.
        num_docs: N.
        k: documents to select.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine: cosine routing (else raw dot / sqrt(D)).
        head_reduce, query_reduce, chunk_reduce: as ``doc_scores``.

    Returns:
        docs [B, k] long, best first, ties towards the lower index, -1 where fewer than k documents
        have a finite score; scores [B, k] float32, -inf there. On the fused path the scores come from
        bfloat16 operands (relative error ~1e-2), on the reference path from float32.
    """
    b = q_router.shape[0]
    if q_router.dim() != 4 or k_router.dim() != 3:
        raise ValueError(f"q_router must be [B, Tq, Hq, D] and k_router [C, Hkv, D], got {tuple(q_router.shape)}, {tuple(k_router.shape)}")
    if kernel_applies(k_router, head_reduce, query_reduce, chunk_reduce):
        from msa import kernels

        keys = kernels.prepare_routing_keys(k_router, cosine, torch.bfloat16)
        return kernels.route_topk(q_router.to(k_router.device), keys, chunk_doc, num_docs, k, query_mask, cosine,
                                  query_reduce=query_reduce)  # fmt: skip
    device = k_router.device
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
