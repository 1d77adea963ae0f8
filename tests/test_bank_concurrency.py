"""Readers routing on snapshots while a writer adds, deletes and compacts: every snapshot is exactly
one committed catalog state (add batches all-or-nothing), and routing on it never fails."""

from __future__ import annotations

import threading

import torch

from msa.memory import MemoryBank
from msa.model.memory import DenseMemoryAccess


def test_readers_see_consistent_snapshots(tmp_path, tiny_model, tiny_tokenizer):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(tmp_path, tiny_model, tiny_tokenizer)
    finally:
        torch.set_num_threads(n_threads)


def _run(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "bank"
    writer = MemoryBank.create(path, tiny_model, tiny_tokenizer, compact_chunks=64)
    states: dict[int, frozenset[int]] = {writer.generation: frozenset()}
    batches: list[frozenset[int]] = []
    stop = threading.Event()
    seen: list[tuple[int, frozenset[int]]] = []
    errors: list[BaseException] = []
    layer = tiny_model.config.router_layers[-1]

    def write() -> None:
        try:
            for b in range(10):
                ids = writer.add([f"Batch {b} item {i}: golf hotel india {i * b}." for i in range(4)],
                                 ids=[b * 10 + i for i in range(4)], progress=False)  # fmt: skip
                batches.append(frozenset(ids))
                states[writer.generation] = frozenset(writer.ids())
                if b % 3 == 2:
                    writer.delete([b * 10, b * 10 - 9])
                    states[writer.generation] = frozenset(writer.ids())
                if b % 4 == 3:
                    writer.compact()  # one commit per rewritten group: record every generation
                    states[writer.generation] = frozenset(writer.ids())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            stop.set()

    def read(seed: int) -> None:
        reader = MemoryBank.open(path, tiny_model, tiny_tokenizer, readonly=True)
        g = torch.Generator().manual_seed(seed)
        try:
            while not stop.is_set():
                snap = reader.snapshot(tile_chunks=16)
                ids = frozenset(snap.slot_to_id.tolist())
                assert len(ids) == snap.num_docs
                seen.append((snap.generation, ids))
                if snap.num_docs:
                    q = torch.randn(2, 5, 4, 16, generator=g)
                    qm = torch.ones(2, 5, dtype=torch.bool)
                    r = snap.route(layer, q, qm, 4)
                    assert set(snap.ids(r.docs)[r.docs >= 0].tolist()) <= ids
                    rd = DenseMemoryAccess(snap.materialize(), snap.options).route(layer, q, qm, 4)
                    assert torch.equal(r.docs, rd.docs)
                    keys, values, valid = snap.fetch(layer, r.docs)
                    assert valid.any(dim=1).all()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            reader.close()

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    writer.check()
    writer.close()
    assert not errors, errors
    assert len(seen) > 5
    recorded = sorted(states)
    for gen, ids in seen:
        # A compaction commits once per rewritten group without changing the live set, so a generation
        # the writer did not record equals the nearest recorded one below it.
        base = max(g for g in recorded if g <= gen)
        # states[] holds only whole-operation results, so this also says no add batch is half visible.
        assert ids == states[base], f"snapshot at generation {gen} is not a committed state"
    assert all(b & states[max(states)] for b in batches)
