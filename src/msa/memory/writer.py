"""Adding documents: plan -> encode -> commit (``BankWriter``), shared by ``MemoryBank.add`` and
``msa.parallel.parallel_add``.

plan: under the writer lock, decide for every input text its user id, whether it is already stored
(same text under the same id, or for an id-less text the same content hash, or committed by the same
``job``), which ids it takes and which pieces are still to encode. encode: ``DocumentEncoder`` turns a
commit group into a segment file (written, fsynced, renamed). commit: one catalog transaction makes one
or more segments visible with their documents, string keys and job records. A group is whole texts
only, so a crash never leaves part of a document visible, and a re-run of the same add skips what
was committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from msa.memory.catalog import Catalog
from msa.memory.encode import DocumentEncoder, Piece, commit_groups, text_hash
from msa.memory.errors import DocumentPieceError, DuplicateDocumentError
from msa.memory.hooks import pause_point
from msa.memory.ids import DocId
from msa.memory.layout import SEGMENTS_DIR
from msa.memory.segments import SegmentInfo, write_segment

log = logging.getLogger(__name__)

ON_DUPLICATE = ("skip", "error", "replace")


@dataclass
class AddReport:
    """ids: one per input text, the user's id (id-less texts get ints); added: documents newly stored;
    unchanged: inputs already stored (same text under that id, or the same content hash for an id-less
    text); replaced: documents whose text was replaced; split: id -> pieces of every split document."""

    ids: list[DocId]
    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    split: dict[DocId, int] = field(default_factory=dict)

    @property
    def pieces(self) -> int:
        return sum(self.split.values())


@dataclass
class DeleteReport:
    """deleted: the ids deleted now; already_deleted: ids that named documents deleted before."""

    deleted: list[DocId]
    already_deleted: list[DocId]


@dataclass
class AddPlan:
    """What an add still has to do: ``items`` (per text to encode, its pieces), new string keys
    (internal id -> key), the job to record, and the report it will return."""

    report: AddReport
    items: list[list[Piece]]
    new_keys: dict[int, str]
    job: str | None = None

    def groups(self, segment_tokens: int) -> list[list[Piece]]:
        return commit_groups(self.items, segment_tokens)


@dataclass
class WrittenSegment:
    """A segment file in place, not yet committed: its pieces in segment order, first chunk and chunk
    count of every one."""

    info: SegmentInfo
    pieces: list[Piece]
    starts: list[int]
    counts: list[int]


class BankWriter:
    """Plans, encodes and commits adds into the bank at ``path`` (call every step under the bank's
    writer lock, ``MemoryBank.writing``)."""

    def __init__(self, path: Path, catalog: Catalog, fingerprint: str, encoder: DocumentEncoder | None):
        self.path, self.catalog, self.fingerprint, self.encoder = path, catalog, fingerprint, encoder

    def plan(self, texts: list[str], keys: Sequence[DocId | None], on_duplicate: str | None = None,
             job: str | None = None) -> AddPlan:  # fmt: skip
        """The plan of adding ``texts`` with ``keys`` (validated by ``ids.check_ids``; None = allocate).

        on_duplicate: for id-less texts, "skip" (default: an identical stored text is reported as
        unchanged) or "error"; "replace" replaces the text of a live explicit id (else a different text
        there is a DuplicateDocumentError). Raises before anything is stored."""
        if on_duplicate is not None and on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
        hashes = [text_hash(t) for t in texts]
        report = AddReport(ids=[None] * len(texts))  # type: ignore[list-item]
        new_keys: dict[int, str] = {}
        todo: list[tuple[int, int, tuple[int, ...]]] = []  # (item, internal id, ids it replaces)
        with self.catalog.read() as r:
            next_id = max(int(r.manifest()["next_id"]), r.max_id() + 1,
                          max((k for k in keys if isinstance(k, int)), default=-1) + 1)  # fmt: skip
            fresh: dict[str, int] = {}  # content hash -> id of an id-less text of this call
            for i, (k, h) in enumerate(zip(keys, hashes)):
                if job is not None and (rec := r.job_item(job, i)) is not None:
                    if rec[0] != h:
                        raise DuplicateDocumentError(f"job {job!r} item {i} was committed with another text")
                    report.ids[i] = r.user_id(rec[1])
                    report.unchanged += 1
                    continue
                if k is None:
                    same = fresh.get(h)
                    stored = r.live_by_hash(h) if same is None else None
                    if same is not None or stored is not None:
                        uid = same if same is not None else r.user_id(stored)  # type: ignore[arg-type]
                        if on_duplicate == "error":
                            raise DuplicateDocumentError(f"text {i} is already stored as document {uid!r} "
                                                         "(on_duplicate='error')")  # fmt: skip
                        report.ids[i] = uid
                        report.unchanged += 1
                        continue
                    doc_id, next_id = next_id, next_id + 1
                    fresh[h] = doc_id
                    report.ids[i] = doc_id
                    todo.append((i, doc_id, ()))
                    continue
                if isinstance(k, str):
                    doc_id = r.key_id(k)  # type: ignore[assignment]
                    if doc_id is None:
                        doc_id, next_id = next_id, next_id + 1
                        new_keys[doc_id] = k
                else:
                    doc_id = k
                    if (owner := r.key_of(k)) is not None:
                        raise DuplicateDocumentError(f"int id {k} is taken by the document with string id {owner!r}")
                row = r.live_doc(doc_id)
                replaces: tuple[int, ...] = ()
                if row is not None:
                    if row.parent is not None:
                        raise DocumentPieceError(f"id {k!r} is a piece of document {r.user_id(row.parent)!r}")
                    if row.source_hash == h:
                        report.ids[i] = k
                        report.unchanged += 1
                        continue
                    if on_duplicate != "replace":
                        raise DuplicateDocumentError(f"document id {k!r} already holds another text "
                                                     "(use update, or on_duplicate='replace')")  # fmt: skip
                    replaces = tuple(d.id for d in r.family(doc_id))
                    report.replaced += 1
                report.ids[i] = k
                todo.append((i, doc_id, replaces))
        items = []
        if todo:
            self._need_encoder()
        for i, doc_id, replaces in todo:
            pieces, next_id = self.encoder.pieces(texts[i], doc_id, hashes[i], i, next_id)  # type: ignore[union-attr]
            pieces[0].replaces = replaces
            if len(pieces) > 1:
                report.split[report.ids[i]] = len(pieces)
            items.append(pieces)
        report.added = len(todo) - report.replaced
        return AddPlan(report, items, new_keys, job)

    def write(self, group: list[Piece], generation: int, on_batch=None) -> WrittenSegment:
        """Encode one commit group and write its segment file (``generation``: the commit that will
        make it visible, recorded in the file). Reorders ``group`` into segment order."""
        self._need_encoder()
        memory = self.encoder.encode(group, on_batch)  # type: ignore[union-attr]
        info = write_segment(self.path / SEGMENTS_DIR, memory, self.fingerprint, generation)
        pause_point("segment.renamed")
        return WrittenSegment(info, group, memory.doc_chunk_offsets().tolist(), memory.doc_chunk_counts().tolist())

    def commit(self, plan: AddPlan, segments: list[WrittenSegment]) -> None:
        """One transaction making ``segments`` visible in order, with their documents (replacing the
        rows their first pieces replace), string keys and job records."""
        with self.catalog.write() as w:
            for ws in segments:
                replaced = [d for p in ws.pieces for d in p.replaces]
                if replaced:
                    w.tombstone(replaced)
                w.insert_pieces(w.insert_segment(ws.info), ws.pieces, ws.starts, ws.counts, plan.new_keys)
                if plan.job is not None:
                    w.record_jobs(plan.job, [p for p in ws.pieces if p.index == 0])
            w.bump_next_id(max((p.doc_id for ws in segments for p in ws.pieces), default=-1) + 1)

    def run(self, plan: AddPlan, segment_tokens: int, progress: bool | None = None) -> None:
        """Encode and commit every group of ``plan``, one segment and one transaction per group."""
        groups = plan.groups(segment_tokens)
        if not groups:
            return
        total_docs, total_tokens = sum(len(g) for g in groups), sum(p.length for g in groups for p in g)
        start = time.perf_counter()
        bar = self.encoder.bar(total_tokens, total_docs, progress)  # type: ignore[union-attr]
        try:
            for group in groups:
                with self.catalog.read() as r:
                    generation = r.generation() + 1
                self.commit(plan, [self.write(group, generation, bar)])
        finally:
            bar.close()
        log.info("encoded %d document(s), %d tokens in %.1fs", total_docs, total_tokens, time.perf_counter() - start)

    def _need_encoder(self) -> None:
        if self.encoder is None:
            from msa.memory.errors import BankError

            raise BankError(f"{self.path}: adding or updating documents needs the bank opened with its model and tokenizer")
