"""MemoryBank: disk round trip equals the in-memory path, delete/update/compact, bad inputs, corruption."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from msa.memory import (
    BankCorruptError,
    BankModelMismatch,
    DocumentTooLongError,
    DuplicateDocumentError,
    MemoryBank,
    UnknownDocumentError,
)
from msa.memory.encode import tokenize
from msa.model.memory import DenseMemoryAccess, RoutingOptions

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = int(torch.randint(3, 40, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
        out.append(f"Doc {i}: " + " ".join(words) + ".")
    return out


def queries(model, b: int = 3, t: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, :3] = False  # left padding in one row
    return ids, mask


def in_memory(model, tok, bank: MemoryBank, ids: list[int]):
    """The reference path: model.encode over the same formatted documents, resident."""
    seqs = [tokenize(tok, bank.prompt.format_document(i, bank.get_text(i))) for i in ids]
    mem = model.encode(seqs)
    mem.doc_ids = torch.tensor(ids)
    return mem


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add contention (milliseconds per op on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def bank(tmp_path, tiny_model, tiny_tokenizer):
    b = MemoryBank.create(tmp_path / "bank", tiny_model, tiny_tokenizer, batch_tokens=300, segment_tokens=400)
    yield b
    b.close()


def test_reopened_bank_equals_in_memory(tmp_path, tiny_model, tiny_tokenizer):
    """One encode batch, one segment: the reopened bank answers bitwise as model.encode's memory."""
    texts = make_texts(14)
    with MemoryBank.create(tmp_path / "bank", tiny_model, tiny_tokenizer) as bank:
        ids = bank.add(texts)
        assert ids == list(range(14)) and len(bank) == 14
    with MemoryBank.open(tmp_path / "bank", tiny_model, tiny_tokenizer) as again:
        snap = again.snapshot()
        order = snap.slot_to_id.tolist()  # the bank's order = its single encode batch
        assert sorted(order) == ids
        x, m = queries(tiny_model)
        out = tiny_model.prefill(x, m, memory=snap, prefix=again.prefix)
        ref_prefix = tiny_model.encode_prefix(tokenize(tiny_tokenizer, again.prompt.memory_prefix))
        ref = tiny_model.prefill(x, m, memory=in_memory(tiny_model, tiny_tokenizer, again, order), prefix=ref_prefix)
        for layer in tiny_model.config.router_layers:
            assert torch.equal(out.routings[layer].docs, ref.routings[layer].docs)
            assert torch.equal(out.routings[layer].scores, ref.routings[layer].scores)
        assert torch.equal(out.logits, ref.logits)


