"""The catalog's tables, and the row checksums that triggers keep and readers verify.

Every table whose rows answers depend on has a ``crc`` column: ``row_crc`` of the columns listed in
``CRC_COLUMNS``, written by the insert and update triggers below (through the ``msa_crc`` function that
every connection of the bank registers), so no write path can forget it. Texts are covered through
``text_hash`` (the row checksum covers the hash; readers check the text against it).
"""

from __future__ import annotations

import hashlib

CRC_COLUMNS: dict[str, tuple[str, ...]] = {
    "manifest": ("key", "value"),
    "segments": ("id", "ord", "file", "checksum", "bytes", "num_docs", "num_chunks", "bytes_routing", "bytes_content",
                 "fingerprint"),
    "documents": ("id", "parent", "piece", "text_hash", "lead", "trail", "source_hash", "num_tokens", "segment",
                  "seg_doc", "chunk_start", "num_chunks", "deleted"),
    "keys": ("key", "id"),
    "jobs": ("job", "item", "source_hash", "doc_id"),
}  # fmt: skip
_ROW_KEY = {"manifest": "key", "segments": "id", "documents": "row", "keys": "key", "jobs": "rowid"}

HASH_INDEX = "CREATE INDEX documents_hash ON documents(source_hash) WHERE deleted = 0 AND parent IS NULL"
RETIRED = "CREATE TABLE retired (id INTEGER PRIMARY KEY)"
TABLES = f"""
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc TEXT NOT NULL DEFAULT '');
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
    fingerprint TEXT NOT NULL,
    crc TEXT NOT NULL DEFAULT ''
);
CREATE TABLE documents (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id INTEGER NOT NULL,
    parent INTEGER,
    piece INTEGER NOT NULL DEFAULT 0,
    text TEXT,
    text_hash TEXT NOT NULL,
    lead TEXT NOT NULL DEFAULT '',
    trail TEXT NOT NULL DEFAULT '',
    source_hash TEXT NOT NULL,
    num_tokens INTEGER NOT NULL,
    segment INTEGER NOT NULL REFERENCES segments(id),
    seg_doc INTEGER NOT NULL,
    chunk_start INTEGER NOT NULL,
    num_chunks INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    crc TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX documents_live_id ON documents(id) WHERE deleted = 0;
CREATE UNIQUE INDEX documents_place ON documents(segment, seg_doc);
CREATE INDEX documents_parent ON documents(parent) WHERE deleted = 0;
{HASH_INDEX};
CREATE TABLE keys (key TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, crc TEXT NOT NULL DEFAULT '');
CREATE TABLE jobs (
    job TEXT NOT NULL, item INTEGER NOT NULL, source_hash TEXT NOT NULL, doc_id INTEGER NOT NULL,
    crc TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job, item)
);
{RETIRED};
"""


def _triggers() -> list[str]:
    """One insert and one update trigger per checksummed table, each one statement."""
    out = []
    for table, cols in CRC_COLUMNS.items():
        new = ", ".join(f"NEW.{c}" for c in cols)
        key = _ROW_KEY[table]
        body = f"BEGIN UPDATE {table} SET crc = msa_crc({new}) WHERE {key} = NEW.{key}; END;"
        out.append(f"CREATE TRIGGER {table}_crc_insert AFTER INSERT ON {table} {body}")
        out.append(f"CREATE TRIGGER {table}_crc_update AFTER UPDATE OF {', '.join(cols)} ON {table} {body}")
    return out


TRIGGERS = _triggers()
SCHEMA = TABLES + "\n".join(TRIGGERS)


def row_crc(*values: object) -> str:
    """Checksum of one row's values (ints, strings, None), as the triggers store it."""
    return hashlib.blake2b(repr(values).encode("utf-8"), digest_size=8).hexdigest()
