"""Fast paths of MSA ops, each beside a plain-PyTorch version with the same signature.

``route_topk`` / ``doc_scores_batched`` run the Triton kernel on CUDA tensors when triton is importable
and the PyTorch GEMM formulation elsewhere; ``MSA_FORCE_REFERENCE=1`` forces the PyTorch path.
``route_topk(..., query_reduce="mean")`` pre-reduces every question to one query row and scores it with
a PyTorch GEMV over the keys on every device (memory-bound: it reads the keys once).
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

from msa.kernels.routing_prep import (
    RoutingKeys,
    chunk_doc_from_offsets,
    prepare_doc_mean_keys,
    prepare_routing_keys,
    router_query_matrix,
)
from msa.kernels.routing_torch import (
    doc_scores_batched_torch,
    doc_scores_rows_torch,
    route_topk_rows,
    route_topk_torch,
    router_query_rows,
    topk_docs,
)

__all__ = [
    "RoutingKeys",
    "chunk_doc_from_offsets",
    "doc_scores_batched",
    "doc_scores_batched_torch",
    "doc_scores_rows_torch",
    "prepare_doc_mean_keys",
    "prepare_routing_keys",
    "route_topk",
    "route_topk_rows",
    "route_topk_torch",
    "router_query_matrix",
    "router_query_rows",
    "topk_docs",
    "use_triton",
]


def use_triton(t: Tensor) -> bool:
    """Whether the Triton kernels serve tensors on t's device."""
    if os.environ.get("MSA_FORCE_REFERENCE", "0") not in ("", "0"):
        return False
    return t.is_cuda and importlib.util.find_spec("triton") is not None


def route_topk(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    k: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
    *,
    query_reduce: str = "max",
) -> tuple[Tensor, Tensor]:
    """Top-k documents of B questions (``doc_scores`` + ``select_docs`` of msa.functional, batched).

    Args:
        q_router: [B, Tq, Hq, D] router queries; questions padded to a common Tq.
        keys: ``prepare_routing_keys`` of the layer's pooled router keys [C, Hkv, D].
        chunk_doc: [C] int, owning document of every chunk, sorted.
        num_docs: N.
        k: documents to select.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine: must match the keys' preparation when given.
        query_reduce: "max" (the official default; Triton kernel on CUDA) or "mean" (one row per
            question, ``route_topk_rows``); heads are always averaged and chunks max-reduced.

    Returns:
        docs [B, k] long, best first, ties towards the lower index, -1 padded where fewer than k
        documents have a finite score; scores [B, k] float32, -inf padded.
    """
    if query_reduce == "mean":
        if cosine is not None and cosine != keys.cosine:
            raise ValueError(f"cosine={cosine} but the keys were prepared with cosine={keys.cosine}")
        rows, has_token = router_query_rows(q_router, keys.num_kv_heads, keys.cosine, query_mask)
        return route_topk_rows(rows, keys, chunk_doc, num_docs, k, has_token)
    if query_reduce != "max":
        raise ValueError(f"the fused routing supports query_reduce 'max' or 'mean', not {query_reduce!r}")
    if use_triton(keys.keys):
        from msa.kernels.routing import route_topk_triton

        return route_topk_triton(q_router, keys, chunk_doc, num_docs, k, query_mask, cosine)
    return route_topk_torch(q_router, keys, chunk_doc, num_docs, k, query_mask, cosine)


def doc_scores_batched(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
) -> Tensor:
    """Document scores [B, N] float32 of B questions (``msa.functional.doc_scores`` batched).

    Args as ``route_topk``. Documents with no chunk, or questions with no token, get -inf.
    """
    if use_triton(keys.keys):
        from msa.kernels.routing import doc_scores_batched_triton

        return doc_scores_batched_triton(q_router, keys, chunk_doc, num_docs, query_mask, cosine)
    return doc_scores_batched_torch(q_router, keys, chunk_doc, num_docs, query_mask, cosine)
