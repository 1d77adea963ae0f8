"""A snapshot whose content K/V are resident on the compute device fetches (on the device, fixed
layout) the same chunks as the host path, and prefill over it equals prefill over the host tier."""

from __future__ import annotations

import pytest
import torch

from msa.memory import MemoryBank
from tests.test_bank import make_texts, queries


@pytest.mark.parametrize("routing_dtype", [None, "fp8"])
def test_resident_fetch_and_prefill_equal_host(tmp_path, tiny_model, tiny_tokenizer, routing_dtype):
    with MemoryBank.create(tmp_path / "b", tiny_model, tiny_tokenizer, batch_tokens=300, segment_tokens=400) as bank:
        bank.add(make_texts(20, seed=2))
        bank.delete([3, 11])
    opts = {"routing_dtype": routing_dtype} if routing_dtype else {}
    with MemoryBank.open(tmp_path / "b", tiny_model, tiny_tokenizer, **opts) as bank:
        host, resident = bank.snapshot(), bank.snapshot().make_resident()
        assert len(host.segments) > 1
        docs = torch.tensor([[5, -1, 0, 9], [-1, -1, -1, -1], [17, 2, 2, -1]])
        for layer in tiny_model.config.router_layers:
            (hk, hv, hok), (rk, rv, rok) = host.fetch(layer, docs), resident.fetch(layer, docs)
            assert rk.shape[1] == docs.shape[1] * resident._resident.max_doc_chunks  # type: ignore[union-attr]
            for row in range(docs.shape[0]):  # the same chunks, in the same order, then padding
                assert torch.equal(hk[row][hok[row]], rk[row][rok[row]])
                assert torch.equal(hv[row][hok[row]], rv[row][rok[row]])
                assert rok[row].tolist() == sorted(rok[row].tolist(), reverse=True)
        x, m = queries(tiny_model)
        a = tiny_model.prefill(x, m, memory=host, prefix=bank.prefix)
        b = tiny_model.prefill(x, m, memory=resident, prefix=bank.prefix)
        for layer in tiny_model.config.router_layers:
            assert torch.equal(a.routings[layer].docs, b.routings[layer].docs.cpu())
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_fp8_resident_content_is_within_its_rounding(tmp_path, tiny_model, tiny_tokenizer):
    """float8 content with per-chunk scales: every value within half a float8 step of the chunk's
    largest magnitude (e4m3: 3 mantissa bits), and half the bytes of bfloat16 plus the scales."""
    from msa.memory.resident import to_fp8

    g = torch.Generator().manual_seed(0)
    t = torch.randn(50, 2, 16, generator=g) * torch.rand(50, 1, 1, generator=g) * 10
    q, scale = to_fp8(t)
    back = q.float() * scale[:, None, None]
    amax = t.abs().amax(dim=(1, 2), keepdim=True)
    assert bool(((back - t).abs() <= amax / 16 + 1e-6).all())
    assert q.dtype == torch.float8_e4m3fn and q.element_size() == 1
    with MemoryBank.create(tmp_path / "b", tiny_model, tiny_tokenizer, segment_tokens=400) as bank:
        bank.add(make_texts(16, seed=4))
        host, fp8 = bank.snapshot(), bank.snapshot().make_resident(torch.float8_e4m3fn)
        docs = torch.tensor([[1, 4, -1], [7, 0, 2]])
        for layer in tiny_model.config.router_layers:
            (hk, hv, hok), (fk, fv, fok) = host.fetch(layer, docs), fp8.fetch(layer, docs)
            for row in range(2):
                for a, b in ((hk, fk), (hv, fv)):
                    ref = a[row][hok[row]]
                    bound = ref.abs().amax(dim=(1, 2), keepdim=True) / 16 + 1e-6
                    assert fok[row].sum() == hok[row].sum() and bool(((b[row][fok[row]] - ref).abs() <= bound).all())
        with pytest.raises(ValueError, match="float8_e4m3fn"):  # nor any other dtype
            bank.snapshot().make_resident(torch.float16)
