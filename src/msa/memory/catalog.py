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
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from msa.memory.catalog_reader import DocRow, Reader, SegmentRow, TextRow, text_digest
from msa.memory.catalog_schema import SCHEMA, row_crc
from msa.memory.errors import BankCorruptError, BankError, sqlite_error
from msa.memory.hooks import pause_point

CATALOG_NAME = "catalog.sqlite"

__all__ = ["CATALOG_NAME", "Catalog", "CatalogSnapshot", "DocRow", "Reader", "SegmentRow", "TextRow", "Writer"]


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
            [row for _, row in sorted(
                ((p.item, p.index), (p.doc_id, p.parent, p.index, p.text, text_digest(p.text), p.lead, p.trail,
                                     p.source_hash, p.length, seg_id, j, starts[j], counts[j]))
                for j, p in enumerate(pieces))],  # rows in input order: list_ids orders by row
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
                self._conn = _connect(path, _immutable_uri(path))

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

    def format_version(self) -> int | None:
        """The bank format the manifest records, read without checksums (format 1 has none)."""
        with self._lock, sqlite_error(self.path):
            r = self._conn.execute("SELECT value FROM manifest WHERE key = 'format_version'").fetchone()
        return None if r is None else json.loads(r[0])

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
                conn = _connect(path, _immutable_uri(path))
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


def _immutable_uri(path: Path) -> str:
    """The URI that reads ``path`` as a file nobody writes (no -wal / -shm needed: a full disk)."""
    return f"file:{quote(str(path))}?mode=ro&immutable=1"


def _no_space(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return any(s in msg for s in ("disk is full", "disk i/o error", "unable to open"))


def _has_wal(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.exists() and os.path.getsize(wal) > 0
