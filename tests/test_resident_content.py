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
            assert rk.shape[1] == docs.shape[1] * resident._resident.max_doc_chunks
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
