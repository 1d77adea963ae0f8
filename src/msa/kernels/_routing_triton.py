"""Triton kernels of routing. Imported lazily: triton is not a dependency of the package.

Keys are the A operand (BC chunks x BK), the question tokens the B operand (BK x BN); the score
tile [BC, BN] never leaves registers: the epilogue takes the max over each question's tokens, then the
streaming top-k. A (score, document) pair travels as one int64 key: the high 32 bits are the score
mapped to an order-preserving int32, the low 32 bits are 0xFFFFFFFF - document, so max() picks the best
score and, among equal scores, the lower document, exactly as a stable descending sort does.
"""

import triton
import triton.language as tl

# Below every real key; its low 32 bits (1) name no real document.
SENTINEL: tl.constexpr = tl.constexpr(-0x7FFFFFFFFFFFFFFF)


@triton.jit
def _tile_chunk_max(
    q_ptr, bias_ptr, qscale_ptr, k_tile, kscale_ptr, offs_c, mask_c, group,
    K: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    QPB: tl.constexpr, GPQ: tl.constexpr, FP8: tl.constexpr,
):
    """[BC, QPB] max over each question's tokens of the scores of BC chunks (rows of k_tile)."""
    TPB: tl.constexpr = BN // QPB
    offs_k = tl.arange(0, BK)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, BC)
    best = tl.full([BC, QPB], float("-inf"), tl.float32)
    for s in range(GPQ):
        rows = (group * GPQ + s) * BN + offs_n  # [BN] rows of the padded query matrix
        acc = tl.zeros([BC, BN], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + offs_k
            kmask = kk < K
            kt = tl.load(k_tile + offs_t[:, None] * K + kk[None, :], mask=mask_c[:, None] & kmask[None, :], other=0.0)
            qt = tl.load(q_ptr + rows[:, None] * K + kk[None, :], mask=kmask[None, :], other=0.0)
            acc = tl.dot(kt, tl.trans(qt), acc)
        if FP8:
            ks = tl.load(kscale_ptr + offs_c, mask=mask_c, other=0.0)
            qs = tl.load(qscale_ptr + rows)
            acc = acc * ks[:, None] * qs[None, :]
        bias = tl.load(bias_ptr + rows)  # 0 or -inf per token
        acc = acc + bias[None, :]
        best = tl.maximum(best, tl.max(tl.reshape(acc, [BC, QPB, TPB]), axis=2))
    return best


@triton.jit
def _ordered(score):
    """float32 -> int32 with the same order (-0.0 first made +0.0 so that it ties with 0.0)."""
    score = tl.where(score == 0.0, 0.0, score)
    bits = score.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def route_tiles_kernel(
    q_ptr, bias_ptr, qscale_ptr, k_ptr, kscale_ptr, doc_ptr, state_ptr,
    C, tiles_per_prog, n_groups, B_pad,
    K: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    QPB: tl.constexpr, GPQ: tl.constexpr, KP: tl.constexpr, K_TOP: tl.constexpr, FP8: tl.constexpr,
):
    """Persistent pass over tiles of BC chunks; per program and question a running top-k of keys.

    state: [programs, B_pad, KP] int64, written by the program's first tile. A document may span
    tiles: each tile offers the max over its own chunks; the best key of every document wins because a
    document's entries are knocked out together once its best one is taken.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_r = tl.arange(0, KP)
    offs_q = tl.arange(0, QPB)
    low_mask = tl.full([1], 0xFFFFFFFF, tl.int64)
    state_base = state_ptr + pid.to(tl.int64) * B_pad * KP
    for j in range(0, tiles_per_prog):
        c0 = (pid + j * nprog) * BC
        offs_c = c0 + tl.arange(0, BC)
        mask_c = offs_c < C
        k_tile = k_ptr + c0.to(tl.int64) * K
        docs = tl.load(doc_ptr + offs_c, mask=mask_c, other=0).to(tl.int64)
        low = low_mask - docs  # [BC]
        for g in range(n_groups):
            cm = _tile_chunk_max(
                q_ptr, bias_ptr, qscale_ptr, k_tile, kscale_ptr, offs_c, mask_c, g,
                K, BC, BN, BK, QPB, GPQ, FP8,
            )
            key = (_ordered(cm).to(tl.int64) << 32) | low[:, None]  # [BC, QPB]
            key = tl.where(mask_c[:, None], key, SENTINEL)
            sp = state_base + (g * QPB + offs_q)[None, :] * KP + offs_r[:, None]  # [KP, QPB]
            st = tl.load(sp, mask=j > 0, other=SENTINEL)  # the first tile starts from an empty state
            # Rows are kept best first, so row K_TOP-1 is the k-th best: a tile whose best key is
            # below it for every question changes nothing and skips the selection.
            kth = tl.min(tl.where(offs_r[:, None] < K_TOP, st, -SENTINEL), axis=0)  # [QPB]
            gain = tl.max((tl.max(key, axis=0) > kth).to(tl.int32), axis=0)
            if (gain > 0) | (j == 0):
                new = tl.full([KP, QPB], SENTINEL, tl.int64)
                for i in range(K_TOP):
                    m = tl.maximum(tl.max(key, axis=0), tl.max(st, axis=0))  # [QPB]
                    new = tl.where(offs_r[:, None] == i, m[None, :], new)
                    d = (m << 32)[None, :]
                    key = tl.where((key << 32) == d, SENTINEL, key)
                    st = tl.where((st << 32) == d, SENTINEL, st)
                tl.debug_barrier()
                tl.store(sp, new)
                tl.debug_barrier()


@triton.jit
def merge_topk_kernel(
    state_ptr, docs_ptr, scores_ptr, n_cand, B_pad, k,
    KP: tl.constexpr, K_TOP: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per question: top-k over every program's candidates, then decode keys.

    docs: [B, k] int64 (-1 where no finite score), scores: [B, k] float32 (-inf there).
    """
    b = tl.program_id(0)
    offs_r = tl.arange(0, KP)
    offs = tl.arange(0, BLOCK)
    low_mask = tl.full([1], 0xFFFFFFFF, tl.int64)
    run = tl.full([KP], SENTINEL, tl.int64)
    for j0 in range(0, n_cand, BLOCK):
        j = j0 + offs
        ptrs = state_ptr + (j // KP).to(tl.int64) * B_pad * KP + b * KP + j % KP
        key = tl.load(ptrs, mask=j < n_cand, other=SENTINEL)
        kth = tl.min(tl.where(offs_r < K_TOP, run, -SENTINEL), axis=0)
        if tl.max(key, axis=0) > kth:  # most blocks hold nothing better than the k-th best: skip them
            new = tl.full([KP], SENTINEL, tl.int64)
            for i in range(K_TOP):
                m = tl.maximum(tl.max(key, axis=0), tl.max(run, axis=0))
                new = tl.where(offs_r == i, m, new)
                key = tl.where((key << 32) == (m << 32), SENTINEL, key)
                run = tl.where((run << 32) == (m << 32), SENTINEL, run)
            run = new
    ordered = (run >> 32).to(tl.int32)
    score = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(tl.float32, bitcast=True)
    doc = low_mask - (run & low_mask)
    valid = (run != SENTINEL) & (score > float("-inf"))
    out = offs_r < k
    tl.store(docs_ptr + b * k + offs_r, tl.where(valid, doc, -1), mask=out)
    tl.store(scores_ptr + b * k + offs_r, tl.where(valid, score, float("-inf")), mask=out)


@triton.jit
def doc_scores_kernel(
    q_ptr, bias_ptr, qscale_ptr, k_ptr, kscale_ptr, doc_ptr, out_ptr,
    C, tiles_per_prog, n_groups, B, N,
    K: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    QPB: tl.constexpr, GPQ: tl.constexpr, FP8: tl.constexpr,
):
    """Document scores as order-preserving int32 in out [B, N] (pre-filled with ordered(-inf)) by atomic max."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_q = tl.arange(0, QPB)
    for j in range(0, tiles_per_prog):
        c0 = (pid + j * nprog) * BC
        offs_c = c0 + tl.arange(0, BC)
        mask_c = offs_c < C
        k_tile = k_ptr + c0.to(tl.int64) * K
        docs = tl.load(doc_ptr + offs_c, mask=mask_c, other=0).to(tl.int64)
        for g in range(n_groups):
            cm = _tile_chunk_max(
                q_ptr, bias_ptr, qscale_ptr, k_tile, kscale_ptr, offs_c, mask_c, g,
                K, BC, BN, BK, QPB, GPQ, FP8,
            )
            qi = g * QPB + offs_q
            ptrs = out_ptr + qi.to(tl.int64)[None, :] * N + docs[:, None]
            tl.atomic_max(ptrs, _ordered(cm), mask=mask_c[:, None] & (qi < B)[None, :])


@triton.jit
def prepare_queries_kernel(
    q_ptr, mask_ptr, out_ptr, bias_ptr, qscale_ptr,
    B, Tq, stride_b, stride_t, stride_h, tq_pad, inv_hq, raw_scale,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, HKV_P: tl.constexpr, D_P: tl.constexpr,
    COSINE: tl.constexpr, HAS_MASK: tl.constexpr, FP8: tl.constexpr,
):
    """One padded token row: (1/Hq) * per-group sum of normalised (or 1/sqrt(D)-scaled) heads.

    out: [b_pad*tq_pad, HKV*D] (bf16/fp32, or fp8 divided by qscale); bias: 0 or -inf per row.
    """
    r = tl.program_id(0)
    b = r // tq_pad
    t = r % tq_pad
    live = (b < B) & (t < Tq)
    offs_h = tl.arange(0, HKV_P)
    offs_d = tl.arange(0, D_P)
    m2 = (offs_h[:, None] < HKV) & (offs_d[None, :] < D) & live
    acc = tl.zeros([HKV_P, D_P], dtype=tl.float32)
    base = q_ptr + b.to(tl.int64) * stride_b + t * stride_t
    for g in range(G):
        x = tl.load(base + (offs_h * G + g)[:, None] * stride_h + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        if COSINE:
            x = x / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)[:, None]
        else:
            x = x * raw_scale
        acc += x
    acc = acc * inv_hq
    ok = live
    if HAS_MASK:
        ok = ok & (tl.load(mask_ptr + b * Tq + t, mask=live, other=0) != 0)
    tl.store(bias_ptr + r, tl.where(ok, 0.0, float("-inf")))
    out = out_ptr + r.to(tl.int64) * (HKV * D) + offs_h[:, None] * D + offs_d[None, :]
    smask = (offs_h[:, None] < HKV) & (offs_d[None, :] < D)
    if FP8:
        scale = tl.maximum(tl.max(tl.max(tl.abs(acc), axis=1), axis=0), 1e-30) / 448.0
        tl.store(qscale_ptr + r, scale)
        tl.store(out, (acc / scale).to(out_ptr.dtype.element_ty), mask=smask)
    else:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=smask)
