"""Reading the catalog: the row types and ``Reader``, whose every query verifies the rows it returns.

Every row that answers depend on carries a checksum (``catalog_schema``); a row or text that fails
it, or an index that names another row than asked for, is a BankCorruptError naming the catalog.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from msa.memory.catalog_schema import CRC_COLUMNS, row_crc
from msa.memory.errors import BankCorruptError
from msa.memory.segments import SegmentInfo


@dataclass(frozen=True)
class DocRow:
    """One document row (a whole document or one piece of a split one). ``chunk_start``/``num_chunks``
    index the segment's chunks; ``seg_doc`` its local document index there; ``piece`` its place in
    its document (0 = first or only piece; ``parent`` = the first piece's id for the others)."""

    id: int
    parent: int | None
    source_hash: str
    num_tokens: int
    segment: int
    seg_doc: int
    chunk_start: int
    num_chunks: int
    deleted: bool
    piece: int = 0
    text_hash: str = ""


@dataclass(frozen=True)
class SegmentRow(SegmentInfo):
    """A committed segment: its file's record, its row id and its place in the bank's order."""

    id: int = -1
    ord: int = 0


@dataclass(frozen=True)
class TextRow:
    """The stored text of one row and the separators around it in its document (split documents)."""

    id: int
    parent: int | None
    piece: int
    text: str
    lead: str
    trail: str
    source_hash: str


_DOC = "id, parent, piece, text_hash, lead, trail, source_hash, num_tokens, segment, seg_doc, chunk_start, num_chunks, deleted, crc"
_SEG = "id, ord, file, checksum, bytes, num_docs, num_chunks, bytes_routing, bytes_content, fingerprint, crc"


class Reader:
    """Queries over one read (or write) transaction; every row is checksum-verified as it is read."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn, self.path = conn, path

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def _verified(self, table: str, row: tuple) -> tuple:
        """``row`` = the table's checksummed columns then its ``crc``."""
        if row_crc(*row[:-1]) != row[-1]:
            raise BankCorruptError(str(self.path), f"a {table} row fails its checksum ({_describe(table, row)})")
        return row[:-1]

    def _doc(self, r: tuple) -> DocRow:
        i, parent, piece, th, _lead, _trail, sh, tokens, seg, sd, cs, nc, dead = self._verified("documents", r)
        return DocRow(i, parent, sh, tokens, seg, sd, cs, nc, bool(dead), piece, th)

    # -- manifest ----------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        rows = [self._verified("manifest", r) for r in self._q("SELECT key, value, crc FROM manifest")]
        try:
            return {k: json.loads(v) for k, v in rows}
        except ValueError as e:
            raise BankCorruptError(str(self.path), f"unreadable manifest ({e})") from e

    def generation(self) -> int:
        r = self._q("SELECT key, value, crc FROM manifest WHERE key = 'generation'")
        if not r:
            raise BankCorruptError(str(self.path), "the manifest has no generation")
        return int(json.loads(self._verified("manifest", r[0])[1]))

    # -- segments and documents --------------------------------------------------------------------
    def segments(self) -> list[SegmentRow]:
        cols = _SEG.split(", ")[:-1]
        return [SegmentRow(**dict(zip(cols, self._verified("segments", r))))
                for r in self._q(f"SELECT {_SEG} FROM segments ORDER BY ord")]  # fmt: skip

    def all_docs(self) -> list[DocRow]:
        """Every row (tombstones too), in bank order: segment ord, then position in the segment."""
        cols = ", ".join(f"d.{c}" for c in _DOC.split(", "))
        q = f"SELECT {cols} FROM documents d JOIN segments s ON d.segment = s.id ORDER BY s.ord, d.seg_doc"
        return [self._doc(r) for r in self._q(q)]

    def live_doc(self, doc_id: int) -> DocRow | None:
        r = self._q(f"SELECT {_DOC} FROM documents WHERE id = ? AND deleted = 0", (doc_id,))
        row = self._doc(r[0]) if r else None
        if row is not None and row.id != doc_id:
            raise BankCorruptError(str(self.path), f"the index of document ids names row {row.id} for id {doc_id}")
        return row

    def family(self, doc_id: int) -> list[DocRow]:
        """The live rows of the document whose first piece is ``doc_id`` (its pieces by ``piece``)."""
        rows = self._q(f"SELECT {_DOC} FROM documents WHERE id = ? AND deleted = 0 UNION ALL "
                       f"SELECT {_DOC} FROM documents WHERE parent = ? AND deleted = 0", (doc_id, doc_id))  # fmt: skip
        out = sorted((self._doc(r) for r in rows), key=lambda d: d.piece)
        if any(d.id != doc_id and d.parent != doc_id for d in out):
            raise BankCorruptError(str(self.path), f"an index names rows outside document {doc_id}")
        return out

    def text_rows(self, doc_ids: Sequence[int]) -> list[TextRow]:
        """The live rows of ``doc_ids`` with their texts, each verified against its checksum."""
        out = []
        for i in doc_ids:
            r = self._q(f"SELECT {_DOC}, text FROM documents WHERE id = ? AND deleted = 0", (i,))
            if not r:
                continue
            row, text = self._doc(r[0][:-1]), r[0][-1]
            _i, _p, _pc, th, lead, trail, *_ = r[0]
            if row.id != i or not isinstance(text, str) or text_digest(text) != row.text_hash:
                raise BankCorruptError(str(self.path), f"the text of document {i} fails its checksum")
            out.append(TextRow(row.id, row.parent, row.piece, text, lead, trail, row.source_hash))
        return out

    def document_text(self, doc_id: int) -> str | None:
        """The whole text of the live document ``doc_id`` (its pieces joined back exactly; a piece's id:
        that piece's text), None if not live. Verified against the document's source hash."""
        row = self.live_doc(doc_id)
        if row is None:
            return None
        if row.parent is not None:
            return self.text_rows([doc_id])[0].text
        pieces = self.text_rows([d.id for d in self.family(doc_id)])
        text = "".join(p.lead + p.text for p in pieces) + (pieces[-1].trail if pieces else "")
        if [p.piece for p in pieces] != list(range(len(pieces))) or text_digest(text) != row.source_hash:
            raise BankCorruptError(str(self.path), f"the pieces of document {doc_id} do not give back its text")
        return text

    def live_by_hash(self, source_hash: str) -> int | None:
        """Id of a live whole document whose text has this hash, if any."""
        for r in self._q(f"SELECT {_DOC} FROM documents WHERE source_hash = ? AND deleted = 0 AND parent IS NULL",
                         (source_hash,)):  # fmt: skip
            row = self._doc(r)
            if row.source_hash == source_hash and row.parent is None:
                return row.id
        return None

    def live_whole(self, offset: int = 0, limit: int | None = None) -> list[tuple[int, str | None]]:
        """(id, string key or None) of live whole documents in storage order."""
        q = ("SELECT d.id, k.key, k.id, k.crc FROM documents d LEFT JOIN keys k ON k.id = d.id "
             "WHERE d.deleted = 0 AND d.parent IS NULL ORDER BY d.row LIMIT ? OFFSET ?")  # fmt: skip
        out = []
        for i, key, kid, kcrc in self._q(q, (-1 if limit is None else limit, offset)):
            if key is not None:
                self._verified("keys", (key, kid, kcrc))
            out.append((i, key))
        return out

    def counts(self) -> dict[str, int]:
        docs, rows, tokens, chunks = self._q(
            "SELECT COUNT(*) FILTER (WHERE parent IS NULL), COUNT(*), COALESCE(SUM(num_tokens), 0), "
            "COALESCE(SUM(num_chunks), 0) FROM documents WHERE deleted = 0")[0]  # fmt: skip
        dead = self._q("SELECT COUNT(*) FROM documents WHERE deleted = 1")[0][0]
        segs, br, bc, bd = self._q("SELECT COUNT(*), COALESCE(SUM(bytes_routing), 0), COALESCE(SUM(bytes_content), 0), "
                                   "COALESCE(SUM(bytes), 0) FROM segments")[0]  # fmt: skip
        return {"documents": docs, "slots": rows, "tokens": tokens, "chunks": chunks, "deleted": dead,
                "segments": segs, "bytes_routing": br, "bytes_content": bc, "bytes_disk": bd}  # fmt: skip

    def num_live(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM documents WHERE deleted = 0")[0][0])

    def live_ids(self) -> list[int]:
        """Ids of every live row (pieces too) in bank order."""
        return [r.id for r in self.all_docs() if not r.deleted]

    # -- ids ---------------------------------------------------------------------------------------
    def _key_row(self, column: str, value: int | str) -> tuple[str, int] | None:
        """The verified (key, id) row whose ``column`` is ``value`` (checked: an index may lie)."""
        r = self._q(f"SELECT key, id, crc FROM keys WHERE {column} = ?", (value,))
        if not r:
            return None
        row = self._verified("keys", r[0])
        if row[0 if column == "key" else 1] != value:
            raise BankCorruptError(str(self.path), f"the index of string ids names {row} for {value!r}")
        return row  # type: ignore[return-value]

    def key_id(self, key: str) -> int | None:
        row = self._key_row("key", key)
        return None if row is None else row[1]

    def key_of(self, doc_id: int) -> str | None:
        row = self._key_row("id", doc_id)
        return None if row is None else row[0]

    def user_id(self, internal: int) -> int | str:
        """The user id of an internal id: its string key, else the int itself (a piece: its document's)."""
        row = self.live_doc(internal)
        if row is not None and row.parent is not None:
            internal = row.parent
        key = self.key_of(internal)
        return internal if key is None else key

    def retired(self, doc_id: int) -> bool:
        """Whether ``doc_id`` named a whole document that was deleted."""
        return bool(self._q("SELECT 1 FROM retired WHERE id = ?", (doc_id,)))

    def job_item(self, job: str, item: int) -> tuple[str, int] | None:
        r = self._q("SELECT job, item, source_hash, doc_id, crc FROM jobs WHERE job = ? AND item = ?", (job, item))
        if not r:
            return None
        _, _, h, i = self._verified("jobs", r[0])
        return h, i

    def max_id(self) -> int:
        r = self._q("SELECT MAX(id) FROM documents")[0][0]
        k = self._q("SELECT MAX(id) FROM keys")[0][0]
        t = self._q("SELECT MAX(id) FROM retired")[0][0]
        return max(-1 if v is None else v for v in (r, k, t))

    # -- integrity ---------------------------------------------------------------------------------
    def integrity_problems(self) -> list[str]:
        """SQLite's own integrity check, then every checksummed row of every table (reasons, [] if sound)."""
        problems = [r[0] for r in self._q("PRAGMA integrity_check") if r[0] != "ok"]
        for table, cols in CRC_COLUMNS.items():
            for r in self._q(f"SELECT {', '.join(cols)}, crc FROM {table}"):
                if row_crc(*r[:-1]) != r[-1]:
                    problems.append(f"a {table} row fails its checksum ({_describe(table, r)})")
        for i, text, th in self._q("SELECT id, text, text_hash FROM documents WHERE deleted = 0"):
            if not isinstance(text, str) or text_digest(text) != th:
                problems.append(f"the text of document {i} fails its checksum")
        n = self._q("SELECT COUNT(*) FROM documents WHERE segment NOT IN (SELECT id FROM segments)")[0][0]
        if n:
            problems.append(f"{n} document rows name no segment")
        return problems


def text_digest(text: str) -> str:
    from msa.memory.encode import text_hash

    return text_hash(text)


def _describe(table: str, row: tuple) -> str:
    cols = CRC_COLUMNS.get(table, ())
    for name in ("id", "key", "file", "job"):
        if name in cols:
            return f"{name} {row[cols.index(name)]!r}"
    return "row"
