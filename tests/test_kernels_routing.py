"""Routing kernels against msa.functional.doc_scores / select_docs.

Tolerances (absolute, relative to the largest |reference score| of the case):
  float32 keys (PyTorch GEMM formulation): 1e-5
  bfloat16 keys and queries:               1e-2
  float8 e4m3 keys and queries:            6e-2
Selected sets must equal the reference wherever the reference gap at the k-th document exceeds twice
the tolerance; the kernel's top-k must equal, exactly, select_docs over the kernel's own doc scores.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from msa.functional import doc_scores, select_docs
from msa.kernels import (
    chunk_doc_from_offsets,
    doc_scores_batched_torch,
    prepare_routing_keys,
    route_topk,
    route_topk_torch,
    router_query_matrix,
    topk_docs,
    use_triton,
)

RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float8_e4m3fn: 6e-2}
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _bank(num_chunks: int, max_len: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """chunk_doc [C] (sorted, documents of 1..max_len chunks) and N."""
    lens = torch.randint(1, max_len + 1, (num_chunks,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    n = int((offsets < num_chunks).sum())
    offsets = offsets[: n + 1].clone()
    offsets[-1] = num_chunks
    return chunk_doc_from_offsets(offsets), n


def _case(b, tq, hq, hkv, d, c, max_len, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, tq, hq, d, generator=gen)
    k = torch.randn(c, hkv, d, generator=gen)
    chunk_doc, n = _bank(c, max_len, gen)
    mask = torch.rand(b, tq, generator=gen) > 0.3
    mask[:, -1] = True
    return q.to(device), k.to(device), chunk_doc.to(device), n, mask.to(device)


def _reference(q, k, chunk_doc, n, mask, cosine):
    """[B, N] float32 via msa.functional.doc_scores (upcast inputs), one question at a time."""
    return torch.stack(
        [doc_scores(q[i].double(), k.double(), chunk_doc.long(), n, mask[i], cosine) for i in range(q.shape[0])]
    )


def _check_selection(docs, scores, ref, k, tol):
    """Selected sets equal the reference where the gap at the k-th position exceeds 2*tol."""
    for i in range(ref.shape[0]):
        want = select_docs(ref[i], k)
        got = docs[i][docs[i] >= 0]
        assert got.numel() == want.numel()
        assert torch.isfinite(scores[i][: got.numel()]).all()
        assert (scores[i][got.numel() :] == float("-inf")).all()
        if want.numel() == 0:
            continue
        torch.testing.assert_close(scores[i][: got.numel()], ref[i][got].float(), atol=tol, rtol=0)
        srt = torch.sort(ref[i][torch.isfinite(ref[i])], descending=True).values
        if srt.numel() <= k or srt[k - 1] - srt[k] > 2 * tol:
            assert set(got.tolist()) == set(want.tolist())


# ---------------------------------------------------------------- CPU: the GEMM formulation


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("hq,hkv", [(8, 8), (8, 4), (8, 2), (16, 2)])
def test_gemm_formulation_equals_head_mean(cosine, hq, hkv):
    q, k, chunk_doc, n, mask = _case(3, 7, hq, hkv, 24, 61, 5, seed=hq * 10 + hkv)
    keys = prepare_routing_keys(k, cosine, torch.float32)
    got = doc_scores_batched_torch(q, keys, chunk_doc, n, mask)
    ref = _reference(q, k, chunk_doc, n, mask, cosine)
    scale = ref[torch.isfinite(ref)].abs().max()
    torch.testing.assert_close(got, ref.float(), atol=RTOL[torch.float32] * scale, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("cosine", [True, False])
def test_route_topk_torch_matches_select_docs(dtype, cosine):
    q, k, chunk_doc, n, mask = _case(4, 13, 8, 2, 32, 300, 9, seed=7)
    mask[2] = False  # a question with no token: no finite score, all -1
    keys = prepare_routing_keys(k, cosine, dtype)
    docs, scores = route_topk_torch(q, keys, chunk_doc, n, 16, mask, cosine)
    ref = _reference(q, k, chunk_doc, n, mask, cosine)
    scale = ref[torch.isfinite(ref)].abs().max()
    _check_selection(docs, scores, ref, 16, float(RTOL[dtype] * scale))
    assert (docs[2] == -1).all()


def test_route_topk_torch_pads_when_few_documents():
    q, k, chunk_doc, n, mask = _case(2, 3, 4, 4, 16, 5, 2, seed=3)
    docs, scores = route_topk_torch(q, prepare_routing_keys(k), chunk_doc, n, 8, mask)
    assert docs.shape == (2, 8) and (docs[:, n:] == -1).all() and (scores[:, n:] == float("-inf")).all()


def test_ties_go_to_lower_document():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(4, 2, 16, generator=gen).repeat(5, 1, 1)  # every key five times: 20 chunks
    chunk_doc = torch.arange(20) // 2  # ten documents of two chunks, equal scores in pairs
    q = torch.randn(1, 2, 4, 16, generator=gen)
    keys = prepare_routing_keys(k, True, torch.float32)
    docs, _ = route_topk_torch(q, keys, chunk_doc, 10, 10)
    ref = doc_scores(q[0], k, chunk_doc, 10)
    assert docs[0].tolist() == select_docs(ref, 10).tolist()


@pytest.mark.parametrize("k", [1, 7, 256])
def test_topk_docs_long_rows_equal_a_stable_sort(k):
    """Long CPU rows select through topk + a sort of the candidates: the same as a full stable sort,
    ties (many here: scores on a coarse grid) towards the lower index, -inf never before a finite score."""
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 50, (3, 40_000), generator=g).float()
    scores[1, ::3] = float("-inf")
    scores[2, k // 2 :] = float("-inf")  # fewer finite scores than k in the last row (when k > 1)
    docs, vals = topk_docs(scores, k)
    finite = torch.isfinite(scores)
    for r in range(3):
        order = torch.sort(scores[r], descending=True, stable=True).indices[:k]
        want = torch.where(finite[r, order], order, torch.full_like(order, -1))
        assert torch.equal(docs[r], want), r
        torch.testing.assert_close(vals[r], scores[r, order])


def test_fp8_keys_keep_three_mantissa_bits():
    k = torch.randn(100, 4, 32) * torch.logspace(-3, 3, 100)[:, None, None]
    for cosine in (True, False):
        keys = prepare_routing_keys(k, cosine, torch.float8_e4m3fn)
        back = keys.keys.float() * keys.scale[:, None]
        want = prepare_routing_keys(k, cosine, torch.float32).keys
        err = (back - want).abs() / want.abs().amax(dim=1, keepdim=True)
        assert err.max() < 1 / 16


def test_router_query_matrix_shape_and_offsets():
    q = torch.randn(2, 3, 8, 16)
    assert router_query_matrix(q, 2, True).shape == (2, 3, 32)
    offsets = torch.tensor([0, 2, 3, 7])
    assert chunk_doc_from_offsets(offsets).tolist() == [0, 0, 1, 2, 2, 2, 2]


def test_dispatch_uses_torch_on_cpu_and_when_forced(monkeypatch):
    q, k, chunk_doc, n, mask = _case(2, 3, 4, 2, 16, 40, 4, seed=1)
    keys = prepare_routing_keys(k, True, torch.float32)
    assert not use_triton(keys.keys)
    docs, _ = route_topk(q, keys, chunk_doc, n, 4, mask)
    assert docs.tolist() == route_topk_torch(q, keys, chunk_doc, n, 4, mask)[0].tolist()
    monkeypatch.setenv("MSA_FORCE_REFERENCE", "1")
    assert not use_triton(torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------- Triton interpreter (tiny)


def _patch_interpreter_index():
    """Triton 3.6's interpreter calls int() on one-element arrays, which numpy >= 2.4 refuses."""
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor
    if getattr(orig, "msa_patched", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.msa_patched = True
    interpreter._patch_lang_tensor = patched


@pytest.mark.skipif(not (HAS_TRITON and INTERPRET), reason="needs triton and TRITON_INTERPRET=1")
@pytest.mark.parametrize("b,tq,k,cosine", [(1, 1, 4, True), (3, 5, 5, False), (2, 20, 3, True)])
def test_triton_interpreter_tiny(b, tq, k, cosine):
    from msa.kernels.routing import KernelConfig, doc_scores_batched_triton, route_topk_triton

    _patch_interpreter_index()
    # bf16 dot is not emulated by the interpreter: float32 keys exercise the same program.
    config = KernelConfig(block_c=16, block_k=16, block_n_max=16, programs_per_sm=2)
    q, k_router, chunk_doc, n, mask = _case(b, tq, 4, 2, 16, 150, 20, seed=b * 7 + tq)
    keys = prepare_routing_keys(k_router, cosine, torch.float32)
    poison = (torch.full((b, k), -7, dtype=torch.long), torch.full((b, k), float("nan")))
    docs, scores = route_topk_triton(q, keys, chunk_doc, n, k, mask, config=config, out=poison)
    own = doc_scores_batched_triton(q, keys, chunk_doc, n, mask, config=config)
    ref = _reference(q, k_router, chunk_doc, n, mask, cosine)
    torch.testing.assert_close(own, ref.float(), atol=1e-5, rtol=0)
    for i in range(b):
        want = select_docs(own[i], k)
        assert docs[i, : want.numel()].tolist() == want.tolist()
        assert torch.equal(scores[i, : want.numel()], own[i][want])


# ---------------------------------------------------------------- GPU

GPU_CASES = [
    # b, tq, hq, hkv, d, chunks, max doc chunks, cosine, key dtype, k
    (1, 1, 32, 8, 128, 15_600, 100, True, torch.bfloat16, 16),
    (3, 5, 8, 8, 64, 1_000, 3, False, torch.bfloat16, 16),
    (2, 64, 8, 4, 128, 5_003, 100, True, torch.float8_e4m3fn, 16),
    (8, 17, 16, 4, 64, 4_097, 20, True, torch.bfloat16, 20),
    (32, 1, 32, 8, 128, 20_000, 100, True, torch.float8_e4m3fn, 16),
    (4, 300, 32, 4, 128, 3_001, 50, False, torch.float8_e4m3fn, 16),
    (4, 300, 32, 4, 128, 3_001, 50, False, torch.bfloat16, 1),
    (5, 130, 8, 1, 32, 777, 1, True, torch.bfloat16, 16),
    (2, 33, 4, 2, 48, 999, 7, True, torch.bfloat16, 16),
    (2, 33, 4, 2, 48, 999, 7, False, torch.float8_e4m3fn, 16),
    (4, 64, 32, 8, 128, 200_000, 100, True, torch.bfloat16, 16),
    (6, 9, 32, 8, 128, 40, 3, True, torch.bfloat16, 32),  # fewer documents than k
    (3, 12, 8, 2, 32, 300_000, 24, True, torch.bfloat16, 256),  # a wide named lookup (Engine lookup_k)
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_triton_route_topk_gpu(case):
    from msa.kernels.routing import doc_scores_batched_triton, route_topk_triton

    b, tq, hq, hkv, d, c, max_len, cosine, dtype, k = case
    q, k_router, chunk_doc, n, mask = _case(b, tq, hq, hkv, d, c, max_len, seed=c + tq, device="cuda")
    if b > 2:
        mask[1] = False  # a question with no token
    keys = prepare_routing_keys(k_router, cosine, dtype)
    own = doc_scores_batched_triton(q, keys, chunk_doc, n, mask, cosine)
    ref = _reference(q, k_router, chunk_doc, n, mask, cosine)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(own), finite)
    scale = float(ref[finite].abs().max()) if finite.any() else 1.0
    tol = RTOL[dtype] * scale
    torch.testing.assert_close(own[finite], ref[finite].float(), atol=tol, rtol=0)
    for _ in range(2):  # twice: a race would move the result
        poison = (torch.full((b, k), -7, dtype=torch.long, device="cuda"), torch.full((b, k), float("nan"), device="cuda"))
        docs, scores = route_topk_triton(q, keys, chunk_doc, n, k, mask, cosine, out=poison)
        assert (docs >= -1).all() and not torch.isnan(scores).any()
        for i in range(b):  # exact against the kernel's own document scores
            want = select_docs(own[i], k)
            assert docs[i, : want.numel()].tolist() == want.tolist()
            assert torch.equal(scores[i, : want.numel()], own[i][want])
            assert (docs[i, want.numel() :] == -1).all()
        _check_selection(docs, scores, ref, k, tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_triton_ties_and_spanning_documents_gpu(dtype):
    from msa.kernels.routing import doc_scores_batched_triton, route_topk_triton

    gen = torch.Generator().manual_seed(5)
    base = torch.randn(50, 8, 128, generator=gen)
    k_router = base.repeat(400, 1, 1).cuda()  # 20000 chunks, every key 400 times: many exact ties
    lens = torch.randint(1, 101, (20_000,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    n = int((offsets < 20_000).sum())
    offsets = offsets[: n + 1].clone()
    offsets[-1] = 20_000
    chunk_doc = chunk_doc_from_offsets(offsets).cuda()
    q = torch.randn(3, 4, 32, 128, generator=gen).cuda()
    keys = prepare_routing_keys(k_router, True, dtype)
    docs, scores = route_topk_triton(q, keys, chunk_doc, n, 16)
    own = doc_scores_batched_triton(q, keys, chunk_doc, n)
    for i in range(3):
        assert docs[i].tolist() == select_docs(own[i], 16).tolist()
    # Documents of >= 50 chunks hold every key, so the best score ties across many documents.
    assert (scores[:, 0] == scores[:, 15]).all()


@pytest.mark.gpu
@needs_cuda
def test_dispatch_picks_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("MSA_FORCE_REFERENCE", raising=False)
    assert use_triton(torch.zeros(1, device="cuda")) == HAS_TRITON
