"""The memory bank's CUDA tiers: device routing keys, pinned content, side-stream fetch. Skipped without CUDA."""

import pytest
import torch

from conftest import assert_same_routing, build_tiny_model, build_tiny_tokenizer
from msa.engine import Engine
from msa.memory import MemoryBank
from msa.model import DenseMemoryAccess

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TEXTS = [f"Document {i}: Alice {i} was born in Paris and works as a chemist number {i * 7}." * (1 + i % 4) for i in range(60)]


def _route_both(snap, dense, layer: int, g: torch.Generator, k: int):
    """The same random bfloat16 router queries (3 questions, 9 tokens) routed by the bank and the dense reference."""
    q = torch.randn(3, 9, 4, 16, generator=g).to("cuda", torch.bfloat16)
    mask = torch.rand(3, 9, generator=g) < 0.7
    mask[:, 0] = True
    return snap.route(layer, q, mask.cuda(), k), dense.route(layer, q, mask.cuda(), k)


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_bank_on_cuda_equals_dense(tmp_path, tier):
    tok = build_tiny_tokenizer()
    model = build_tiny_model().to("cuda", torch.bfloat16)
    bank = MemoryBank.create(tmp_path / "b", model, tok, segment_tokens=1500, tile_chunks=40)
    bank.add(TEXTS)
    bank.close()
    bank = MemoryBank.open(tmp_path / "b", model, tok, device="cuda", content_tier=tier)
    snap = bank.snapshot()
    dense = DenseMemoryAccess(snap.materialize(), model.routing_options())
    g = torch.Generator().manual_seed(0)
    for layer in model.router_layers:
        a, b = _route_both(snap, dense, layer, g, 4)
        # bfloat16 queries: the kernel and the dense reference round their sums differently (one bf16
        # step of a score ~0.3 is 2e-3), so near-tied documents may swap
        assert_same_routing(a, b, score_tol=2e-3)
        ka, va, ma = snap.fetch(layer, a.docs)
        kb, vb, mb = dense.fetch(layer, a.docs)
        assert ka.is_cuda and torch.equal(ka.cpu(), kb.cpu()) and torch.equal(va.cpu(), vb.cpu())
        assert torch.equal(ma.cpu(), mb.cpu())
    ans = Engine(model, tok, bank).ask("Where was Alice 3 born?", max_new_tokens=4, return_routing=True)
    assert set(ans.rounds[0].routing) == set(model.router_layers)
    bank.close()


def test_mean_routing_bank_on_cuda_equals_dense(tmp_path):
    """A model routing with head, query and chunk means: one float32 row per document on the device,
    the same documents as the dense reference over every chunk."""
    tok = build_tiny_tokenizer()
    model = build_tiny_model(query_reduce_method="mean", chunk_reduce_method="mean").to("cuda", torch.bfloat16)
    with MemoryBank.create(tmp_path / "b", model, tok, segment_tokens=1500) as bank:
        bank.add(TEXTS)
        bank.delete([5, 17])
    with MemoryBank.open(tmp_path / "b", model, tok, device="cuda") as bank:
        snap = bank.snapshot()
        dense = DenseMemoryAccess(snap.materialize("cuda"), model.routing_options())
        g = torch.Generator().manual_seed(0)
        for layer in model.router_layers:
            keys, _ = snap.routing_keys(layer)
            assert keys.keys.is_cuda and keys.keys.dtype == torch.float32 and keys.num_chunks == len(TEXTS)
            a, b = _route_both(snap, dense, layer, g, 8)
            assert torch.equal(a.docs.cpu(), b.docs.cpu())
            torch.testing.assert_close(a.scores.cpu(), b.scores.cpu(), rtol=1e-5, atol=1e-5)
