"""Upgrading a format-1 catalog in place to format 2 (row checksums, piece order, retired ids).

One transaction: the new columns, tables, indexes and triggers of ``catalog_schema``, every row's
checksum and text hash computed, pieces numbered in id order under their first piece, deleted
documents remembered as retired. Format 1 did not keep the separators between the pieces of a split
document: the upgrade joins them with one space and records that text's hash as the document's, so
``get_text`` of such a document gives its pieces joined by single spaces (logged).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from msa.memory.catalog_schema import CRC_COLUMNS, HASH_INDEX, RETIRED, TRIGGERS, row_crc
from msa.memory.encode import text_hash
from msa.memory.errors import sqlite_error

log = logging.getLogger(__name__)

_NEW_COLUMNS = {
    "manifest": ["crc TEXT NOT NULL DEFAULT ''"],
    "segments": ["crc TEXT NOT NULL DEFAULT ''"],
    "documents": ["piece INTEGER NOT NULL DEFAULT 0", "text_hash TEXT NOT NULL DEFAULT ''",
                  "lead TEXT NOT NULL DEFAULT ''", "trail TEXT NOT NULL DEFAULT ''", "crc TEXT NOT NULL DEFAULT ''"],
    "keys": ["crc TEXT NOT NULL DEFAULT ''"],
    "jobs": ["crc TEXT NOT NULL DEFAULT ''"],
}  # fmt: skip


def upgrade_v1(path: Path, format_version: int) -> int:
    """Upgrade the catalog at ``path`` from format 1 to ``format_version`` (call under the writer lock;
    a catalog already upgraded is left alone); returns the split documents whose text is now their
    pieces joined by single spaces."""
    with sqlite_error(path):
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.create_function("msa_crc", -1, row_crc, deterministic=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if json.loads(conn.execute("SELECT value FROM manifest WHERE key = 'format_version'").fetchone()[0]) != 1:
                conn.execute("ROLLBACK")  # another process upgraded it meanwhile
                return 0
            for table, cols in _NEW_COLUMNS.items():
                for col in cols:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
            docs = conn.execute("SELECT row, id, parent, text, source_hash, deleted FROM documents ORDER BY id").fetchall()
            pieces: dict[int, list[tuple]] = {}
            for r in docs:
                if r[2] is not None and not r[5]:
                    pieces.setdefault(r[2], []).append(r)
            for row, _i, _p, text, _h, _d in docs:
                conn.execute("UPDATE documents SET text_hash = ? WHERE row = ?", (text_hash(text) if text else "", row))
            joined = 0
            for parent, rest in pieces.items():
                first = next((r for r in docs if r[1] == parent and not r[5]), None)
                if first is None:
                    continue
                text = " ".join([first[3]] + [r[3] for r in rest])
                whole = text_hash(text)
                conn.execute("UPDATE documents SET source_hash = ? WHERE row = ?", (whole, first[0]))
                for j, r in enumerate(rest, 1):
                    conn.execute("UPDATE documents SET piece = ?, lead = ' ', source_hash = ? WHERE row = ?", (j, whole, r[0]))
                joined += 1
            conn.execute(RETIRED)
            conn.execute("INSERT OR IGNORE INTO retired SELECT id FROM documents WHERE deleted = 1 AND parent IS NULL "
                         "AND id NOT IN (SELECT id FROM documents WHERE deleted = 0)")  # fmt: skip
            conn.execute("UPDATE manifest SET value = ? WHERE key = 'format_version'", (json.dumps(format_version),))
            conn.execute(HASH_INDEX)
            for trigger in TRIGGERS:
                conn.execute(trigger)
            for table, cols in CRC_COLUMNS.items():
                conn.execute(f"UPDATE {table} SET crc = msa_crc({', '.join(cols)})")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
    log.warning("%s: upgraded the catalog to format %d (%d split document(s) now read as their pieces joined "
                "by single spaces)", path, format_version, joined)  # fmt: skip
    return joined
