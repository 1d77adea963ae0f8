"""The graphed prefill (``msa.engine.graphed_prefill``): its padding equals the eager prefill on the
CPU; on CUDA its replays equal the eager prefill and the engine answers with it as without it."""

import copy

import pytest
import torch

from msa.engine import Engine
from msa.engine.generation import left_pad
from msa.engine.graphed_prefill import LENGTH_ROUND, GraphedPrefill, pad_left, padded_length
from msa.memory import MemoryBank
from tests.conftest import build_tiny_model
from tests.test_engine import DOCS, setup  # noqa: F401  (setup: the engine tests' tiny model and view)
from tests.test_static_decode import QUESTIONS

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batch(model, g):
    rows = [torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist() for n in (7, 12, 4)]
    ids, mask = left_pad(rows)
    qmask = mask.clone()
    qmask[:, -2:] = False  # the last tokens of every row do not route
    return ids, mask, qmask


def test_padded_length_and_pad_left():
    assert [padded_length(n) for n in (1, LENGTH_ROUND, LENGTH_ROUND + 1)] == [LENGTH_ROUND, LENGTH_ROUND, 2 * LENGTH_ROUND]
    ids, mask, qmask = pad_left(torch.tensor([[0, 5, 6]]), torch.tensor([[False, True, True]]),
                                torch.tensor([[False, True, False]]), 5)  # fmt: skip
    assert ids.tolist() == [[0, 0, 0, 5, 6]] and mask.tolist() == [[False, False, False, True, True]]
    assert qmask.tolist() == [[False, False, False, True, False]]
    with pytest.raises(ValueError, match="cannot pad"):
        pad_left(ids, mask, qmask, 4)


def test_padded_prefill_on_device_equals_prefill():
    """What a graph replays: ``prefill_on_device`` of the inputs padded further on the left, equal to the
    eager ``prefill`` (routing, last logits, the decoding after it)."""
    model = build_tiny_model()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(4, model.config.vocab_size, (int(n),), generator=g) for n in torch.randint(8, 40, (10,), generator=g)]
    memory = model.memory_access(model.encode(docs))
    prefix = model.encode_prefix([1, 2, 3])
    ids, mask, qmask = _batch(model, g)
    ref = model.prefill(ids, mask, qmask, memory=memory, prefix=prefix, last_only=True, keep_carry=True)
    length = padded_length(ids.shape[1])
    out = model.prefill_on_device(*pad_left(ids, mask, qmask, length), memory, prefix, model.config.msa.query_offset,
                                  True, model.config.msa.top_k, True)  # fmt: skip
    for layer in ref.routings:
        assert torch.equal(ref.routings[layer].docs, out.routings[layer].docs)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.cache.next_position, ref.cache.next_position)
    step = torch.tensor([[5], [6], [7]])
    torch.testing.assert_close(model.decode(step, out.cache), model.decode(step, ref.cache), atol=1e-5, rtol=1e-5)


def test_graphed_prefill_needs_cuda(setup):
    tok, model, view = setup
    with pytest.raises(ValueError, match="CUDA"):
        Engine(model, tok, view, device="cpu", graphed_prefill=True)
    assert Engine(model, tok, view, device="cpu")._graphed is None


@pytest.mark.gpu
@gpu
def test_graphed_prefill_equals_eager_gpu(tmp_path, setup):
    """Over a bank snapshot made resident on the device: replays (captured once per shape and snapshot)
    equal the eager prefill, and the engine answers with graphed prefills as without them."""
    tok, model, _ = setup
    model = copy.deepcopy(model).to("cuda")
    with MemoryBank.create(tmp_path / "b", model, tok, device="cuda") as bank:
        bank.add(DOCS)
    with MemoryBank.open(tmp_path / "b", model, tok, device="cuda") as bank:
        snap = bank.snapshot().make_resident()
        assert snap.on_device(model.router_layers) and bank.snapshot() is snap
        graphed = GraphedPrefill(model)
        g = torch.Generator().manual_seed(1)
        for keep in (False, True):
            ids, mask, qmask = _batch(model, g)
            ref = model.prefill(ids, mask, qmask, memory=snap, prefix=bank.prefix, last_only=True, keep_carry=keep)
            for _ in range(2):  # captured, then replayed
                out, length = graphed.prefill(snap, ids, mask, qmask, bank.prefix, model.config.msa.top_k, keep)
                assert length == padded_length(ids.shape[1])
                for layer in ref.routings:
                    assert torch.equal(ref.routings[layer].docs.cpu(), out.routings[layer].docs.cpu())
                torch.testing.assert_close(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
        assert graphed.captures == 2
        answers = []
        for opts in ({}, {"graphed_prefill": False}):
            engine = Engine(model, tok, bank, **opts)
            answers.append([a.transcript for a in engine.ask_batch(QUESTIONS, max_rounds=3, max_new_tokens=16)])
            answers[-1] += [engine.ask(q, max_rounds=3, max_new_tokens=16).transcript for q in QUESTIONS[:2]]
            if not opts:
                assert engine._graphed is not None and engine._graphed.captures > 0
        assert answers[0] == answers[1]
