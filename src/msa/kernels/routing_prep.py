"""Routing as one GEMM: the query and key matrices shared by the PyTorch and Triton routing paths.

The head mean of per-head cosines is linear in the normalised query, so for one router layer

    mean_h cos(q[t, h], k[c, kv(h)]) = Q[t, :] . K[c, :]

with Q[t] = (1/Hq) * (per-head-normalised q summed over each GQA group), flattened to Hkv*D, and
K[c] = per-head-normalised key flattened to Hkv*D. The raw-dot mode scales q by 1/sqrt(D) instead of
normalising (MSA_SPEC Part B 3.4). Keys are prepared once, when the bank is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_PREP_ROWS = 1 << 18  # rows converted at a time, bounding the float32 temporary


@dataclass(frozen=True)
class RoutingKeys:
    """One router layer's keys, laid out for routing as a GEMM.

    Attributes:
        keys: [C, Hkv*D] bfloat16, float8_e4m3fn or float32; per-head normalised when ``cosine``.
        scale: [C] float32 per-chunk dequantisation scale for float8 keys (key = keys[c] * scale[c]),
            else None. A per-row scale keeps raw (unnormalised) keys of very different norms exact to
            e4m3's 3 mantissa bits; it costs 4 bytes per 1 KB row at the MSA-4B shape.
        num_kv_heads: Hkv.
        head_dim: D.
        cosine: whether the keys were normalised (cosine routing) or kept raw (dot / sqrt(D)).
    """

    keys: Tensor
    scale: Tensor | None
    num_kv_heads: int
    head_dim: int
    cosine: bool

    @property
    def num_chunks(self) -> int:
        return self.keys.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes a routing pass must read: the key matrix and its scales."""
        n = self.keys.numel() * self.keys.element_size()
        if self.scale is not None:
            n += self.scale.numel() * self.scale.element_size()
        return n

    def to(self, device: torch.device | str) -> "RoutingKeys":
        """The same keys on ``device``."""
        scale = self.scale.to(device) if self.scale is not None else None
        return RoutingKeys(self.keys.to(device), scale, self.num_kv_heads, self.head_dim, self.cosine)


def prepare_routing_keys(
    k_router: Tensor, cosine: bool = True, dtype: torch.dtype = torch.bfloat16
) -> RoutingKeys:
    """Normalise (cosine mode) and flatten pooled router keys; quantise to float8 with a per-row scale.

    Args:
        k_router: [C, Hkv, D] pooled router keys, any float dtype.
        cosine: L2-normalise each head vector (cosine routing); else keep raw keys.
        dtype: torch.bfloat16, torch.float8_e4m3fn or torch.float32.

    Returns:
        RoutingKeys with keys [C, Hkv*D] of ``dtype`` and, for float8, scale [C] float32.
    """
    if dtype not in (torch.bfloat16, torch.float8_e4m3fn, torch.float32):
        raise ValueError(f"routing keys must be bfloat16, float8_e4m3fn or float32, not {dtype}")
    c, hkv, d = k_router.shape
    keys = torch.empty(c, hkv * d, dtype=dtype, device=k_router.device)
    scale = torch.empty(c, dtype=torch.float32, device=k_router.device) if dtype == torch.float8_e4m3fn else None
    for r0 in range(0, c, _PREP_ROWS):
        k = k_router[r0 : r0 + _PREP_ROWS].float()
        if cosine:
            k = F.normalize(k, dim=-1)
        k = k.reshape(k.shape[0], hkv * d)
        if scale is not None:
            s = k.abs().amax(dim=1).clamp_min(1e-30) / FP8_MAX
            scale[r0 : r0 + _PREP_ROWS] = s
            k = k / s[:, None]
        keys[r0 : r0 + _PREP_ROWS] = k.to(dtype)
    return RoutingKeys(keys, scale, hkv, d, cosine)


