"""Which routing backend serves a call. The one place that decides; every caller asks here.

Backends: the Triton kernel (CUDA, triton importable; head mean, query max, chunk max), the PyTorch GEMM
formulation of the same scores (any device), the one-row-per-question GEMV (head mean, query mean,
chunk max), the one-row-per-document GEMV (head, query and chunk means: the score is linear in the
keys) and the float32 reference of ``msa.functional`` (every reduction). ``MSA_FORCE_REFERENCE=1``
turns the Triton kernel and the raw-key fused dispatch off.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from msa import functional as MF
from msa.functional.routing import ChunkReduce, HeadReduce, QueryReduce
from msa.kernels.routing_prep import RoutingKeys, prepare_routing_keys
from msa.kernels.routing_torch import doc_scores_batched_torch, route_topk_rows, route_topk_torch, router_query_rows

FORCE_REFERENCE_ENV = "MSA_FORCE_REFERENCE"
ROUTING_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
FUSED_QUERY_REDUCE = ("max", "mean")
DEFAULT_REDUCTIONS = ("mean", "max", "max")  # head, query, chunk: the Triton kernel
QUERY_MEAN_REDUCTIONS = ("mean", "mean", "max")  # one query row per question, a GEMV over chunks


class Reductions(Protocol):
    """What a routing call is asked to compute (``msa.model.RoutingOptions`` has these fields)."""

    cosine: bool
    head_reduce: str
    query_reduce: str
    chunk_reduce: str


def force_reference() -> bool:
    """Whether ``MSA_FORCE_REFERENCE`` is set (to anything but "" or "0")."""
    return os.environ.get(FORCE_REFERENCE_ENV, "0") not in ("", "0")


def use_triton(t: Tensor) -> bool:
    """Whether the Triton kernels serve tensors on t's device."""
    return not force_reference() and t.is_cuda and importlib.util.find_spec("triton") is not None


def per_doc_routing(options: Reductions) -> bool:
    """Whether the score is linear in the keys (head, query and chunk means): one routing row per document."""
    return options.head_reduce == "mean" and options.query_reduce == "mean" and options.chunk_reduce == "mean"


def fused_routing(options: Reductions) -> bool:
    """Whether the fused routing (prepared keys, ``msa.kernels.route_topk``) computes these reductions:
    head mean, chunk max, query max or mean; or all three means, one row per document."""
    return per_doc_routing(options) or (
        options.head_reduce == "mean" and options.chunk_reduce == "max"
        and options.query_reduce in FUSED_QUERY_REDUCE
    )  # fmt: skip


def kernel_applies(t: Tensor, head_reduce: str = "mean", query_reduce: str = "max", chunk_reduce: str = "max") -> bool:
    """Whether ``msa.kernels.route_docs`` runs the fused path (instead of the float32 reference) for raw
    keys on t's device: CUDA only, the Triton kernel's reductions (triton importable) or query mean."""
    reductions = (head_reduce, query_reduce, chunk_reduce)
    if reductions == QUERY_MEAN_REDUCTIONS:
        return t.is_cuda and not force_reference()
    return reductions == DEFAULT_REDUCTIONS and use_triton(t)


@dataclass(frozen=True)
class RoutingPrep:
    """How stored routing keys are prepared for the fused path: GEMM dtype, cosine normalisation, float8
    rescoring, and whether there is one row per document (``per_doc_routing``) or per chunk."""

    dtype: torch.dtype
    cosine: bool
    rescore: int = 0
    per_doc: bool = False

    @classmethod
    def choose(cls, routing_dtype: str, options: Reductions, device: torch.device,
               fp8_rescore: int = 4) -> "RoutingPrep | None":  # fmt: skip
        """The preparation for keys resident in ``routing_dtype`` ("bf16" | "fp8"), or None (the caller
        scores with the float32 reference instead).

        bfloat16 keys take the fused path on CUDA only (on the CPU the float32 reference, exact, serves);
        float8 keys on every device. With head, query and chunk means every device takes the
        per-document path; "bf16" then keeps float32 rows, exact up to rounding. Why: docs/decisions.md.
        """
        if routing_dtype not in ROUTING_DTYPES:
            raise ValueError(f"routing_dtype must be one of {tuple(ROUTING_DTYPES)}, got {routing_dtype!r}")
        if not fused_routing(options):
            if routing_dtype == "fp8":
                raise ValueError("routing_dtype='fp8' needs head mean with chunk max and query max or mean, "
                                 "or head, query and chunk means")  # fmt: skip
            return None
        per_doc = per_doc_routing(options)
        if routing_dtype == "bf16" and device.type != "cuda" and not per_doc:
            return None
        if fp8_rescore < 0:
            raise ValueError(f"fp8_rescore must be >= 0, got {fp8_rescore}")
        dtype = torch.float32 if per_doc and routing_dtype == "bf16" else ROUTING_DTYPES[routing_dtype]
        return cls(dtype, options.cosine, fp8_rescore if routing_dtype == "fp8" else 0, per_doc)


