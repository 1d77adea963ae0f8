"""Compaction: rewrite segments without tombstoned documents, merging adjacent small segments.

Document order, routing and logits are unchanged. Old files are removed only after the catalog commit;
a snapshot that loaded them keeps reading them (host tier: in memory; disk tier: the mapping keeps an
unlinked file's data), and a snapshot being taken reads the catalog again when one disappears.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from msa.memory.access import LoadedSegment
from msa.memory.catalog import DocRow, SegmentRow
from msa.memory.hooks import pause_point
from msa.memory.layout import SEGMENTS_DIR
from msa.memory.segments import write_segment
from msa.model.memory import CompressedMemory, LayerMemory

if TYPE_CHECKING:
    from msa.memory.bank import MemoryBank



def compact(bank: "MemoryBank") -> dict[str, int]:
    """Merge adjacent segments up to ``settings.compact_chunks`` live chunks, dropping tombstones.
    One commit per rewritten group. Returns segments before / after / rewritten and bytes freed."""
    before = bank.stats()
    rewritten = 0
    with bank.writing():
        with bank.catalog.read() as r:
            segs = r.segments()
            rows = r.all_docs()
        by_seg: dict[int, list[DocRow]] = {}
        for row in rows:
            by_seg.setdefault(row.segment, []).append(row)
        groups: list[list[SegmentRow]] = []
        used = 0
        for s in segs:
            live = sum(row.num_chunks for row in by_seg.get(s.id, []) if not row.deleted)
            if not groups or used + live > bank.settings.compact_chunks:
                groups.append([])
                used = 0
            groups[-1].append(s)
            used += live
        for g in groups:
            if len(g) > 1 or any(row.deleted for s in g for row in by_seg.get(s.id, [])):
                _rewrite(bank, g, by_seg)
                rewritten += len(g)
    after = bank.stats()
    return {"segments_before": before["segments"], "segments_after": after["segments"],
            "segments_rewritten": rewritten, "bytes_freed": before["bytes_disk"] - after["bytes_disk"]}  # fmt: skip


def _rewrite(bank: "MemoryBank", group: list[SegmentRow], by_seg: dict[int, list[DocRow]]) -> None:
    """Compaction of consecutive segments into one (or none, when all their documents are dead)."""
    directory = bank.path / SEGMENTS_DIR
    live_rows = [row for s in group for row in by_seg.get(s.id, []) if not row.deleted]
    info, moves = None, []
    if live_rows:
        parts = []
        for s in group:
            rows = [row for row in by_seg.get(s.id, []) if not row.deleted]
            if not rows:
                continue
            seg = LoadedSegment.load(directory, s, bank.fingerprint, torch.device("cpu"), "host")
            full = CompressedMemory(
                layers={i: LayerMemory(seg.routing[i], seg.keys[i], seg.values[i]) for i in seg.routing},
                chunk_doc=seg.chunk_doc.cpu(),
                doc_lengths=torch.zeros(seg.num_docs, dtype=torch.long),
                doc_ids=torch.zeros(seg.num_docs, dtype=torch.long),
            )
            sel = full.select(torch.tensor([row.seg_doc for row in rows]))
            sel.doc_lengths = torch.tensor([row.num_tokens for row in rows])
            sel.doc_ids = torch.tensor([row.id for row in rows])
            parts.append(sel)
        memory = CompressedMemory.cat(parts) if len(parts) > 1 else parts[0]
        with bank.catalog.read() as r:
            generation = r.generation() + 1
        info = write_segment(directory, memory, bank.fingerprint, generation)
        counts = memory.doc_chunk_counts().tolist()
        starts = memory.doc_chunk_offsets().tolist()
        moves = [(row, j, starts[j], counts[j]) for j, row in enumerate(live_rows)]
    with bank.catalog.write() as w:
        w.replace_segments(group, info, moves)
    pause_point("compact.committed")
    for s in group:
        (directory / s.file).unlink(missing_ok=True)
