"""Routing on the GPU: document scores and top-k of B questions in one pass over the keys (Triton).

``route_topk_triton`` reads every routing key once: a persistent grid of programs walks tiles of BC
chunks; for each tile the scores of all B*Tq question tokens come from one tensor-core GEMM, the max
over each question's tokens and the running top-k of (score, document) are taken in registers, and only
k candidates per program and question reach memory. A second small kernel merges them. Exact: the
result is the top-k of the kernel's own document scores, ties towards the lower document index.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from msa.kernels.routing_prep import RoutingKeys


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape of the routing kernel.

    block_c: chunks per tile (rows of the A operand); block_k: reduction step over Hkv*D;
    block_n_max: most question tokens per GEMM column block; programs_per_sm: persistent programs.
    """

    block_c: int = 128
    block_k: int = 64
    block_n_max: int = 128
    num_warps: int = 8
    num_stages: int = 3
    programs_per_sm: int = 2


DEFAULT_CONFIG = KernelConfig()
# float8 rows are half as long: larger tiles keep the per-tile epilogue small against the bytes read
# (docs/decisions.md).
DEFAULT_CONFIG_FP8 = KernelConfig(block_c=256, block_k=128, block_n_max=64, num_warps=8, num_stages=3)


def default_config(keys: RoutingKeys) -> KernelConfig:
    """Tile shape for the keys' dtype."""
    return DEFAULT_CONFIG_FP8 if keys.keys.dtype == torch.float8_e4m3fn else DEFAULT_CONFIG