def route_topk(q_router: Tensor, keys: RoutingKeys, chunk_doc: Tensor, num_docs: int, k: int,
               query_mask: Tensor | None = None, cosine: bool | None = None, *,
               query_reduce: str = "max") -> tuple[Tensor, Tensor]:  # fmt: skip
    """Top-k documents of B questions over prepared keys (``doc_scores`` + ``select_docs`` of
    msa.functional, batched): the Triton kernel where ``use_triton``, else the PyTorch GEMM.

    Args:
        q_router: [B, Tq, Hq, D] router queries; questions padded to a common Tq.
        keys: ``prepare_routing_keys`` of the layer's pooled router keys [C, Hkv, D].
        chunk_doc: [C] int, owning document of every chunk, sorted.
        num_docs: N.
        k: documents to select.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine: must match the keys' preparation when given.
        query_reduce: "max" (the official default) or "mean" (one row per question,
            ``route_topk_rows``, on every device); heads are always averaged and chunks max-reduced.

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


def doc_scores_batched(q_router: Tensor, keys: RoutingKeys, chunk_doc: Tensor, num_docs: int,
                       query_mask: Tensor | None = None, cosine: bool | None = None) -> Tensor:  # fmt: skip
    """Document scores [B, N] float32 of B questions (``msa.functional.doc_scores`` batched).

    Args as ``route_topk``. Documents with no chunk, or questions with no token, get -inf.
    """
    if use_triton(keys.keys):
        from msa.kernels.routing import doc_scores_batched_triton

        return doc_scores_batched_triton(q_router, keys, chunk_doc, num_docs, query_mask, cosine)
    return doc_scores_batched_torch(q_router, keys, chunk_doc, num_docs, query_mask, cosine)


def route_docs(q_router: Tensor, k_router: Tensor, chunk_doc: Tensor, num_docs: int, k: int,
               query_mask: Tensor | None = None, cosine: bool = True, *, head_reduce: HeadReduce = "mean",
               query_reduce: QueryReduce = "max", chunk_reduce: ChunkReduce = "max") -> tuple[Tensor, Tensor]:  # fmt: skip
    """``msa.functional.route_topk`` (same arguments and result layout) on the fastest backend:
    raw keys prepared in bfloat16 and routed by ``route_topk`` where ``kernel_applies``, else the
    float32 reference.

    Args:
        q_router: [B, Tq, Hq, D] router queries; k_router: [C, Hkv, D] raw pooled router keys;
        chunk_doc: [C] long; query_mask: [B, Tq] bool; reductions as ``msa.functional.doc_scores``.

    Returns:
        docs [B, k] long (-1 padded), scores [B, k] float32 (-inf padded). On the fused path the
        scores come from bfloat16 operands (relative error ~1e-2), on the reference path from float32.
    """
    if q_router.dim() != 4 or k_router.dim() != 3:
        raise ValueError(f"q_router must be [B, Tq, Hq, D] and k_router [C, Hkv, D], got {tuple(q_router.shape)}, {tuple(k_router.shape)}")
    if not kernel_applies(k_router, head_reduce, query_reduce, chunk_reduce):
        return MF.route_topk(q_router, k_router, chunk_doc, num_docs, k, query_mask, cosine,
                             head_reduce=head_reduce, query_reduce=query_reduce, chunk_reduce=chunk_reduce)  # fmt: skip
    keys = prepare_routing_keys(k_router, cosine, torch.bfloat16)
    return route_topk(q_router.to(k_router.device), keys, chunk_doc, num_docs, k, query_mask, cosine,
                      query_reduce=query_reduce)  # fmt: skip
