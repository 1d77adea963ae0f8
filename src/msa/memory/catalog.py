"""The SQLite catalog: manifest, segments, documents (text, ranges, tombstones), string keys, add jobs.

One connection per bank object, WAL journal (readers never block the writer and see the last commit
before their read transaction began), ``synchronous=FULL``. Every write is one ``BEGIN IMMEDIATE`` ..
``COMMIT`` transaction that also bumps the manifest's ``generation``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from msa.memory.errors import BankCorruptError
from msa.memory.hooks import pause_point

CATALOG_NAME = "catalog.sqlite"

SCHEMA = """
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ord INTEGER NOT NULL UNIQUE,
    file TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    num_docs INTEGER NOT NULL,
    num_chunks INTEGER NOT NULL,
    bytes_routing INTEGER NOT NULL,
    bytes_content INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
);
CREATE TABLE documents (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id INTEGER NOT NULL,
    parent INTEGER,
    text TEXT,
    source_hash TEXT NOT NULL,
    num_tokens INTEGER NOT NULL,
    segment INTEGER NOT NULL REFERENCES segments(id),
    seg_doc INTEGER NOT NULL,
    chunk_start INTEGER NOT NULL,
    num_chunks INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX documents_live_id ON documents(id) WHERE deleted = 0;
CREATE UNIQUE INDEX documents_place ON documents(segment, seg_doc);
CREATE INDEX documents_parent ON documents(parent) WHERE deleted = 0;
CREATE TABLE keys (key TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE);
CREATE TABLE jobs (
    job TEXT NOT NULL, item INTEGER NOT NULL, source_hash TEXT NOT NULL, doc_id INTEGER NOT NULL,
    PRIMARY KEY (job, item)
);
"""


@dataclass(frozen=True)
class DocRow:
    """One document row. ``chunk_start``/``num_chunks`` index the segment's chunks; ``seg_doc`` its
    local document index there."""

    id: int
    parent: int | None
    source_hash: str
    num_tokens: int
    segment: int
    seg_doc: int
    chunk_start: int
    num_chunks: int
    deleted: bool


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


_DOC_COLS = "d.id, d.parent, d.source_hash, d.num_tokens, d.segment, d.seg_doc, d.chunk_start, d.num_chunks, d.deleted"
_SEG_COLS = "id, ord, file, checksum, bytes, num_docs, num_chunks, bytes_routing, bytes_content, fingerprint"


def _doc(r: tuple) -> DocRow:
    return DocRow(*r[:8], bool(r[8]))


class Catalog:
    """The catalog database of one bank. Thread-safe: one connection guarded by a re-entrant lock,
    every transaction runs under it."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            raise BankCorruptError(str(path), "catalog is missing (not a memory bank?)")
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=60.0)
        self._conn.execute("PRAGMA busy_timeout = 60000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any]) -> "Catalog":
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            manifest = {**manifest, "generation": 0, "next_id": 0}
            conn.executemany("INSERT INTO manifest VALUES (?, ?)", [(k, json.dumps(v)) for k, v in manifest.items()])
            conn.execute("COMMIT")
        finally:
            conn.close()
        return cls(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one committed state."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction; bumps ``generation``. Rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute(
                    "UPDATE manifest SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'"
                )
                pause_point("commit.begin")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        pause_point("commit.done")

    # -- queries (call inside read() or write()) ---------------------------------------------------
    @staticmethod
    def manifest(conn: sqlite3.Connection) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM manifest")}

    @staticmethod
    def set_manifest(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO manifest VALUES (?, ?)", (key, json.dumps(value)))

    @staticmethod
    def segments(conn: sqlite3.Connection) -> list[SegmentRow]:
        return [SegmentRow(*r) for r in conn.execute(f"SELECT {_SEG_COLS} FROM segments ORDER BY ord")]

    @staticmethod
    def all_docs(conn: sqlite3.Connection) -> list[DocRow]:
        """Every row (tombstones too), in bank order: segment ord, then position in the segment."""
        q = f"SELECT {_DOC_COLS} FROM documents d JOIN segments s ON d.segment = s.id ORDER BY s.ord, d.seg_doc"
        return [_doc(r) for r in conn.execute(q)]

    @staticmethod
    def live_doc(conn: sqlite3.Connection, doc_id: int) -> DocRow | None:
        r = conn.execute(f"SELECT {_DOC_COLS} FROM documents d WHERE d.id = ? AND d.deleted = 0", (doc_id,)).fetchone()
        return _doc(r) if r else None

    @staticmethod
    def live_family(conn: sqlite3.Connection, doc_id: int) -> list[int]:
        """The document and its live pieces (documents whose parent it is)."""
        rows = conn.execute("SELECT id FROM documents WHERE deleted = 0 AND (id = ? OR parent = ?)", (doc_id, doc_id))
        return [r[0] for r in rows]

    @staticmethod
    def text(conn: sqlite3.Connection, doc_id: int) -> str | None:
        r = conn.execute("SELECT text FROM documents WHERE id = ? AND deleted = 0", (doc_id,)).fetchone()
        return r[0] if r else None

    @staticmethod
    def key_id(conn: sqlite3.Connection, key: str) -> int | None:
        r = conn.execute("SELECT id FROM keys WHERE key = ?", (key,)).fetchone()
        return r[0] if r else None

    @staticmethod
    def job_item(conn: sqlite3.Connection, job: str, item: int) -> tuple[str, int] | None:
        r = conn.execute("SELECT source_hash, doc_id FROM jobs WHERE job = ? AND item = ?", (job, item)).fetchone()
        return (r[0], r[1]) if r else None

    @staticmethod
    def max_id(conn: sqlite3.Connection) -> int:
        r = conn.execute("SELECT MAX(id) FROM documents").fetchone()
        k = conn.execute("SELECT MAX(id) FROM keys").fetchone()
        return max(-1 if r[0] is None else r[0], -1 if k[0] is None else k[0])

    @staticmethod
    def insert_segment(conn: sqlite3.Connection, info: Any, ord_: int | None = None) -> int:
        if ord_ is None:
            ord_ = conn.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM segments").fetchone()[0]
        cur = conn.execute(
            f"INSERT INTO segments ({_SEG_COLS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ord_, info.file, info.checksum, info.bytes, info.num_docs, info.num_chunks,
             info.bytes_routing, info.bytes_content, info.fingerprint),
        )  # fmt: skip
        return int(cur.lastrowid)  # type: ignore[arg-type]

    @staticmethod
    def insert_pieces(conn: sqlite3.Connection, seg_id: int, pieces: list[Any], starts: list[int],
                      counts: list[int], new_keys: dict[int, str]) -> None:  # fmt: skip
        """Document rows of one segment (pieces in segment order, with their first chunk and chunk
        count) and the string keys of newly allocated ids (recorded on each document's first piece)."""
        conn.executemany(
            "INSERT INTO documents (id, parent, text, source_hash, num_tokens, segment, seg_doc, chunk_start, num_chunks)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.doc_id, p.parent, p.text, p.source_hash, p.length, seg_id, j, starts[j], counts[j])
             for j, p in enumerate(pieces)],
        )  # fmt: skip
        conn.executemany("INSERT OR IGNORE INTO keys VALUES (?, ?)",
                         [(new_keys[p.doc_id], p.doc_id) for p in pieces if p.index == 0 and p.doc_id in new_keys])  # fmt: skip
