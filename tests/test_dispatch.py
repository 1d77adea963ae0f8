"""msa.kernels.route_docs (kernel or reference dispatch) and the bank's fused routing path.

CPU: the dispatcher equals doc_scores + select_docs exactly; the bank's fused path (prepared keys,
one call for all questions, deleted documents behind a dummy slot) equals the dense reference on the
same keys. CUDA (skipped without): kernel results equal the reference wherever the reference gap at the
k-th document exceeds twice the bfloat16 / float8 tolerance of tests/test_kernels_routing.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ROUTING_TEXTS, routing_case, build_tiny_model, build_tiny_tokenizer
from msa.functional import doc_scores, select_docs
from msa.kernels import prepare_doc_mean_keys, prepare_routing_keys, route_docs, route_topk_torch
from msa.memory import BankSnapshot, LoadedSegment, MemoryBank
from msa.memory.catalog import DocRow
from msa.model.memory import DenseMemoryAccess, RoutingOptions

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.bfloat16: 1e-2, torch.float8_e4m3fn: 6e-2}




def _reference(q, k, chunk_doc, n, mask, kk, cosine=True, **red):
    docs = torch.full((q.shape[0], kk), -1, dtype=torch.long)
    for i in range(q.shape[0]):
        sc = doc_scores(q[i].double().cpu(), k.double().cpu(), chunk_doc.cpu(), n, mask[i].cpu(), cosine, **red)
        top = select_docs(sc, kk)
        docs[i, : top.numel()] = top
    return docs


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("red", [{}, {"head_reduce": "max"}, {"query_reduce": "mean", "chunk_reduce": "mean"}])
def test_dispatch_cpu_equals_reference(cosine, red):
    q, k, chunk_doc, n, mask = routing_case(4, 7, 6, 3, 12, 61, seed=1)
    docs, scores = route_docs(q, k, chunk_doc, n, 5, mask, cosine, **red)
    assert docs.shape == (4, 5) and scores.shape == (4, 5)
    assert torch.equal(docs, _reference(q, k, chunk_doc, n, mask, 5, cosine, **red))
    assert (docs[-1] == -1).all() and (scores[-1] == float("-inf")).all()
    assert torch.isfinite(scores[:-1]).all()
    # k beyond N: -1 padded
    docs, scores = route_docs(q, k, chunk_doc, n, n + 3, None, cosine, **red)
    assert (docs[:, n:] == -1).all() and (docs[:, :n] >= 0).all()


def _fake_snapshot(prep_dtype, seed=0, dead=(1, 5, 6), options=None):
    """Three segments of random routing keys; returns the snapshot and its router layer.

    prep_dtype: a dtype (keys prepared per chunk), "per_doc" (float32 document means) or None (tiled)."""
    options = options or RoutingOptions()
    g = torch.Generator().manual_seed(seed)
    hkv, d, layer = 2, 8, 3
    segs, rows = [], []
    for si, n in enumerate([5, 1, 7]):
        counts = torch.randint(1, 4, (n,), generator=g)
        c = int(counts.sum())
        chunk_doc = torch.repeat_interleave(torch.arange(n), counts)
        raw = torch.randn(c, hkv, d, generator=g)
        if prep_dtype == "per_doc":
            prepared = {layer: prepare_doc_mean_keys(raw, chunk_doc, n, options.cosine)}
        elif prep_dtype is not None:
            prepared = {layer: prepare_routing_keys(raw, options.cosine, prep_dtype)}
        else:
            prepared = None
        content = torch.randn(c, hkv, d, generator=g)
        segs.append(LoadedSegment(file=f"s{si}", routing={layer: raw}, keys={layer: content}, values={layer: content},
                                  chunk_doc=chunk_doc, doc_chunk_start=torch.cumsum(counts, 0) - counts, num_docs=n,
                                  prepared=prepared, per_doc=prep_dtype == "per_doc"))  # fmt: skip
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        for j in range(n):
            i = len(rows)
            rows.append(DocRow(i, None, "", 10, si, j, starts[j], int(counts[j]), i in dead))
    snap = BankSnapshot(segs, rows, {0: 0, 1: 1, 2: 2}, 0, options, torch.device("cpu"), tile_chunks=4)
    return snap, layer


@pytest.mark.parametrize("dead", [(), (1, 5, 6), (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)])
def test_bank_fused_path_equals_tiled(dead):
    fused, layer = _fake_snapshot(torch.float32, dead=dead)
    tiled, _ = _fake_snapshot(None, dead=dead)
    assert fused.uses_fused_routing(layer) and not tiled.uses_fused_routing(layer)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 5, 4, 8, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[:, 0] = True
    for k in (1, 3, 20):
        a, b = fused.route(layer, q, mask, k), tiled.route(layer, q, mask, k)
        assert torch.equal(a.docs, b.docs), (k, a.docs, b.docs)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    live = fused.ids(a.docs)
    assert not any(int(x) in dead for x in live.flatten() if x >= 0)
    keys, slots = fused.routing_keys(layer)
    assert keys.num_chunks == slots.numel()
    assert int((slots < fused.num_docs).sum()) == fused.num_chunks  # live chunks; the others are the dummy


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("dead", [(), (1, 5, 6), (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)])
def test_bank_per_doc_path_equals_tiled(dead, cosine):
    """Head, query and chunk means: one row per document (the mean of its chunks' keys) routes as the
    reference scores every chunk."""
    opts = RoutingOptions(cosine=cosine, query_reduce="mean", chunk_reduce="mean")
    per_doc, layer = _fake_snapshot("per_doc", dead=dead, options=opts)
    tiled, _ = _fake_snapshot(None, dead=dead, options=opts)
    assert per_doc.uses_fused_routing(layer) and not tiled.uses_fused_routing(layer)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 5, 4, 8, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[:, 0] = True
    mask[2] = False  # a question with no routing token selects nothing
    for k in (1, 3, 20):
        a, b = per_doc.route(layer, q, mask, k), tiled.route(layer, q, mask, k)
        assert torch.equal(a.docs, b.docs), (k, a.docs, b.docs)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert (a.docs[2] == -1).all()
    keys, slots = per_doc.routing_keys(layer)
    assert keys.num_chunks == slots.numel() == sum(s.num_docs for s in per_doc.segments)  # one row per document
    assert int((slots < per_doc.num_docs).sum()) == per_doc.num_docs


def _texts_bank(tmp_path, model, tok, **open_kw):
    bank = MemoryBank.create(tmp_path / "b", model, tok, segment_tokens=600, tile_chunks=16)
    bank.add(ROUTING_TEXTS)
    bank.delete([2, 11])
    bank.close()
    return MemoryBank.open(tmp_path / "b", model, tok, **open_kw)


def test_bank_fp8_cpu_equals_torch_gemm(tmp_path):
    """routing_dtype='fp8' on the CPU: the fused path through the PyTorch GEMM formulation."""
    model, tok = build_tiny_model(), build_tiny_tokenizer()
    bank = _texts_bank(tmp_path, model, tok, routing_dtype="fp8", fp8_rescore=0)  # plain fp8 selection
    snap = bank.snapshot()
    assert len(snap.segments) > 1
    mem = snap.materialize()
    g = torch.Generator().manual_seed(0)
    for layer in model.router_layers:
        assert snap.uses_fused_routing(layer)
        keys, _ = snap.routing_keys(layer)
        assert keys.keys.dtype == torch.float8_e4m3fn and keys.scale is not None
        assert all(s.prepared[layer].keys.data_ptr() >= keys.keys.data_ptr() for s in snap.segments)  # views
        q = torch.randn(3, 6, 4, 16, generator=g)
        mask = torch.ones(3, 6, dtype=torch.bool)
        got = snap.route(layer, q, mask, 4)
        ref = prepare_routing_keys(mem.layers[layer].routing_keys, True, torch.float8_e4m3fn)
        want, _ = route_topk_torch(q, ref, mem.chunk_doc, mem.num_docs, 4, mask)
        assert torch.equal(got.docs, want)
    bank.close()
    with pytest.raises(ValueError):
        MemoryBank.open(tmp_path / "b", model, tok, routing_dtype="int4")


# ------------------------------------------------------------------ CUDA


def _check(docs, scores, q, k, chunk_doc, n, mask, kk, tol):
    for i in range(q.shape[0]):
        ref = doc_scores(q[i].double().cpu(), k.double().cpu(), chunk_doc.cpu(), n, mask[i].cpu())
        want = select_docs(ref, kk)
        got = docs[i][docs[i] >= 0].cpu()
        assert got.numel() == want.numel()
        if want.numel() == 0:
            continue
        torch.testing.assert_close(scores[i][: got.numel()].cpu(), ref[got].float(), atol=tol, rtol=0)
        srt = torch.sort(ref[torch.isfinite(ref)], descending=True).values
        if srt.numel() <= kk or srt[kk - 1] - srt[kk] > 2 * tol:
            assert set(got.tolist()) == set(want.tolist())


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 8, 2, 16, 300), (3, 17, 32, 8, 128, 5000), (5, 64, 4, 4, 64, 2049)])
def test_dispatch_cuda_kernel(shape):
    b, tq, hq, hkv, d, c = shape
    q, k, chunk_doc, n, mask = routing_case(b, tq, hq, hkv, d, c, seed=c, device="cuda")
    docs, scores = route_docs(q.bfloat16(), k.bfloat16(), chunk_doc, n, 16, mask)
    assert docs.is_cuda
    _check(docs, scores, q.bfloat16().float(), k.bfloat16().float(), chunk_doc, n, mask, 16, TOL[torch.bfloat16])
    # other reductions stay on the reference path, on the GPU
    d2, _ = route_docs(q, k, chunk_doc, n, 4, mask, head_reduce="max")
    assert torch.equal(d2.cpu(), _reference(q, k, chunk_doc, n, mask, 4, head_reduce="max"))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_bank_cuda_fused(tmp_path, dtype):
    model, tok = build_tiny_model().to("cuda", torch.bfloat16), build_tiny_tokenizer()
    bank = _texts_bank(tmp_path, model, tok, device="cuda", routing_dtype=dtype)
    snap = bank.snapshot()
    mem = snap.materialize()
    tol = TOL[torch.bfloat16 if dtype == "bf16" else torch.float8_e4m3fn]
    g = torch.Generator().manual_seed(0)
    for layer in model.router_layers:
        assert snap.uses_fused_routing(layer)
        keys, _ = snap.routing_keys(layer)
        assert keys.keys.is_cuda and keys.keys.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float8_e4m3fn)
        assert not snap.segments[0].routing[layer].is_cuda  # raw keys stay on the host
        q = torch.randn(3, 9, 4, 16, generator=g)
        mask = torch.rand(3, 9, generator=g) < 0.7
        mask[:, 0] = True
        got = snap.route(layer, q.to("cuda", torch.bfloat16), mask.cuda(), 4)
        _check(got.docs, got.scores, q.bfloat16().float(), mem.layers[layer].routing_keys.float(), mem.chunk_doc,
               mem.num_docs, mask, 4, tol)  # fmt: skip
        dense = DenseMemoryAccess(mem, snap.options).route(layer, q, mask, 4)
        assert (got.docs >= 0).sum() == (dense.docs >= 0).sum()
    bank.close()
