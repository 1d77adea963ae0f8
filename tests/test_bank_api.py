"""The bank's public contract (BANK_API.md): typed ids end to end, reports, idempotent add and delete,
whole documents, and one clear BankError for every fault (checksums, lost commits, locks)."""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
import threading

import pytest
import torch

from msa.memory import (
    BankCorruptError,
    BankError,
    BankExistsError,
    BankLockedError,
    DocumentPieceError,
    DuplicateDocumentError,
    InvalidIdError,
    LostCommitsError,
    MemoryBank,
    UnknownDocumentError,
)

LONG = "  Lead space.\n" + "  ".join(f"Sentence {i} is about the fox and the dog." for i in range(30)) + "\n\ntrailing  "


@pytest.fixture
def bank(tmp_path, tiny_model, tiny_tokenizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add contention
    b = MemoryBank.create(tmp_path / "bank", tiny_model, tiny_tokenizer, max_doc_tokens=60, model_source="tiny")
    yield b
    b.close()
    torch.set_num_threads(threads)


def test_ids_keep_their_type(bank):
    rep = bank.add_documents(["the string one.", "the int one."], ids=["123", 123])
    assert rep.ids == ["123", 123] and rep.added == 2 and bank.list_ids() == ["123", 123]
    assert bank.get_text("123") == "the string one." and bank.get_text(123) == "the int one."
    with pytest.raises(BankError, match='"str:123" or "int:123"'):
        bank.parse_id("123")
    assert bank.parse_id("str:123") == "123" and bank.parse_id("int:123") == 123
    with pytest.raises(UnknownDocumentError):
        bank.parse_id("999")
    assert bank.delete(123).deleted == [123]
    assert bank.list_ids() == ["123"] and bank.parse_id("int:123") == 123  # deleted ids are still named
    with pytest.raises(BankError, match="str:123"):  # (a re-run of the delete must not pick the other one)
        bank.parse_id("123")
    internal = bank.resolve("123")
    assert bank.user_id(internal) == "123"
    with pytest.raises(DuplicateDocumentError, match="string id '123'"):
        bank.add(["steals the string's internal id"], ids=[internal])
    for bad in (1.5, True, -1, [1], 2**63, ""):
        with pytest.raises(InvalidIdError):
            bank.add(["x."], ids=[bad])
        with pytest.raises(BankError):
            bank.delete([bad])
    assert isinstance(InvalidIdError("x"), TypeError)


def test_idempotent_add_and_delete(bank, tiny_model, monkeypatch):
    texts = ["alpha doc.", "bravo doc.", "charlie doc."]
    first = bank.add_documents(texts)
    assert first.ids == [0, 1, 2] and first.added == 3
    gen = bank.generation
    monkeypatch.setattr(tiny_model, "encode", lambda docs: pytest.fail("nothing should be encoded"))
    again = bank.add_documents(texts + ["alpha doc."])  # a re-run after a crash, plus a repeat
    assert again.ids == [0, 1, 2, 0] and again.added == 0 and again.unchanged == 4 and bank.generation == gen
    with pytest.raises(DuplicateDocumentError, match="document 1"):
        bank.add(["bravo doc."], on_duplicate="error")
    monkeypatch.undo()
    mixed = bank.add_documents(["delta doc.", "alpha doc."], ids=["d", None])  # only some lines have ids
    assert mixed.ids == ["d", 0] and mixed.added == 1 and mixed.unchanged == 1
    rep = bank.add_documents(["delta, replaced."], ids=["d"], on_duplicate="replace")
    assert rep.replaced == 1 and rep.added == 0 and bank.get_text("d") == "delta, replaced."
    with pytest.raises(DuplicateDocumentError):
        bank.add(["delta, again."], ids=["d"])

    rep = bank.delete([1, "d"])
    assert rep.deleted == [1, "d"] and rep.already_deleted == []
    gen = bank.generation
    rep = bank.delete([1, "d", 2])  # the re-run of a delete that committed
    assert rep.deleted == [2] and rep.already_deleted == [1, "d"]
    assert bank.delete([1]).already_deleted == [1] and bank.generation == gen + 1
    with pytest.raises(UnknownDocumentError):
        bank.delete([1, 777])
    bank.compact()
    assert bank.delete(1).already_deleted == [1]  # remembered after compaction too


def test_split_document_is_one_document(bank):
    rep = bank.add_documents(["short.", LONG], ids=["s", "long"])
    assert rep.split["long"] == rep.pieces > 2 and rep.ids == ["s", "long"]
    assert bank.get_text("long") == LONG  # pieces joined back exactly
    assert dict(bank.documents()) == {"s": "short.", "long": LONG}
    assert bank.stats()["documents"] == 2 and bank.stats()["slots"] == 1 + rep.pieces
    assert bank.stats()["model"] == "tiny"
    piece = next(i for i in bank.ids() if bank.parent(i) is not None)
    assert bank.user_id(piece) == "long" and bank.snapshot().user_id(piece) == "long"
    with pytest.raises(DocumentPieceError, match="'long'"):
        bank.delete(piece)
    with pytest.raises(DocumentPieceError, match="'long'"):
        bank.update(piece, "a new text.")
    assert bank.delete("long").deleted == ["long"] and len(bank) == 1  # every piece goes


def test_snapshot_serves_its_own_generation(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    path = tmp_path / "b"
    with MemoryBank.create(path, tiny_model, tiny_tokenizer, segment_tokens=30, content_tier="disk") as bank:
        bank.add([f"document number {i} about golf." for i in range(8)])
        snap = bank.snapshot()
        layer = tiny_model.config.router_layers[0]
        q, m = torch.randn(1, 4, 4, 16), torch.ones(1, 4, dtype=torch.bool)
        before = snap.fetch(layer, snap.route(layer, q, m, 3).docs)
        bank.delete([0, 1, 2, 3])
        assert bank.compact()["segments_rewritten"] > 0  # unlinks files the snapshot maps
        assert snap.text(0) == "document number 0 about golf." and bank.snapshot().text(0) is None
        after = snap.fetch(layer, snap.route(layer, q, m, 3).docs)
        assert all(torch.equal(a, b) for a, b in zip(before, after))

        # a compaction that commits and unlinks between the catalog read and the load
        other = MemoryBank.open(path, tiny_model, tiny_tokenizer)
        other.add([f"more text {i}." for i in range(6)])
        other.delete([4])
        fresh = MemoryBank.open(path, tiny_model, tiny_tokenizer, content_tier="disk")
        from msa.memory import access

        real, calls = access.LoadedSegment.load, []

        def racing(*a, **k):
            if not calls:
                calls.append("compacting")
                other.compact()
            return real(*a, **k)

        monkeypatch.setattr(access.LoadedSegment, "load", staticmethod(racing))
        snap = fresh.snapshot()
        assert calls and snap.num_docs == len(other) and snap.generation == other.generation
        other.close()
        fresh.close()


def _flip_text(path, needle: bytes) -> None:
    with sqlite3.connect(path / "catalog.sqlite") as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray((path / "catalog.sqlite").read_bytes())
    at = data.index(needle)
    data[at + 2] ^= 0x01
    (path / "catalog.sqlite").write_bytes(bytes(data))


def test_flipped_catalog_text_is_detected(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "b"
    with MemoryBank.create(path, tiny_model, tiny_tokenizer) as bank:
        bank.add(["Alice was born in paris.", "Bob lives in Berlin."])
    _flip_text(path, b"born in paris")
    with MemoryBank.open(path, tiny_model, tiny_tokenizer) as bank:
        with pytest.raises(BankCorruptError, match="catalog.sqlite.*text of document 0"):
            bank.get_text(0)
        assert bank.get_text(1) == "Bob lives in Berlin."
        with pytest.raises(BankCorruptError, match="text of document 0"):
            bank.snapshot().text(0)
        with pytest.raises(BankCorruptError, match="catalog.sqlite"):
            bank.check()


def test_truncated_catalog_names_the_file(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "b"
    with MemoryBank.create(path, tiny_model, tiny_tokenizer) as bank:
        bank.add(["some text."])
    cat = path / "catalog.sqlite"
    cat.write_bytes(cat.read_bytes()[:2048])
    with pytest.raises(BankCorruptError, match="catalog.sqlite"):
        MemoryBank.open(path, readonly=True).stats()


def test_lost_wal_refuses_to_sweep(tmp_path, tiny_model, tiny_tokenizer):
    path, copy = tmp_path / "b", tmp_path / "copy"
    bank = MemoryBank.create(path, tiny_model, tiny_tokenizer)
    bank.add(["one."])
    bank.add(["two."])  # both commits still in catalog.sqlite-wal: the connection is open
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    bank.close()
    files = sorted((copy / "segments").iterdir())
    with MemoryBank.open(copy, tiny_model, tiny_tokenizer) as lost:
        assert len(lost) == 0
        with pytest.raises(LostCommitsError, match="write-ahead log .*was lost"):
            lost.add(["three."])
        with pytest.raises(LostCommitsError):
            lost.check()
        assert sorted((copy / "segments").iterdir()) == files  # nothing swept
        assert len(lost.accept_lost_commits()) == 2
        assert lost.add(["three."]) == [0] and lost.check()["orphans"] == []


def test_writer_lock_wait_names_the_holder(bank, caplog):
    with open(bank.path / "writer.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        bank.lock_timeout_s = 1.5
        with caplog.at_level(logging.WARNING), pytest.raises(BankLockedError, match="writer.lock.*gave up"):
            bank.add(["blocked."])
        assert "waiting for another writer" in caplog.text
        fcntl.flock(f, fcntl.LOCK_UN)
    assert bank.add(["free."]) == [0]


def test_delete_uses_indexes(tmp_path, tiny_model, tiny_tokenizer):
    with MemoryBank.create(tmp_path / "b", tiny_model, tiny_tokenizer) as bank:
        bank.add([f"doc {i}." for i in range(20)], ids=[f"k{i}" for i in range(20)])
        statements: list[str] = []
        bank.catalog._conn.set_trace_callback(statements.append)
        bank.delete(["k1", "k5", "k7"])
        bank.catalog._conn.set_trace_callback(None)
        plans = []
        with sqlite3.connect(bank.path / "catalog.sqlite") as c:
            c.create_function("msa_crc", -1, lambda *a: "")
            for s in statements:
                if s.split()[0].upper() in ("SELECT", "UPDATE", "INSERT") and "documents" in s:
                    plans += [r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + s)]
        assert plans and not [p for p in plans if p.startswith("SCAN d")], plans


def test_concurrent_create_is_one_clear_error(tmp_path, tiny_model, tiny_tokenizer):
    errors, made = [], []

    def create():
        try:
            made.append(MemoryBank.create(tmp_path / "same", tiny_model, tiny_tokenizer))
        except BankError as e:
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(errors) == 2 and all(isinstance(e, BankExistsError) for e in errors)
    made[0].close()


def test_snapshot_checks_places_against_segments(tmp_path, tiny_model, tiny_tokenizer):
    """A row whose checksum is right but whose chunk range disagrees with its segment file (a bug, or
    an edit with the checksum function) is refused when a snapshot is taken, naming the document."""
    from msa.memory.catalog_schema import row_crc

    path = tmp_path / "b"
    with MemoryBank.create(path, tiny_model, tiny_tokenizer) as bank:
        bank.add(["first text here.", "second text, a little longer than the first one."])
    with sqlite3.connect(path / "catalog.sqlite") as c:
        c.create_function("msa_crc", -1, row_crc)
        c.execute("UPDATE documents SET num_tokens = num_tokens + 1 WHERE id = 1")
    with MemoryBank.open(path, tiny_model, tiny_tokenizer) as bank:
        assert bank.get_text(1).startswith("second")  # the row itself is consistent
        with pytest.raises(BankCorruptError, match="document 1 disagrees with segment"):
            bank.snapshot()
        with pytest.raises(BankCorruptError, match="document 1 disagrees"):
            bank.check()
