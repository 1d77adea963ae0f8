"""The SQLite catalog: manifest, segments, documents (text, ranges, tombstones), string keys, add jobs.

Every SQL statement of the bank lives in this module and ``catalog_schema``. One connection per bank
object, WAL journal (readers never block the writer and see the last commit before their read
transaction began), ``synchronous=FULL``. Every write is one ``BEGIN IMMEDIATE`` .. ``COMMIT``
transaction that also bumps the manifest's ``generation``.

Every row that answers depend on carries a checksum (``crc``) maintained by triggers
(``catalog_schema``) and verified whenever the row is read (``row_crc``); texts are verified against
their ``text_hash``, which the row checksum covers. Any SQLite failure leaves this module as one
``BankError`` naming the catalog file (``errors.sqlite_error``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from msa.memory.catalog_schema import CRC_COLUMNS, SCHEMA, row_crc
from msa.memory.errors import BankCorruptError, BankError, sqlite_error
from msa.memory.hooks import pause_point

CATALOG_NAME = "catalog.sqlite"


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
class SegmentRow:
    id: int
    ord: int
    file: str
    checksum: str
    bytes: int
    num_docs: int
    num_chunks: int
    bytes_routing: int
    bytes_content: int
    fingerprint: str


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
        return [SegmentRow(*self._verified("segments", r)) for r in self._q(f"SELECT {_SEG} FROM segments ORDER BY ord")]

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


class Writer(Reader):
    """Statements of one write transaction (``Catalog.write``)."""

    def set_manifest(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def bump_next_id(self, top: int) -> None:
        self.set_manifest("next_id", max(int(self.manifest()["next_id"]), top))

    def insert_segment(self, info: Any, ord_: int | None = None) -> int:
        if ord_ is None:
            ord_ = self._q("SELECT COALESCE(MAX(ord), 0) + 1 FROM segments")[0][0]
        cur = self.conn.execute(
            "INSERT INTO segments (ord, file, checksum, bytes, num_docs, num_chunks, bytes_routing, bytes_content, "
            "fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ord_, info.file, info.checksum, info.bytes, info.num_docs, info.num_chunks, info.bytes_routing,
             info.bytes_content, info.fingerprint),
        )  # fmt: skip
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def insert_pieces(self, seg_id: int, pieces: list[Any], starts: list[int], counts: list[int],
                      new_keys: dict[int, str]) -> None:  # fmt: skip
        """Document rows of one segment (pieces in segment order, with their first chunk and chunk
        count), the string keys of newly allocated ids (on each document's first piece), and the
        ids taken back from the retired list."""
        self.conn.executemany(
            "INSERT INTO documents (id, parent, piece, text, text_hash, lead, trail, source_hash, num_tokens, segment,"
            " seg_doc, chunk_start, num_chunks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.doc_id, p.parent, p.index, p.text, text_digest(p.text), p.lead, p.trail, p.source_hash, p.length,
              seg_id, j, starts[j], counts[j]) for j, p in enumerate(pieces)],
        )  # fmt: skip
        self.conn.executemany("INSERT OR IGNORE INTO keys (key, id) VALUES (?, ?)",
                              [(new_keys[p.doc_id], p.doc_id) for p in pieces if p.index == 0 and p.doc_id in new_keys])  # fmt: skip
        self.conn.executemany("DELETE FROM retired WHERE id = ?", [(p.doc_id,) for p in pieces if p.index == 0])

    def record_jobs(self, job: str, firsts: list[Any]) -> None:
        self.conn.executemany("INSERT INTO jobs (job, item, source_hash, doc_id) VALUES (?, ?, ?, ?)",
                              [(job, p.item, p.source_hash, p.doc_id) for p in firsts])  # fmt: skip

    def tombstone(self, ids: Sequence[int], retire: Sequence[int] = ()) -> None:
        """Mark the live rows of ``ids`` deleted (text dropped); remember ``retire`` as deleted documents."""
        self.conn.executemany("UPDATE documents SET deleted = 1, text = NULL WHERE id = ? AND deleted = 0",
                              [(i,) for i in ids])  # fmt: skip
        self.conn.executemany("INSERT OR IGNORE INTO retired (id) VALUES (?)", [(i,) for i in retire])

    def replace_segments(self, old: list[SegmentRow], info: Any | None, moves: list[tuple[DocRow, int, int, int]]) -> None:
        """Compaction: drop the tombstones of ``old`` segments and the segments themselves; with
        ``info``, a new segment at the first one's place, the live rows moved into it
        (``moves``: row, new local index, first chunk, chunk count)."""
        ids = [s.id for s in old]
        marks = ",".join("?" * len(ids))
        self.conn.execute(f"DELETE FROM documents WHERE deleted = 1 AND segment IN ({marks})", ids)
        if info is not None:
            self.conn.execute(f"UPDATE segments SET ord = -ord WHERE id IN ({marks})", ids)  # free the ord
            seg_id = self.insert_segment(info, old[0].ord)
            self.conn.executemany(
                "UPDATE documents SET segment = ?, seg_doc = ?, chunk_start = ?, num_chunks = ? WHERE segment = ? AND seg_doc = ?",
                [(seg_id, j, start, count, r.segment, r.seg_doc) for r, j, start, count in moves],
            )  # fmt: skip
        self.conn.execute(f"DELETE FROM segments WHERE id IN ({marks})", ids)


def text_digest(text: str) -> str:
    from msa.memory.encode import text_hash

    return text_hash(text)


def _describe(table: str, row: tuple) -> str:
    cols = CRC_COLUMNS.get(table, ())
    for name in ("id", "key", "file", "job"):
        if name in cols:
            return f"{name} {row[cols.index(name)]!r}"
    return "row"


def _connect(path: Path, uri: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(uri or str(path), isolation_level=None, check_same_thread=False, timeout=60.0,
                           uri=uri is not None)  # fmt: skip
    conn.create_function("msa_crc", -1, row_crc, deterministic=True)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


class Catalog:
    """The catalog database of one bank. Thread-safe: one connection guarded by a re-entrant lock,
    every transaction runs under it. ``readonly``: a bank opened only to read; when the disk is full
    and the catalog has no write-ahead log to replay it is read as an immutable file. ``on_commit``:
    called with the new generation after every commit."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.on_commit: Callable[[int], None] | None = None
        if not path.exists():
            raise BankCorruptError(str(path), "catalog is missing (not a memory bank?)")
        self._lock = threading.RLock()
        with sqlite_error(path):
            try:
                self._conn = _connect(path)
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("SELECT COUNT(*) FROM manifest").fetchone()
            except sqlite3.OperationalError as e:
                if not (readonly and _no_space(e) and not _has_wal(path)):
                    raise
                self._conn = _connect(path, f"file:{path}?mode=ro&immutable=1")

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any]) -> "Catalog":
        with sqlite_error(path):
            conn = _connect(path)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(f"BEGIN; {SCHEMA}")
                manifest = {**manifest, "generation": 0, "next_id": 0}
                conn.executemany("INSERT INTO manifest (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in manifest.items()])  # fmt: skip
                conn.execute("COMMIT")
            finally:
                conn.close()
        return cls(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A read transaction: every query inside sees one committed state."""
        with self._lock, sqlite_error(self.path):
            self._conn.execute("BEGIN")
            try:
                yield Reader(self._conn, self.path)
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One atomic write transaction; bumps ``generation``. Rolled back on any exception."""
        with self._lock, sqlite_error(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                w = Writer(self._conn, self.path)
                yield w
                self._conn.execute(
                    "UPDATE manifest SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'"
                )
                generation = w.generation()
                pause_point("commit.begin")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # a failed COMMIT (disk full) may have rolled back already
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        pause_point("commit.done")
        if self.on_commit is not None:
            self.on_commit(generation)

    def checkpoint(self) -> None:
        """Move every committed page from the write-ahead log into the main file (and empty the log)."""
        with self._lock, sqlite_error(self.path):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def reader(self) -> "CatalogSnapshot":
        """A read transaction of its own, held open until closed: one catalog state for as long as needed."""
        return CatalogSnapshot(self.path)


class CatalogSnapshot:
    """One committed catalog state, kept by an open read transaction on a connection of its own (the
    WAL keeps that state readable while later writes commit). Thread-safe; closed by ``close`` or
    when garbage-collected."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        with sqlite_error(path):
            try:
                conn = _connect(path)
                conn.execute("BEGIN")
                self.generation = Reader(conn, path).generation()  # the read transaction starts here
            except sqlite3.OperationalError as e:
                if not (_no_space(e) and not _has_wal(path)):
                    raise
                conn = _connect(path, f"file:{path}?mode=ro&immutable=1")
                conn.execute("BEGIN")
                self.generation = Reader(conn, path).generation()
        self._conn = conn
        self._finalizer = weakref.finalize(self, conn.close)

    @contextmanager
    def query(self) -> Iterator[Reader]:
        """Queries on the held state (one thread at a time)."""
        with self._lock, sqlite_error(self.path):
            if not self._finalizer.alive:
                raise BankError(f"{self.path}: this catalog snapshot was closed")
            yield Reader(self._conn, self.path)

    def text(self, internal_id: int) -> str | None:
        """The verified text of the live row ``internal_id`` in this state, None if there is none."""
        with self.query() as r:
            rows = r.text_rows([int(internal_id)])
        return rows[0].text if rows else None

    def user_id(self, internal_id: int) -> int | str:
        with self.query() as r:
            return r.user_id(int(internal_id))

    def close(self) -> None:
        with self._lock:
            self._finalizer()


def _no_space(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return any(s in msg for s in ("disk is full", "disk i/o error", "unable to open"))


def _has_wal(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and os.path.getsize(wal) > 0
