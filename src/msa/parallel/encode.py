"""Encode documents into a bank with every rank of a process group.

``parallel_add`` cuts the input exactly as a single-process ``bank.add`` would (same ids, same pieces,
same commit groups = segments), gives every rank a contiguous run of groups balanced by tokens,
and every rank encodes its groups and writes their segment files (written + fsynced + renamed by
``write_segment``). After a barrier rank 0 gathers the segment metadata and commits every segment in
ONE catalog transaction, in the single-process order, so the resulting bank equals a single-process
add (same documents, slots and routing). Rank 0 holds the bank's writer lock from the id assignment
to the commit, so no other writer removes the not-yet-committed files as orphans; a crash of any
rank before the commit leaves only orphan files, removed by the next write.

Limitations: ``job=`` resumable adds are not supported here; tokenisation/splitting runs on rank 0.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from msa.memory import MemoryBank
from msa.memory.bank import SEGMENTS_DIR, DocId, _check_ids, _check_texts
from msa.memory.catalog import Catalog
from msa.memory.encode import Piece, commit_groups, encode_group
from msa.memory.segments import SegmentInfo, write_segment
from msa.parallel.dist import DistContext

log = logging.getLogger(__name__)


def split_groups(sizes: Sequence[int], world: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of groups per rank with about equal token totals."""
    total = sum(sizes) or 1
    bounds, acc, r = [0], 0, 1
    for i, s in enumerate(sizes):
        acc += s
        while r < world and acc >= total * r / world:
            bounds.append(i + 1)
            r += 1
    bounds += [len(sizes)] * (world + 1 - len(bounds))
    return [(bounds[r], bounds[r + 1]) for r in range(world)]


def _commit_all(bank: MemoryBank, written: list[tuple[SegmentInfo, list[Piece], list[int], list[int]]],
                new_keys: dict[int, str]) -> None:  # fmt: skip
    """One transaction making every written segment visible, in order (``MemoryBank._commit``'s rows)."""
    with bank.catalog.write() as c:
        for info, pieces, starts, counts in written:
            Catalog.insert_pieces(c, Catalog.insert_segment(c, info), pieces, starts, counts, new_keys)
        top = max((p.doc_id for _, ps, _, _ in written for p in ps), default=-1) + 1
        Catalog.set_manifest(c, "next_id", max(int(Catalog.manifest(c)["next_id"]), top))


def parallel_add(bank_path: str | Path, texts: Sequence[str], ids: Sequence[DocId] | None, model, tokenizer,
                 ctx: DistContext) -> list[int]:  # fmt: skip
    """Add ``texts`` to the bank with every rank encoding a share; call on every rank (same arguments;
    ``texts``/``ids`` are only read on rank 0). Returns the id of every text on every rank.

    Raises what ``MemoryBank.add`` raises (on every rank), ``RankFailureError`` when a rank dies.
    """
    rank = ctx.rank
    bank = MemoryBank.open(bank_path, model, tokenizer, device=model.device, readonly=rank != 0)
    try:
        with bank.writing() if rank == 0 else nullcontext():
            plan = None
            if rank == 0:
                try:
                    result, items, new_keys = bank.plan_add(_check_texts(texts), _check_ids(ids, len(texts)))
                    groups = commit_groups(items, bank.settings.segment_tokens)
                    spans = split_groups([sum(p.length for p in g) for g in groups], ctx.world)
                    plan = (result, new_keys, [groups[a:b] for a, b in spans])
                except Exception as e:
                    plan = e
            plan = ctx.broadcast_object(plan, 0, "add.plan")
            if isinstance(plan, Exception):
                raise plan
            result, new_keys, shares = plan
            written = []
            for group in shares[rank]:
                memory = encode_group(model, group, bank.settings.batch_tokens)  # reorders ``group``
                info = write_segment(bank.path / SEGMENTS_DIR, memory, bank.fingerprint)
                written.append((info, group, memory.doc_chunk_offsets().tolist(), memory.doc_chunk_counts().tolist()))
            log.info("rank %d wrote %d segment(s)", rank, len(written))
            everything = ctx.all_gather_object(written, "add.segments")
            failure: Exception | None = None
            if rank == 0:
                flat = [w for part in everything for w in part]
                try:
                    if flat:
                        _commit_all(bank, flat, new_keys)
                except Exception as e:
                    failure = e
            failure = ctx.broadcast_object(failure, 0, "add.committed")
            if failure is not None:
                raise failure
        return [int(r) for r in result]
    finally:
        bank.close()
