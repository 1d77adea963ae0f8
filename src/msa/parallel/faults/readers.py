"""Snapshots taken while another bank object writes: every text read matches its snapshot's state."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from msa.memory import MemoryBank
from msa.parallel.faults.common import Trial, long_text, texts


def run(work: Path, snapshots: int, seed: int, model, tok, readers: int = 2, rounds: int = 12) -> list[Trial]:
    """One writer (add, delete, update, compact in turn; the texts of every committed generation
    recorded) and ``readers`` threads with their own bank objects taking ``snapshots`` snapshots in
    all at least, for as long as the writer runs its ``rounds``; each reads texts and routes on its
    snapshot."""
    path = work / "readers"
    writer = MemoryBank.create(path, model, tok, max_doc_tokens=64, segment_tokens=150, compact_chunks=48)
    states: dict[int, dict[int, str]] = {}  # generation -> internal id -> text of every live row

    def record(_generation: int | None = None) -> None:
        """The texts of the state just committed (called on the writer's thread, under its lock)."""
        cat = writer.catalog.reader()
        with cat.query() as r:
            states[cat.generation] = {t.id: t.text for t in r.text_rows(r.live_ids())}
        cat.close()

    record()
    on_commit = writer.catalog.on_commit
    writer.catalog.on_commit = lambda g: (on_commit(g) if on_commit else None, record(g))
    stop = threading.Event()
    errors: list[str] = []
    seen: list[tuple[int, dict[int, str]]] = []
    taken = [0]
    lock = threading.Lock()

    writer_done = threading.Event()

    def write() -> None:
        b = 0
        try:
            while not stop.is_set() and b < rounds:
                writer.add(texts(4, seed * 1000 + b, "r") + ([long_text(b)] if b % 3 == 0 else []), progress=False)
                live = writer.list_ids()
                if b % 2 and len(live) > 4:
                    writer.delete(live[b % len(live)])
                if b % 3 == 1 and live:
                    writer.update(live[-1], f"updated {b}: " + " ".join(texts(2, b, "u")))
                if b % 4 == 3:
                    writer.compact()
                b += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(f"writer: {type(e).__name__}: {e}")
            stop.set()
        finally:
            writer_done.set()

    def read(r: int) -> None:
        bank = MemoryBank.open(path, model, tok, readonly=True)
        g = torch.Generator().manual_seed(seed + r)
        layer = bank.router_layers[-1]
        try:
            while not stop.is_set():
                with lock:
                    if taken[0] >= snapshots and writer_done.is_set():
                        stop.set()
                        break
                    taken[0] += 1
                snap = bank.snapshot(tile_chunks=64)  # a fresh snapshot every time
                read_texts = {i: snap.text(i) for i in snap.slot_ids.tolist()[::3]}
                seen.append((snap.generation, read_texts))  # type: ignore[arg-type]
                if snap.num_docs:
                    q = torch.randn(2, 5, model.config.num_attention_heads, model.config.head_dim, generator=g)
                    res = snap.route(layer, q, torch.ones(2, 5, dtype=torch.bool), 3)
                    snap.fetch(layer, res.docs)
                snap.close()
        except BaseException as e:  # noqa: BLE001
            errors.append(f"reader {r}: {type(e).__name__}: {e}")
            stop.set()
        finally:
            bank.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    writer.check()
    writer.close()
    mismatched = 0
    for gen, got in seen:
        mismatched += sum(1 for i, t in got.items() if states.get(gen, {}).get(i) != t)
    ok = not errors and mismatched == 0 and len(seen) >= snapshots
    detail = "; ".join(errors[:3]) or (f"{mismatched} texts differ from their snapshot's state" if mismatched else "")
    reads = sum(len(t) for _, t in seen)
    return [Trial("readers", f"{len(seen)} snapshots, {reads} texts, {len(states)} writer states", ok, detail,
                  time.perf_counter() - start, {"snapshots": len(seen), "texts": reads})]  # fmt: skip