def test_many_segments_select_as_in_memory(bank, tiny_model, tiny_tokenizer):
    """Several encode batches and segments, reference in another document order: same documents
    (by id) per layer. Values agree to rounding only: model.encode is not bitwise batch-invariant
    on the CPU (padded batch shapes change the matmul summation order)."""
    ids = bank.add(make_texts(14))
    assert bank.stats()["segments"] > 1
    snap = bank.snapshot(tile_chunks=7)
    x, m = queries(tiny_model)
    out = tiny_model.prefill(x, m, memory=snap, prefix=bank.prefix)
    shuffled = list(reversed(ids))
    ref = tiny_model.prefill(x, m, memory=in_memory(tiny_model, tiny_tokenizer, bank, shuffled), prefix=bank.prefix)
    for layer in tiny_model.config.router_layers:
        assert torch.equal(snap.ids(out.routings[layer].docs), torch.tensor(shuffled)[ref.routings[layer].docs])
        torch.testing.assert_close(out.routings[layer].scores, ref.routings[layer].scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_reduce", ["max", "mean"])
@pytest.mark.parametrize("tier", ["host", "disk"])
def test_tiled_routing_equals_dense(tmp_path, tiny_model, tiny_tokenizer, tier, chunk_reduce):
    with MemoryBank.create(tmp_path / "b", tiny_model, tiny_tokenizer, segment_tokens=300, content_tier=tier) as bank:
        bank.add(make_texts(20, seed=1))
        bank.delete([3, 7])
        snap = bank.snapshot(tile_chunks=5)
        opts = RoutingOptions(chunk_reduce=chunk_reduce)
        snap.options = opts
        dense = DenseMemoryAccess(snap.materialize(), opts)
        g = torch.Generator().manual_seed(2)
        q = torch.randn(4, 6, 4, 16, generator=g)
        qm = torch.rand(4, 6, generator=g) > 0.3
        qm[:, -1] = True
        for layer in tiny_model.config.router_layers:
            for k in (1, 4, 30):
                r, rd = snap.route(layer, q, qm, k), dense.route(layer, q, qm, k)
                assert torch.equal(r.docs, rd.docs)
                torch.testing.assert_close(r.scores, rd.scores, rtol=1e-5, atol=1e-6)
                assert not torch.isin(snap.ids(r.docs), torch.tensor([3, 7])).any()
            fk, fd = snap.fetch(layer, r.docs), dense.fetch(layer, rd.docs)
            for a, b in zip(fk, fd):
                assert torch.equal(a, b)


@pytest.mark.parametrize("routing_dtype", ["bf16", "fp8"])
def test_mean_routing_keeps_one_row_per_document(tmp_path, tiny_tokenizer, routing_dtype):
    """A model routing with head, query and chunk means (as msa-bios-tiny): the bank keeps one routing
    row per document and selects as the reference that scores every chunk."""
    model = build_tiny_model(query_reduce_method="mean", chunk_reduce_method="mean")
    with MemoryBank.create(tmp_path / "b", model, tiny_tokenizer, segment_tokens=300) as bank:
        bank.add(make_texts(24, seed=3))
        bank.delete([4, 9])
    with MemoryBank.open(tmp_path / "b", model, tiny_tokenizer, routing_dtype=routing_dtype, fp8_rescore=8) as bank:
        snap = bank.snapshot()
        assert len(snap.segments) > 1 and all(s.per_doc for s in snap.segments)
        dense = DenseMemoryAccess(snap.materialize(), model.routing_options())
        g = torch.Generator().manual_seed(4)
        q = torch.randn(3, 7, 4, 16, generator=g)
        qm = torch.rand(3, 7, generator=g) > 0.3
        qm[:, 0] = True
        for layer in model.config.router_layers:
            assert snap.uses_fused_routing(layer)
            keys, slots = snap.routing_keys(layer)
            assert keys.num_chunks == 24 and int((slots < snap.num_docs).sum()) == 22
            for k in (1, 5, 40):
                r, rd = snap.route(layer, q, qm, k), dense.route(layer, q, qm, k)
                assert torch.equal(r.docs, rd.docs)
                torch.testing.assert_close(r.scores, rd.scores, rtol=1e-5, atol=1e-6)


def test_delete_update_compact(bank, tiny_model, tiny_tokenizer, monkeypatch):
    bank.add(make_texts(16, seed=3))
    x, m = queries(tiny_model, seed=4)
    layer = tiny_model.config.router_layers[0]
    snap = bank.snapshot()
    before = snap.ids(tiny_model.prefill(x, m, memory=snap, prefix=bank.prefix).routings[layer].docs)
    victim = int(before[0, 0])
    bank.delete(victim)
    with pytest.raises(UnknownDocumentError):
        bank.get_text(victim)
    assert len(bank) == 15
    snap = bank.snapshot()
    after = snap.ids(tiny_model.prefill(x, m, memory=snap, prefix=bank.prefix).routings[layer].docs)
    assert victim not in after.tolist()
    assert after[0, :3].tolist() == before[0, 1:].tolist()  # the rest keeps its order

    calls = []
    real_encode = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", lambda docs: calls.append([len(d) for d in docs]) or real_encode(docs))
    new_text = "An updated text about golf and hotel."
    bank.update(5, new_text)
    expected = len(tokenize(tiny_tokenizer, bank.prompt.format_document(5, new_text)))
    assert calls == [[expected]]
    assert bank.get_text(5) == new_text
    bank.update(5, new_text)  # same text: nothing re-encoded
    assert len(calls) == 1
    monkeypatch.undo()

    bank.delete([0, 1, 2])
    snap = bank.snapshot()
    out = tiny_model.prefill(x, m, memory=snap, prefix=bank.prefix)
    order = snap.slot_to_id.tolist()
    dense = DenseMemoryAccess(snap.materialize(), tiny_model.routing_options())
    ref = tiny_model.prefill(x, m, memory=dense, prefix=bank.prefix)
    assert torch.equal(out.logits, ref.logits)
    files_before = set((bank.path / "segments").iterdir())
    stats = bank.compact()
    assert stats["segments_after"] < stats["segments_before"]
    assert not (files_before & set((bank.path / "segments").iterdir())) or stats["segments_rewritten"] == 0
    bank.check()
    snap2 = bank.snapshot()
    assert snap2.slot_to_id.tolist() == order  # compaction keeps the document order
    out2 = tiny_model.prefill(x, m, memory=snap2, prefix=bank.prefix)
    assert torch.equal(out2.logits, out.logits)
    for i in out.routings:
        assert torch.equal(out2.routings[i].docs, out.routings[i].docs)
    assert bank.stats()["deleted"] == 0


def test_bad_inputs_store_nothing(bank, tiny_model, monkeypatch):
    bank.add(["first document.", "second document."], ids=[10, "b"])
    state = (len(bank), bank.generation)
    with pytest.raises(ValueError, match="empty"):
        bank.add(["ok", ""])
    with pytest.raises(ValueError, match="whitespace"):
        bank.add(["ok", " \n\t"])
    with pytest.raises(DuplicateDocumentError):
        bank.add(["x", "y"], ids=[1, 1])
    with pytest.raises(DuplicateDocumentError):
        bank.add(["new text", "other"], ids=[99, 10])
    with pytest.raises(DuplicateDocumentError):
        bank.add(["new text"], ids=["b"])
    with pytest.raises(UnknownDocumentError):
        bank.delete([10, 12345])
    with pytest.raises(UnknownDocumentError):
        bank.update(777, "text")
    with pytest.raises(UnknownDocumentError):
        bank.delete("nope")
    with pytest.raises(TypeError):
        bank.add("a string, not a list")
    with pytest.raises(TypeError):
        bank.add(["x"], ids=[-1])
    assert (len(bank), bank.generation) == state
    assert bank.get_text(10) == "first document."
    # Re-adding identical (id, text) pairs is a no-op that returns the ids.
    monkeypatch.setattr(tiny_model, "encode", lambda docs: pytest.fail("nothing should be encoded"))
    assert bank.add(["first document.", "second document."], ids=[10, "b"]) == [10, "b"]
    assert (len(bank), bank.generation) == state


def test_string_ids_and_jobs(bank):
    a = bank.add(["one.", "two."], ids=["x", "y"])
    assert bank.get_text("x") == "one." and a == ["x", "y"]
    internal_x = bank.resolve("x")
    texts = make_texts(5, seed=9)
    first = bank.add(texts, job="import-1")
    again = bank.add(texts, job="import-1")
    assert first == again and len(bank) == 7
    with pytest.raises(DuplicateDocumentError):
        bank.add(["changed"] + texts[1:], job="import-1")
    bank.delete("x")
    assert bank.add(["one again."], ids=["x"]) == [a[0]] and bank.resolve("x") == internal_x  # a string id keeps its integer id


def test_long_documents(tmp_path, tiny_model, tiny_tokenizer):
    long_text = " ".join(f"Sentence {i} is about {WORDS[i % len(WORDS)]}." for i in range(40))
    with MemoryBank.create(tmp_path / "s", tiny_model, tiny_tokenizer, max_doc_tokens=60) as bank:
        (pid,) = bank.add([long_text])
        n = len(bank)
        assert n > 3
        pieces = [i for i in bank.ids()]
        assert all(bank.parent(i) == pid for i in pieces if i != pid) and bank.parent(pid) is None
        assert all(bank.get_text(i) in long_text for i in pieces)
        stored = bank.snapshot().doc_lengths
        assert int(stored.max()) <= 60
        assert bank.add([long_text], ids=[pid]) == [pid] and len(bank) == n  # idempotent re-add
        bank.delete(pid)
        assert len(bank) == 0
    with MemoryBank.create(tmp_path / "e", tiny_model, tiny_tokenizer, max_doc_tokens=60, on_long="error") as bank:
        with pytest.raises(DocumentTooLongError):
            bank.add(["short one.", long_text])
        assert len(bank) == 0


def test_other_model_is_refused(bank, tiny_tokenizer):
    bank.add(["some text."])
    with pytest.raises(BankModelMismatch):
        MemoryBank.open(bank.path, build_tiny_model(seed=1), tiny_tokenizer)
    with MemoryBank.open(bank.path, readonly=True) as ro:  # no model: text and stats still readable
        assert ro.get_text(0) == "some text."


def test_truncated_segment_is_reported(bank, tiny_model, tiny_tokenizer):
    bank.add(make_texts(6))
    seg = next((bank.path / "segments").iterdir())
    seg.write_bytes(seg.read_bytes()[:-100])
    with pytest.raises(BankCorruptError, match=seg.name):
        bank.check()
    with MemoryBank.open(bank.path, tiny_model, tiny_tokenizer) as fresh:
        with pytest.raises(BankCorruptError, match=seg.name):
            fresh.snapshot()


def test_flipped_byte_is_reported(bank):
    bank.add(make_texts(3))
    seg = next((bank.path / "segments").iterdir())
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(BankCorruptError, match="checksum"):
        bank.check()


def test_orphans_are_ignored_and_removed(bank):
    bank.add(make_texts(3))
    orphan = bank.path / "segments" / "seg-deadbeef.safetensors"
    orphan.write_bytes(b"garbage")
    assert bank.check()["orphans"] == [orphan.name]
    assert bank.snapshot().num_docs == 3
    bank.add(make_texts(2, seed=5))
    assert not orphan.exists()


def test_engine_view(tmp_path, tiny_model, tiny_tokenizer):
    with MemoryBank.create(tmp_path / "v", tiny_model, tiny_tokenizer, model_source="tiny") as bank:
        bank.add(["one.", "two."])
        view = bank.snapshot()
        assert bank.snapshot() is view and view.slot_ids.tolist() == view.slot_to_id.tolist()
        assert view.text(1) == "two." and view.text(99) is None and bank.model_source == "tiny"
        bank.delete(0)
        assert bank.snapshot() is not view and bank.snapshot().slot_ids.tolist() == [1]
