"""Routing with ``query_reduce="mean"`` on the fused path: one pre-reduced query row per question.

The reference is ``msa.functional.doc_scores(..., query_reduce="mean")`` + ``select_docs`` in float64.
float32 prepared keys give the exact top-k; bfloat16 / float8 keys give scores within a relative
tolerance (stated once in TOL) and the same set wherever the reference gap at the k-th score exceeds it.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ROUTING_TEXTS, routing_case, build_tiny_model, build_tiny_tokenizer
from msa.functional import doc_scores, select_docs
from msa.kernels import RoutingPrep, kernel_applies, prepare_routing_keys, route_docs, route_topk_rows, router_query_rows
from msa.kernels import route_topk as kernel_route_topk
from msa.memory import BankSnapshot, LoadedSegment, MemoryBank
from msa.memory.catalog import DocRow
from msa.model.memory import DenseMemoryAccess, RoutingOptions

MEAN = {"head_reduce": "mean", "query_reduce": "mean", "chunk_reduce": "max"}
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float8_e4m3fn: 6e-2}  # relative to the score scale
SHAPES = [(1, 1, 8, 2, 16, 300), (4, 7, 6, 3, 12, 61), (3, 63, 4, 2, 60, 301)]  # B, Tq, Hq, Hkv, D, C




def _reference_scores(q, k, chunk_doc, n, mask, cosine=True):
    """[B, N] float32 reference scores (doc_scores computes in float32)."""
    return torch.stack([doc_scores(q[i].double(), k.double(), chunk_doc, n, mask[i], cosine, **MEAN) for i in range(q.shape[0])])


def _check(docs, scores, ref, kk, tol, scale=None):
    """docs/scores [B, kk] against reference scores [B, N]; tol relative to ``scale`` [B] (default the
    largest |score| of the question)."""
    for i in range(ref.shape[0]):
        want = select_docs(ref[i], kk)
        got = docs[i][docs[i] >= 0]
        assert got.numel() == want.numel()
        assert (docs[i][got.numel() :] == -1).all() and (scores[i][got.numel() :] == float("-inf")).all()
        if want.numel() == 0:
            continue
        finite = ref[i][torch.isfinite(ref[i])]
        atol = tol * float(finite.abs().max() if scale is None else scale[i])
        torch.testing.assert_close(scores[i][: got.numel()].double(), ref[i][got].double(), atol=atol, rtol=0)
        srt = torch.sort(finite, descending=True).values
        if srt.numel() <= kk or srt[kk - 1] - srt[kk] > 2 * atol:
            assert set(got.tolist()) == set(want.tolist())
        if tol <= TOL[torch.float32]:
            assert got.tolist() == want.tolist()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("cosine", [True, False])
def test_mean_rows_match_reference(shape, dtype, cosine):
    q, k, chunk_doc, n, mask = routing_case(*shape, seed=shape[-1])
    keys = prepare_routing_keys(k, cosine, dtype)
    ref = _reference_scores(q, k, chunk_doc, n, mask, cosine)
    for kk in (1, 5, n + 3):
        docs, scores = kernel_route_topk(q, keys, chunk_doc, n, kk, mask, cosine, query_reduce="mean")
        assert docs.shape == (q.shape[0], kk) and scores.dtype == torch.float32
        _check(docs, scores, ref, kk, TOL[dtype])


def test_rows_are_the_masked_token_mean():
    q, _, _, _, mask = routing_case(3, 9, 4, 2, 8, 20, seed=3)
    rows, has = router_query_rows(q, 2, True, mask)
    assert rows.shape == (3, 16) and has.tolist() == [True, True, False]
    assert torch.equal(rows[2], torch.zeros(16))
    from msa.kernels import router_query_matrix

    full = router_query_matrix(q, 2, True)
    torch.testing.assert_close(rows[0], full[0][mask[0]].mean(0))


def test_no_routing_token_selects_nothing():
    q, k, chunk_doc, n, _ = routing_case(2, 5, 4, 2, 8, 40, seed=5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 2] = True
    for dtype in (torch.float32, torch.float8_e4m3fn):
        docs, scores = kernel_route_topk(q, prepare_routing_keys(k, True, dtype), chunk_doc, n, 4, mask,
                                         query_reduce="mean")  # fmt: skip
        assert (docs[0] >= 0).all() and (docs[1] == -1).all() and (scores[1] == float("-inf")).all()


def test_ties_go_to_the_lower_document():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(6, 2, 8, generator=g)
    k[5] = k[1]  # document 5 (chunk 5) ties document 1 exactly
    k[3] = k[1]
    chunk_doc = torch.arange(6)
    q = k[1].repeat(2, 1).view(1, 1, 4, 8)  # the query is the tied key: the tied documents win
    docs, scores = route_topk_rows(*router_query_rows(q, 2, True)[:1], prepare_routing_keys(k, True, torch.float32),
                                   chunk_doc, 6, 3)  # fmt: skip
    assert docs[0].tolist() == [1, 3, 5] and scores[0, 0] == scores[0, 2]


def test_functional_dispatch_mean():
    q, k, chunk_doc, n, mask = routing_case(4, 7, 6, 3, 12, 61, seed=1)
    assert not kernel_applies(k, **MEAN)  # CPU: the float32 reference
    docs, _ = route_docs(q, k, chunk_doc, n, 5, mask, **MEAN)
    ref = _reference_scores(q, k, chunk_doc, n, mask)
    assert docs.tolist() == [
        select_docs(r, 5).tolist() + [-1] * (5 - select_docs(r, 5).numel()) for r in ref
    ]


def _fake_snapshot(prep_dtype, dead, options):
    """Three segments of random routing keys (layer 3) with the given live documents and options."""
    g = torch.Generator().manual_seed(0)
    hkv, d, layer = 2, 8, 3
    segs, rows = [], []
    for si, n in enumerate([5, 1, 7]):
        counts = torch.randint(1, 4, (n,), generator=g)
        c = int(counts.sum())
        raw = torch.randn(c, hkv, d, generator=g)
        prepared = {layer: prepare_routing_keys(raw, True, prep_dtype)} if prep_dtype is not None else None
        segs.append(LoadedSegment(file=f"s{si}", routing={layer: raw}, keys={layer: raw}, values={layer: raw},
                                  chunk_doc=torch.repeat_interleave(torch.arange(n), counts),
                                  doc_chunk_start=torch.cumsum(counts, 0) - counts, num_docs=n, prepared=prepared))  # fmt: skip
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        for j in range(n):
            i = len(rows)
            rows.append(DocRow(i, None, "", 10, si, j, starts[j], int(counts[j]), i in dead))
    return BankSnapshot(segs, rows, {0: 0, 1: 1, 2: 2}, 0, options, torch.device("cpu"), tile_chunks=4), layer


@pytest.mark.parametrize("dead", [(), (1, 5, 6), (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)])
def test_snapshot_fused_mean_equals_tiled(dead):
    opts = RoutingOptions(query_reduce="mean")
    fused, layer = _fake_snapshot(torch.float32, dead, opts)
    tiled, _ = _fake_snapshot(None, dead, opts)
    assert fused.uses_fused_routing(layer) and not tiled.uses_fused_routing(layer)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 5, 4, 8, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[:, 0] = True
    mask[2] = False
    for k in (1, 3, 20):
        a, b = fused.route(layer, q, mask, k), tiled.route(layer, q, mask, k)
        assert torch.equal(a.docs, b.docs), (k, a.docs, b.docs)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
        assert (a.docs[2] == -1).all()
        assert not any(int(x) in dead for x in fused.ids(a.docs).flatten() if x >= 0)


def test_fp8_needs_supported_reductions():
    cpu = torch.device("cpu")
    assert RoutingPrep.choose("fp8", RoutingOptions(query_reduce="mean"), cpu).dtype == torch.float8_e4m3fn
    assert RoutingPrep.choose("bf16", RoutingOptions(query_reduce="mean"), cpu) is None  # exact tiled path on CPU
    means = RoutingOptions(query_reduce="mean", chunk_reduce="mean")  # linear: one row per document
    assert RoutingPrep.choose("bf16", means, cpu) == RoutingPrep(torch.float32, True, 0, per_doc=True)
    assert RoutingPrep.choose("fp8", means, cpu, fp8_rescore=3) == RoutingPrep(torch.float8_e4m3fn, True, 3, per_doc=True)
    for bad in ({"query_reduce": "last"}, {"head_reduce": "max"}, {"query_reduce": "max", "chunk_reduce": "mean"}):
        with pytest.raises(ValueError):
            RoutingPrep.choose("fp8", RoutingOptions(**bad), cpu)


def test_bank_fp8_mean_model_routes(tmp_path):
    model, tok = build_tiny_model(query_reduce_method="mean"), build_tiny_tokenizer()
    assert model.routing_options().query_reduce == "mean"
    bank = MemoryBank.create(tmp_path / "b", model, tok, segment_tokens=600, tile_chunks=16)
    bank.add(ROUTING_TEXTS)
    deleted = [2, 11, 30]
    bank.delete(deleted)
    bank.close()
    fp8 = MemoryBank.open(tmp_path / "b", model, tok, routing_dtype="fp8", fp8_rescore=0)  # plain fp8 selection
    exact = MemoryBank.open(tmp_path / "b", model, tok, routing_dtype="bf16")
    snap, ref_snap = fp8.snapshot(), exact.snapshot()
    assert len(snap.segments) > 1
    mem = snap.materialize()
    live = torch.ones(mem.num_docs, dtype=torch.bool)
    dense = DenseMemoryAccess(mem, snap.options, live)
    g = torch.Generator().manual_seed(0)
    for layer in model.router_layers:
        assert snap.uses_fused_routing(layer) and not ref_snap.uses_fused_routing(layer)
        keys, _ = snap.routing_keys(layer)
        assert keys.keys.dtype == torch.float8_e4m3fn and keys.scale is not None
        q = torch.randn(3, 6, 4, 16, generator=g)
        mask = torch.rand(3, 6, generator=g) < 0.7
        mask[:, 0] = True
        mask[2] = False
        for k in (4, 50):
            got = snap.route(layer, q, mask, k)
            ref = prepare_routing_keys(mem.layers[layer].routing_keys, True, torch.float8_e4m3fn)
            want, _ = route_topk_rows(*router_query_rows(q, 2, True, mask)[:1], ref, mem.chunk_doc, mem.num_docs, k,
                                      router_query_rows(q, 2, True, mask)[1])  # fmt: skip
            assert torch.equal(got.docs, want)
            ids = snap.ids(got.docs)
            assert not (set(ids.flatten().tolist()) & set(deleted))
            assert (got.docs[2] == -1).all() and (got.scores[2] == float("-inf")).all()
            # against the exact float32 routing: scores within the float8 tolerance of |Q row| |K row|
            exact_scores = _reference_scores(q, mem.layers[layer].routing_keys.float(), mem.chunk_doc, mem.num_docs, mask)
            scale = router_query_rows(q, 2, True, mask)[0].norm(dim=1) * 2**0.5  # cosine keys: |K row| = sqrt(Hkv)
            _check(got.docs, got.scores, exact_scores, k, TOL[torch.float8_e4m3fn], scale)
            assert torch.equal(ref_snap.route(layer, q, mask, k).docs, dense.route(layer, q, mask, k).docs)
    # a prefill through the fp8 bank works end to end
    ids = tok("Where was Alice 3 born?", add_special_tokens=False)["input_ids"]
    model.prefill(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.bool), memory=snap)
    fp8.close()
    exact.close()


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_fp8_with_exact_rescoring_equals_exact_routing(tmp_path, reduce):
    """fp8 candidates (rescore * k) scored again from the raw keys: when the candidates cover every
    document the result is exactly the float32 routing; otherwise it is a subset of the candidates."""
    model, tok = build_tiny_model(query_reduce_method=reduce), build_tiny_tokenizer()
    bank = MemoryBank.create(tmp_path / "b", model, tok, segment_tokens=600)
    bank.add(ROUTING_TEXTS)
    bank.delete([5])
    bank.close()
    fp8 = MemoryBank.open(tmp_path / "b", model, tok, routing_dtype="fp8")  # default fp8_rescore=4
    snap = fp8.snapshot()
    dense = DenseMemoryAccess(snap.materialize(), snap.options)
    g = torch.Generator().manual_seed(1)
    for layer in model.router_layers:
        q = torch.randn(2, 5, 4, 16, generator=g)
        mask = torch.ones(2, 5, dtype=torch.bool)
        k_all = -(-snap.num_docs // 4)  # 4 * k >= N: every document is a candidate
        got, want = snap.route(layer, q, mask, k_all), dense.route(layer, q, mask, k_all)
        assert torch.equal(got.docs, want.docs) and torch.allclose(got.scores, want.scores)
        small = snap.route(layer, q, mask, 3)
        plain = MemoryBank.open(tmp_path / "b", model, tok, routing_dtype="fp8", fp8_rescore=0).snapshot()
        cand = plain.route(layer, q, mask, 12).docs
        assert all(set(small.docs[b].tolist()) <= set(cand[b].tolist()) for b in range(2))
    fp8.close()
