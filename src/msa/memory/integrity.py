"""Integrity of a bank on disk: the full check, the lost-commit check, and the orphan sweep.

A commit records its generation in ``committed.json`` after the catalog commit, and every segment file
records the generation of the commit meant to make it visible. A catalog behind either (its
write-ahead log was deleted or lost after a crash) has lost acknowledged commits: the bank then
refuses to sweep files or write (``LostCommitsError``) instead of deleting the only copy of them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.torch
import torch

from msa.memory.catalog import CATALOG_NAME, Catalog
from msa.memory.errors import BankCorruptError, BankDiskFullError, LostCommitsError
from msa.memory.files import TMP_PREFIX, atomic_write
from msa.memory.layout import SEGMENTS_DIR
from msa.memory.segments import segment_generation, segment_metadata, verify_segment

if TYPE_CHECKING:
    from msa.memory.bank import MemoryBank

log = logging.getLogger(__name__)

COMMITTED_NAME = "committed.json"


def record_commit(path: Path, generation: int) -> None:
    """Remember that ``generation`` was committed (best effort: a full disk only loses the record)."""
    try:
        atomic_write(path / COMMITTED_NAME, json.dumps({"generation": generation}).encode())
    except (BankDiskFullError, OSError) as e:
        log.warning("%s: could not record commit %d (%s)", path / COMMITTED_NAME, generation, e)


def lost_commits(path: Path, catalog: Catalog) -> tuple[str | None, set[str]]:
    """(why the catalog has lost commits or None, the segment files the catalog names).

    The commit record and the segment files are read before the catalog, so a writer committing
    meanwhile can only make the catalog newer than what was read, never look like a lost commit."""
    rec = path / COMMITTED_NAME
    try:
        committed = int(json.loads(rec.read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        committed = -1
    files = [(segment_generation(p) or -1, p.name) for p in _segment_files(path)]
    with catalog.read() as r:
        generation = r.generation()
        known = {s.file for s in r.segments()}
    newest = max(((g, n) for g, n in files if n not in known), default=(-1, ""))
    if committed <= generation and newest[0] <= generation + 1:
        return None, known
    what = (f"generation {committed} was committed ({rec})" if committed > generation
            else f"segment file {newest[1]} was written for generation {newest[0]}")  # fmt: skip
    cat = path / CATALOG_NAME
    return (f"the catalog is at generation {generation} but {what}: its write-ahead log ({cat.name}-wal) was "
            "lost or deleted with the commits after it. Nothing was swept: the segment files of those commits are "
            f"still in {path / SEGMENTS_DIR}. Restore {cat.name}-wal, or call bank.accept_lost_commits() to go on "
            "with the catalog as it is (the unreferenced segment files are moved aside, not deleted)"), known  # fmt: skip


def check_lost(bank: "MemoryBank") -> set[str]:
    """LostCommitsError if the catalog has lost commits; else the segment files it names."""
    why, known = lost_commits(bank.path, bank.catalog)
    if why is not None:
        raise LostCommitsError(str(bank.path / CATALOG_NAME), why)
    return known


def sweep_orphans(bank: "MemoryBank") -> None:
    """Remove files the catalog does not name (crashed writes), after the lost-commit check."""
    known = check_lost(bank)
    for p in _segment_files(bank.path):
        if p.name not in known:
            log.info("removing orphan file %s", p)
            p.unlink(missing_ok=True)
    for p in bank.path.iterdir():
        if p.name.startswith(TMP_PREFIX):
            p.unlink(missing_ok=True)


def accept_lost_commits(bank: "MemoryBank") -> list[str]:
    """Go on with the catalog as it is: move unreferenced segment files to ``segments.lost-<time>/``
    and record the catalog's generation as the last commit. Returns the moved file names."""
    with bank.catalog.read() as r:
        gen = r.generation()
        known = {s.file for s in r.segments()}
    aside = bank.path / f"{SEGMENTS_DIR}.lost-{int(time.time())}"
    moved = []
    for p in _segment_files(bank.path):
        if p.name not in known:
            aside.mkdir(exist_ok=True)
            p.rename(aside / p.name)
            moved.append(p.name)
    record_commit(bank.path, gen)
    log.warning("%s: accepted the catalog at generation %d; moved %d segment file(s) to %s", bank.path, gen,
                len(moved), aside)  # fmt: skip
    return moved


def _segment_files(path: Path) -> list[Path]:
    return sorted((path / SEGMENTS_DIR).iterdir())


def check(bank: "MemoryBank") -> dict[str, Any]:
    """Verify the bank: SQLite's integrity check and every row checksum and text of the catalog, lost
    commits, every segment's size, checksum, header, fingerprint and its agreement with the catalog's
    rows, and the prefix file. Raises BankCorruptError naming the first bad file; returns a report
    (segments, documents, orphan files)."""
    cat_path = str(bank.path / CATALOG_NAME)
    with bank.catalog.read() as r:
        problems = r.integrity_problems()
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise BankCorruptError(cat_path, "; ".join(problems[:3]) + more)
        manifest = r.manifest()
        segs = r.segments()
        rows = r.all_docs()
    check_lost(bank)
    by_seg: dict[int, list] = {}
    for row in rows:
        by_seg.setdefault(row.segment, []).append(row)
    for s in segs:
        path = bank.path / SEGMENTS_DIR / s.file
        verify_segment(path, s.checksum, s.bytes, full=True)
        meta = segment_metadata(path)
        if meta.get("fingerprint") != manifest["fingerprint"] or s.fingerprint != manifest["fingerprint"]:
            raise BankCorruptError(str(path), "segment was encoded by another model")
        t = safetensors.torch.load(path.read_bytes())
        doc_ids, lengths = t["doc_ids"].tolist(), t["doc_lengths"].tolist()
        counts = torch.bincount(t["chunk_doc"].long(), minlength=len(doc_ids)).tolist()
        starts = np.cumsum([0] + counts[:-1]).tolist() if counts else []
        srows = by_seg.get(s.id, [])
        if len(doc_ids) != s.num_docs or len(srows) > s.num_docs:
            raise BankCorruptError(str(path), "document count differs from the catalog")
        for row in srows:
            if not (0 <= row.seg_doc < len(doc_ids)) or doc_ids[row.seg_doc] != row.id or \
                    counts[row.seg_doc] != row.num_chunks or starts[row.seg_doc] != row.chunk_start or \
                    lengths[row.seg_doc] != row.num_tokens:  # fmt: skip
                raise BankCorruptError(str(path), f"document {row.id} disagrees with the catalog")
    bank.load_prefix()
    known = {s.file for s in segs}
    orphans = [p.name for p in _segment_files(bank.path) if p.name not in known]
    return {"segments": len(segs), "documents": sum(1 for row in rows if not row.deleted and row.parent is None),
            "orphans": orphans}  # fmt: skip
