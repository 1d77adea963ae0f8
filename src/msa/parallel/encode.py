"""Encode documents into a bank with every rank of a process group.

``parallel_add`` cuts the input exactly as a single-process ``bank.add`` would (same ids, same pieces,
same commit groups = segments), gives every rank a contiguous run of groups balanced by tokens,
and every rank encodes its groups and writes their segment files (written + fsynced + renamed by
``BankWriter.write``). After a barrier rank 0 gathers the segment metadata and commits every segment in
ONE catalog transaction (``BankWriter.commit``), in the single-process order, so the resulting bank equals a single-process
add (same documents, slots and routing). Rank 0 holds the bank's writer lock from the id assignment
to the commit, so no other writer removes the not-yet-committed files as orphans; a crash of any
rank before the commit leaves only orphan files, removed by the next write.

The plan is ``BankWriter.plan``'s (texts already stored are skipped, as in ``MemoryBank.add``).
Limitations: ``job=`` records are not supported here; tokenisation/splitting runs on rank 0.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from msa.memory import MemoryBank
from msa.memory.ids import DocId, check_ids, check_texts
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


def parallel_add(bank_path: str | Path, texts: Sequence[str], ids: Sequence[DocId | None] | None, model, tokenizer,
                 ctx: DistContext) -> list[DocId]:  # fmt: skip
    """Add ``texts`` to the bank with every rank encoding a share; call on every rank (same arguments;
    ``texts``/``ids`` are only read on rank 0). Returns the id of every text on every rank (as
    ``MemoryBank.add`` does).

    Raises what ``MemoryBank.add`` raises (on every rank), ``RankFailureError`` when a rank dies.
    """
    rank = ctx.rank
    bank = MemoryBank.open(bank_path, model, tokenizer, device=model.device, readonly=rank != 0)
    try:
        with bank.writing() if rank == 0 else nullcontext():
            msg = None
            if rank == 0:
                try:
                    plan = bank.writer.plan(check_texts(texts), check_ids(ids, len(texts)))
                    groups = plan.groups(bank.settings.segment_tokens)
                    spans = split_groups([sum(p.length for p in g) for g in groups], ctx.world)
                    msg = (plan, bank.generation + 1, [groups[a:b] for a, b in spans])
                except Exception as e:
                    msg = e
            msg = ctx.broadcast_object(msg, 0, "add.plan")
            if isinstance(msg, Exception):
                raise msg
            plan, generation, shares = msg
            written = [bank.writer.write(group, generation) for group in shares[rank]]
            log.info("rank %d wrote %d segment(s)", rank, len(written))
            everything = ctx.all_gather_object(written, "add.segments")
            failure: Exception | None = None
            if rank == 0:
                flat = [w for part in everything for w in part]
                try:
                    if flat:
                        bank.writer.commit(plan, flat)
                except Exception as e:
                    failure = e
            failure = ctx.broadcast_object(failure, 0, "add.committed")
            if failure is not None:
                raise failure
        return plan.report.ids
    finally:
        bank.close()