def prepare_doc_mean_keys(
    k_router: Tensor, chunk_doc: Tensor, num_docs: int, cosine: bool = True, dtype: torch.dtype = torch.float32
) -> RoutingKeys:
    """One routing row per document: the mean of its chunks' rows (for head, query and chunk means).

    With all three reductions means the document score is linear in the keys: the mean over the
    document's chunks c of (query row . K[c]) equals query row . (mean over c of K[c]). So a
    document routes as one row, exactly up to float rounding, and a routing pass reads one row per
    document instead of one per chunk. The mean is taken in float32 on ``k_router``'s device (in
    document order, so deterministic on the CPU), then stored in ``dtype``.

    Args:
        k_router: [C, Hkv, D] pooled router keys, any float dtype.
        chunk_doc: [C] long, owning document 0..num_docs-1 of every chunk.
        num_docs: N.
        cosine: L2-normalise every chunk's head vectors before the mean (cosine routing).
        dtype: torch.float32, torch.bfloat16 or torch.float8_e4m3fn (per-row scale).

    Returns:
        RoutingKeys with keys [N, Hkv*D]; a document with no chunk gets a zero row (the caller must
        keep it out of the selection).
    """
    c, hkv, d = k_router.shape
    if chunk_doc.numel() != c:
        raise ValueError(f"chunk_doc has {chunk_doc.numel()} entries for {c} chunks")
    chunk_doc = chunk_doc.to(device=k_router.device, dtype=torch.long)
    sums = torch.zeros(num_docs, hkv * d, dtype=torch.float32, device=k_router.device)
    for r0 in range(0, c, _PREP_ROWS):
        k = k_router[r0 : r0 + _PREP_ROWS].float()
        if cosine:
            k = F.normalize(k, dim=-1)
        sums.index_add_(0, chunk_doc[r0 : r0 + _PREP_ROWS], k.reshape(k.shape[0], hkv * d))
    counts = torch.bincount(chunk_doc, minlength=num_docs).clamp_min(1)
    mean = (sums / counts[:, None]).view(num_docs, hkv, d)
    rows = prepare_routing_keys(mean, cosine=False, dtype=dtype)  # already normalised per chunk: no second normalisation
    return RoutingKeys(rows.keys, rows.scale, hkv, d, cosine)


def router_query_matrix(q_router: Tensor, num_kv_heads: int, cosine: bool) -> Tensor:
    """Router queries as rows of the routing GEMM.

    Args:
        q_router: [B, Tq, Hq, D] router queries, any float dtype.
        num_kv_heads: Hkv; query head h pairs with kv head h // (Hq // Hkv).
        cosine: per-head L2 normalisation; else scale by 1/sqrt(D).

    Returns:
        [B, Tq, Hkv*D] float32: per GQA group the sum of the group's (normalised) heads, over Hq.
    """
    b, tq, hq, d = q_router.shape
    if num_kv_heads == 0 or hq % num_kv_heads:
        raise ValueError(f"query heads ({hq}) must be a multiple of key heads ({num_kv_heads})")
    q = q_router.float()
    q = F.normalize(q, dim=-1) if cosine else q * (1.0 / math.sqrt(d))
    q = q.view(b, tq, num_kv_heads, hq // num_kv_heads, d).sum(dim=3) / hq  # [B, Tq, Hkv, D]
    return q.reshape(b, tq, num_kv_heads * d)


def query_bias(query_mask: Tensor | None, b: int, tq: int, device: torch.device) -> Tensor:
    """Additive token mask: 0 for tokens taking part, -inf for the others.

    Args:
        query_mask: [B, Tq] bool or None (all tokens).

    Returns:
        [B, Tq] float32.
    """
    if query_mask is None:
        return torch.zeros(b, tq, device=device)
    if query_mask.shape != (b, tq):
        raise ValueError(f"query_mask shape {tuple(query_mask.shape)} != {(b, tq)}")
    zero = torch.zeros((), device=device)
    return torch.where(query_mask.to(device=device, dtype=torch.bool), zero, zero - math.inf)


def chunk_doc_from_offsets(doc_chunk_offsets: Tensor) -> Tensor:
    """Owning document of every chunk from document chunk offsets.

    Args:
        doc_chunk_offsets: [N+1] long, document i owns chunks offsets[i]..offsets[i+1]-1 (sorted).

    Returns:
        [C] int32 chunk_doc.
    """
    counts = doc_chunk_offsets[1:] - doc_chunk_offsets[:-1]
    docs = torch.arange(counts.numel(), device=doc_chunk_offsets.device, dtype=torch.int32)
    return torch.repeat_interleave(docs, counts)
