"""Delete benchmark: one ``bank.delete`` of 1000 ids in a bank of 30K documents (CPU, catalog only).

The bank is built through the public writer (``BankWriter``) with an encoder that returns random
compressed memory of the right shapes (delete never reads segments, so no model encode is needed;
the prefix is encoded once by the shipped msa-bios-tiny). Half the ids are ints, half strings.

Measured in the same run on the same catalog:
    delete_s     the 1000-id ``bank.delete`` (one transaction: lookups, tombstones, row checksums)
    before_s     the per-id lookup the bank used before (``id = ? OR parent = ?``: a scan per id)
    floor_s      1000 indexed point lookups of a live document (the least any delete must do)
and the query plans. Goal (issue 24): delete_s < 1 s.

    PYTHONPATH=src python bench/bank_delete.py --out bench/results/bank/bank_delete_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from msa.memory import MemoryBank
from msa.memory.encode import Piece
from msa.model import MSAForCausalLM, resolve_model_path
from msa.model.memory import CompressedMemory, LayerMemory
from msa.tokenizer import load_tokenizer

OLD_FAMILY = "SELECT id FROM documents WHERE deleted = 0 AND (id = ? OR parent = ?)"
POINT = "SELECT id FROM documents WHERE id = ? AND deleted = 0"


class RandomEncoder:
    """A DocumentEncoder stand-in: one chunk of random keys per document, no model."""

    def __init__(self, model, settings):
        cfg = model.config
        self.layers, self.hkv, self.d = list(cfg.router_layers), cfg.num_key_value_heads, cfg.head_dim
        self.settings = settings
        self.g = torch.Generator().manual_seed(0)

    def pieces(self, text: str, doc_id: int, h: str, item: int, next_id: int) -> tuple[list[Piece], int]:
        return [Piece(item, 0, text, doc_id, None, h, np.zeros(8, dtype=np.int32))], next_id

    def encode(self, group: list[Piece], on_batch=None) -> CompressedMemory:
        n = len(group)
        layers = {i: LayerMemory(*(torch.randn(n, self.hkv, self.d, generator=self.g) for _ in range(3))) for i in self.layers}
        return CompressedMemory(layers, torch.arange(n), torch.full((n,), 8), torch.tensor([p.doc_id for p in group]))

    def bar(self, total_tokens: int, total_docs: int, progress=None):
        class Quiet:
            def __call__(self, batch):
                pass

            def close(self):
                pass

        return Quiet()


def timed(conn: sqlite3.Connection, sql: str, args: list[tuple]) -> tuple[float, str]:
    start = time.perf_counter()
    for a in args:
        conn.execute(sql, a).fetchall()
    plan = " | ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args[0]))
    return time.perf_counter() - start, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--ids", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = resolve_model_path("msa-bios-tiny")
    model, tok = MSAForCausalLM.from_pretrained(path), load_tokenizer(path)
    with tempfile.TemporaryDirectory() as tmp:
        bank = MemoryBank.create(Path(tmp) / "bank", model, tok, segment_tokens=8 * 5000)
        bank.writer.encoder = RandomEncoder(model, bank.settings)
        ids = [i if i < args.docs // 2 else f"doc-{i}" for i in range(args.docs)]  # strings take ids above the ints
        t0 = time.perf_counter()
        for a in range(0, args.docs, 5000):
            bank.add([f"document {i}" for i in range(a, min(a + 5000, args.docs))], ids[a : a + 5000])
        build_s = time.perf_counter() - t0
        victims = random.Random(0).sample(ids, args.ids)
        internal = [(bank.resolve(d),) * 2 for d in victims]
        with sqlite3.connect(bank.path / "catalog.sqlite") as conn:
            before_s, before_plan = timed(conn, OLD_FAMILY, internal)
            floor_s, floor_plan = timed(conn, POINT, [(i,) for i, _ in internal])
        t0 = time.perf_counter()
        report = bank.delete(victims)
        delete_s = time.perf_counter() - t0
        assert len(report.deleted) == args.ids and bank.stats()["documents"] == args.docs - args.ids
        t0 = time.perf_counter()
        again = bank.delete(victims)  # the re-run of a committed delete
        rerun_s = time.perf_counter() - t0
        assert len(again.already_deleted) == args.ids
        bank.close()
    res = {
        "benchmark": "bank_delete", "card": "cpu", "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "sqlite": sqlite3.sqlite_version,
        "documents": args.docs, "ids": args.ids, "build_s": build_s,
        "delete_s": delete_s, "rerun_already_deleted_s": rerun_s,
        "before_s": before_s, "before_plan": before_plan, "floor_s": floor_s, "floor_plan": floor_plan,
        "delete_over_floor": delete_s / floor_s, "before_over_delete": before_s / delete_s, "goal_s": 1.0,
        "meets_goal": delete_s < 1.0,
    }  # fmt: skip
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
