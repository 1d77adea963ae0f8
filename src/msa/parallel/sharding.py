"""Shard a bank's segments over ranks and load one rank's shard.

Assignment (``assign_segments``): segments holding live documents, largest live chunk count first
(ties: lower bank order first), each to the rank with the fewest chunks so far (ties: lower rank).
Deterministic, and the most loaded rank exceeds the least loaded by at most one segment's chunks.
A shard may hold few or zero documents. Segments are never split: a segment is the unit of loading.

Global slots are the single-process bank's slots (catalog live order: segment order, then position
in the segment); a rank's local slots are its segments' live documents in the same order, so the
local-to-global map is increasing and "lower local slot" ties agree with "lower global slot" ties.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from msa.memory import BankCorruptError, BankSnapshot, LoadedSegment, MemoryBank
from msa.memory.bank import SEGMENTS_DIR
from msa.memory.catalog import CatalogSnapshot, DocRow, SegmentRow
from msa.memory.segments import verify_segment
from msa.parallel.dist import DistContext

log = logging.getLogger(__name__)


class ShardMissingError(BankCorruptError):
    """Some rank cannot read a segment of its shard. ``problems``: rank -> [(file, reason)]; every
    rank raises the same error."""

    def __init__(self, problems: dict[int, list[tuple[str, str]]]):
        first_rank = min(problems)
        file, reason = problems[first_rank][0]
        listing = "; ".join(f"rank {r}: {f}: {why}" for r, ps in sorted(problems.items()) for f, why in ps)
        super().__init__(file, f"{reason} [shard files unreadable: {listing}]")
        self.problems = problems


def assign_segments(chunks: Sequence[int], world: int) -> list[list[int]]:
    """Greedy largest-first assignment of segments (by live chunk count) to ``world`` ranks.

    Returns per rank the indices of its segments, ascending (bank order). Segments of 0 chunks are
    not assigned.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(chunks)), key=lambda i: (-chunks[i], i)):
        if chunks[i] <= 0:
            continue
        r = min(range(world), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += chunks[i]
    return [sorted(o) for o in out]


@dataclass
class ShardLayout:
    """Where every global document slot lives; identical on every rank. All tensors [N] long (CPU).

    slot_to_id: bank id; slot_rank: owning rank; slot_local: index among the owner's local slots;
    slot_chunks: chunks of the document. generation: catalog generation (-1 for synthetic banks).
    """

    world: int
    slot_to_id: Tensor
    slot_rank: Tensor
    slot_local: Tensor
    slot_chunks: Tensor
    generation: int = -1

    @classmethod
    def build(cls, slot_to_id: Tensor, slot_rank: Tensor, slot_chunks: Tensor, world: int, generation: int = -1) -> "ShardLayout":
        slot_local = torch.zeros_like(slot_rank)
        for r in range(world):
            mine = slot_rank == r
            slot_local[mine] = torch.arange(int(mine.sum()))
        return cls(world, slot_to_id.long(), slot_rank.long(), slot_local, slot_chunks.long(), generation)

    @property
    def num_docs(self) -> int:
        return int(self.slot_to_id.numel())

    def local_slots(self, rank: int) -> Tensor:
        """[n_r] long global slots of ``rank``'s local slots (increasing)."""
        return torch.nonzero(self.slot_rank == rank).flatten()

    def rank_chunks(self) -> list[int]:
        return [int(self.slot_chunks[self.slot_rank == r].sum()) for r in range(self.world)]


@dataclass
class ShardPlan:
    """A catalog state cut into shards: the segment rows and live rows it was made from, the
    segment indices of every rank and the layout. ``catalog``: the held catalog state it was read
    from (the texts of that state), None for plans made from rows."""

    segments: list[SegmentRow]
    rows: list[DocRow]
    assignment: list[list[int]]
    layout: ShardLayout
    catalog: CatalogSnapshot | None = None


def plan_shards(segments: list[SegmentRow], rows: list[DocRow], world: int, generation: int) -> ShardPlan:
    """Assign ``segments`` (bank order) to ranks and lay out the live documents of ``rows``."""
    index = {s.id: i for i, s in enumerate(segments)}
    live = [r for r in rows if not r.deleted]
    chunks = [0] * len(segments)
    for r in live:
        chunks[index[r.segment]] += r.num_chunks
    assignment = assign_segments(chunks, world)
    owner = [-1] * len(segments)
    for rank, segs in enumerate(assignment):
        for i in segs:
            owner[i] = rank
    layout = ShardLayout.build(
        torch.tensor([r.id for r in live], dtype=torch.long),
        torch.tensor([owner[index[r.segment]] for r in live], dtype=torch.long),
        torch.tensor([r.num_chunks for r in live], dtype=torch.long),
        world, generation,
    )  # fmt: skip
    return ShardPlan(segments, rows, assignment, layout)


def check_shard_files(bank: MemoryBank, plan: ShardPlan, rank: int) -> list[tuple[str, str]]:
    """(file, reason) for every segment of ``rank``'s shard that is missing or of the wrong size."""
    problems = []
    for i in plan.assignment[rank]:
        s = plan.segments[i]
        try:
            verify_segment(bank.path / SEGMENTS_DIR / s.file, s.checksum, s.bytes, full=False)
        except BankCorruptError as e:
            problems.append((e.file, e.reason))
    return problems


def load_shard(bank: MemoryBank, plan: ShardPlan, rank: int, tile_chunks: int | None = None,
               verify: bool = True) -> BankSnapshot:  # fmt: skip
    """``rank``'s shard as a BankSnapshot over local slots, routing keys on ``bank.device`` and content
    in ``bank.content_tier``, through the bank's own segment loader. Its scores are RAW
    (``coupled_scale`` = 1): the distributed access applies the scale after the global merge. Keys are
    prepared as the bank's own snapshots prepare them (fused kernel path), so scores equal one process's."""
    mine = [plan.segments[i] for i in plan.assignment[rank]]
    loaded = [LoadedSegment.load(bank.path / SEGMENTS_DIR, s, bank.fingerprint, bank.device, bank.content_tier, verify,
                                 prep=bank.routing_prep)
              for s in mine]  # fmt: skip
    ids = {s.id for s in mine}
    rows = [r for r in plan.rows if r.segment in ids]
    options = replace(bank.routing_options, coupled_scale=1.0)
    return BankSnapshot(loaded, rows, {s.id: i for i, s in enumerate(mine)}, plan.layout.generation, options,
                        bank.device, tile_chunks or bank.settings.tile_chunks,
                        rescore=bank.routing_prep.rescore if bank.routing_prep is not None else 0)  # fmt: skip


def read_plan(bank: MemoryBank, world: int) -> ShardPlan:
    """The bank's current catalog state, held (``ShardPlan.catalog``), cut into ``world`` shards."""
    cat = bank.catalog.reader()
    try:
        with cat.query() as r:
            segs = r.segments()
            rows = r.all_docs()
    except BaseException:
        cat.close()
        raise
    plan = plan_shards(segs, rows, world, cat.generation)
    plan.catalog = cat
    return plan


def open_shard(bank: MemoryBank, ctx: DistContext, tile_chunks: int | None = None, verify: bool = True,
               attempts: int = 10) -> tuple[ShardPlan, BankSnapshot]:  # fmt: skip
    """Collectively cut the bank's current state into ``ctx.world`` shards and load this rank's.

    Every rank reads the catalog; if the ranks saw different generations (a write committed in
    between) they read again. Each rank checks its segment files exist before loading and the status
    is exchanged, so a file missing on one host makes EVERY rank raise the same ``ShardMissingError``
    naming it (never a hang in a later collective).
    """
    for attempt in range(attempts):
        plan = read_plan(bank, ctx.world)
        gens = ctx.all_gather_object(plan.layout.generation, "open.generation")
        if len(set(gens)) > 1:
            plan.catalog.close()  # type: ignore[union-attr]
            time.sleep(0.05 * (attempt + 1))
            continue
        problems = check_shard_files(bank, plan, ctx.rank)
        shard = None
        if not problems:
            try:
                shard = load_shard(bank, plan, ctx.rank, tile_chunks, verify)
            except BankCorruptError as e:
                problems = [(e.file, e.reason)]
        status = ctx.all_gather_object((problems, bank.generation), "open.status")
        bad = {r: p for r, (p, _) in enumerate(status) if p}
        if not bad:
            log.info("rank %d: shard of %d docs / %d chunks (generation %d)", ctx.rank,
                     int((plan.layout.slot_rank == ctx.rank).sum()), plan.layout.rank_chunks()[ctx.rank],
                     plan.layout.generation)  # fmt: skip
            return plan, shard  # type: ignore[return-value]
        plan.catalog.close()  # type: ignore[union-attr]
        moved = any(g != plan.layout.generation for _, g in status)
        if not moved or attempt == attempts - 1:
            raise ShardMissingError(bad)
        # a compaction removed files after our catalog read: the next read will not name them
    raise RuntimeError("the ranks could not agree on a bank generation")  # pragma: no cover