@dataclass(frozen=True)
class _Layout:
    """How B questions of Tq tokens map onto GEMM column blocks of BN tokens."""

    tq_pad: int  # tokens per question after padding
    block_n: int  # BN
    qpb: int  # questions per column block (tq_pad <= BN)
    gpq: int  # column blocks per question (tq_pad > BN)
    n_groups: int  # column-block groups, each QPB questions
    b_pad: int  # n_groups * qpb


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _layout(b: int, tq: int, block_n_max: int) -> _Layout:
    qb = _next_pow2(b)
    tq_pad = _next_pow2(tq)
    if tq_pad <= block_n_max:
        tq_pad = max(tq_pad, 16 // min(qb, 16))  # tl.dot needs BN >= 16
        block_n = min(block_n_max, tq_pad * qb)
        qpb, gpq = block_n // tq_pad, 1
    else:
        block_n = block_n_max
        tq_pad = -(-tq // block_n) * block_n
        qpb, gpq = 1, tq_pad // block_n
    n_groups = -(-b // qpb)
    return _Layout(tq_pad, block_n, qpb, gpq, n_groups, n_groups * qpb)


def _kernel_queries(
    q_router: Tensor, keys: RoutingKeys, query_mask: Tensor | None, layout: _Layout
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded query matrix [b_pad*tq_pad, K] in the keys' GEMM dtype, token bias and per-row scale (float8).

    One launch (``prepare_queries_kernel``) rather than a dozen small PyTorch ops (docs/decisions.md).
    """
    from msa.kernels import _routing_triton as kern

    b, tq, hq, d = q_router.shape
    hkv = keys.num_kv_heads
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key heads ({hkv})")
    device = keys.keys.device
    q = q_router if q_router.stride(-1) == 1 else q_router.contiguous()
    rows = layout.b_pad * layout.tq_pad
    qm = torch.empty(rows, hkv * d, dtype=keys.keys.dtype, device=device)
    bias = torch.empty(rows, device=device)
    fp8 = keys.keys.dtype == torch.float8_e4m3fn
    qscale = torch.empty(rows, device=device) if fp8 else bias
    mask = query_mask.to(device=device, dtype=torch.bool) if query_mask is not None else bias
    if query_mask is not None and query_mask.shape != (b, tq):
        raise ValueError(f"query_mask shape {tuple(query_mask.shape)} != {(b, tq)}")
    kern.prepare_queries_kernel[(rows,)](
        q, mask, qm, bias, qscale,
        b, tq, q.stride(0), q.stride(1), q.stride(2), layout.tq_pad, 1.0 / hq, 1.0 / math.sqrt(d),
        HKV=hkv, G=hq // hkv, D=d, HKV_P=_next_pow2(hkv), D_P=_next_pow2(d),
        COSINE=keys.cosine, HAS_MASK=query_mask is not None, FP8=fp8, num_warps=4,
    )
    return qm, bias, qscale


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs(keys: RoutingKeys, num_tiles: int, config: KernelConfig) -> int:
    if keys.keys.is_cuda:
        sms = _sm_count(keys.keys.device.index if keys.keys.device.index is not None else torch.cuda.current_device())
    else:  # the Triton interpreter
        sms = 2
    return max(1, min(num_tiles, sms * config.programs_per_sm))


def _check(keys: RoutingKeys, q_router: Tensor, chunk_doc: Tensor, cosine: bool | None) -> None:
    if chunk_doc.numel() != keys.num_chunks:
        raise ValueError(f"chunk_doc has {chunk_doc.numel()} entries for {keys.num_chunks} chunks")
    if cosine is not None and cosine != keys.cosine:
        raise ValueError(f"cosine={cosine} but the keys were prepared with cosine={keys.cosine}")
    if q_router.shape[-1] != keys.head_dim:
        raise ValueError(f"router query head_dim {q_router.shape[-1]} != key head_dim {keys.head_dim}")


def _launch_args(keys: RoutingKeys, q_router: Tensor, query_mask: Tensor | None, config: KernelConfig):
    b, tq = q_router.shape[:2]
    layout = _layout(b, tq, config.block_n_max)
    qm, bias, qscale = _kernel_queries(q_router, keys, query_mask, layout)
    kscale = keys.scale if keys.scale is not None else bias
    num_tiles = -(-keys.num_chunks // config.block_c)
    return layout, qm, bias, qscale, kscale, num_tiles


def route_topk_triton(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    k: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
    config: KernelConfig | None = None,
    out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k documents of B questions in one pass over the keys.

    Args:
        q_router: [B, Tq, Hq, D] router queries (pad questions to a common Tq, mask the padding).
        keys: prepared routing keys, C chunks (bfloat16 or float8_e4m3fn with per-row scale).
        chunk_doc: [C] int32 (or long), owning document of every chunk, sorted (documents contiguous).
        num_docs: N (documents ids must be < N; N < 2**32 - 2).
        k: documents to select.
        query_mask: [B, Tq] bool, tokens taking part (default all).
        cosine: must match ``keys.cosine`` when given.
        out: optional (docs [B, k] int64, scores [B, k] float32) to write into.

    Returns:
        docs [B, k] long (-1 where fewer than k finite scores), scores [B, k] float32 (-inf there).
    """
    from msa.kernels import _routing_triton as kern

    _check(keys, q_router, chunk_doc, cosine)
    config = config or default_config(keys)
    b = q_router.shape[0]
    device = keys.keys.device
    layout, qm, bias, qscale, kscale, num_tiles = _launch_args(keys, q_router, query_mask, config)
    chunk_doc = chunk_doc.to(device=device, dtype=torch.int32)
    kp = _next_pow2(max(k, 1))
    programs = _num_programs(keys, num_tiles, config)
    state = torch.empty(programs, layout.b_pad, kp, dtype=torch.int64, device=device)
    if out is None:
        out = (torch.empty(b, k, dtype=torch.int64, device=device), torch.empty(b, k, device=device))
    docs, scores = out
    if k == 0:
        return docs, scores
    kdim = keys.keys.shape[1]
    kern.route_tiles_kernel[(programs,)](
        qm, bias, qscale, keys.keys, kscale, chunk_doc, state,
        keys.num_chunks, -(-num_tiles // programs), layout.n_groups, layout.b_pad,
        K=kdim, BC=config.block_c, BN=layout.block_n, BK=min(config.block_k, _next_pow2(kdim)),
        QPB=layout.qpb, GPQ=layout.gpq, KP=kp, K_TOP=k, FP8=keys.scale is not None,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    kern.merge_topk_kernel[(b,)](
        state, docs, scores, programs * kp, layout.b_pad, k,
        KP=kp, K_TOP=k, BLOCK=max(256, kp), num_warps=4,
    )
    return docs, scores


def doc_scores_batched_triton(
    q_router: Tensor,
    keys: RoutingKeys,
    chunk_doc: Tensor,
    num_docs: int,
    query_mask: Tensor | None = None,
    cosine: bool | None = None,
    config: KernelConfig | None = None,
) -> Tensor:
    """Document scores of B questions (same meaning as ``msa.functional.doc_scores`` per question).

    Args:
        q_router: [B, Tq, Hq, D]; keys: C chunks; chunk_doc: [C] int; query_mask: [B, Tq] bool.

    Returns:
        [B, N] float32; documents with no chunk, or questions with no token, get -inf.
    """
    from msa.kernels import _routing_triton as kern

    _check(keys, q_router, chunk_doc, cosine)
    config = config or default_config(keys)
    b = q_router.shape[0]
    device = keys.keys.device
    layout, qm, bias, qscale, kscale, num_tiles = _launch_args(keys, q_router, query_mask, config)
    chunk_doc = chunk_doc.to(device=device, dtype=torch.int32)
    neg_inf_bits = torch.tensor(-math.inf).view(torch.int32).item() ^ 0x7FFFFFFF
    out = torch.full((b, num_docs), neg_inf_bits, dtype=torch.int32, device=device)
    kdim = keys.keys.shape[1]
    programs = _num_programs(keys, num_tiles, config)
    kern.doc_scores_kernel[(programs,)](
        qm, bias, qscale, keys.keys, kscale, chunk_doc, out,
        keys.num_chunks, -(-num_tiles // programs), layout.n_groups, b, num_docs,
        K=kdim, BC=config.block_c, BN=layout.block_n, BK=min(config.block_k, _next_pow2(kdim)),
        QPB=layout.qpb, GPQ=layout.gpq, FP8=keys.scale is not None,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    bits = torch.where(out < 0, out ^ 0x7FFFFFFF, out)
    return bits.view(torch.float32)
