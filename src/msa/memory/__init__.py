"""The persistent memory bank (catalog + immutable segments) and its tiered device access.

    bank         MemoryBank: the public surface (reads, writes, snapshots)
    layout       the bank directory, BankSettings, building a new bank
    catalog      every SQL statement: transactions, held catalog states (``catalog_reader``: verified
                 reads; ``catalog_schema``: tables and the row checksums its triggers keep)
    writer       adds as plan -> encode -> commit (BankWriter, AddReport, DeleteReport)
    encode       DocumentEncoder: tokenising, splitting long texts, batching, progress
    segments     immutable segment files (``files``: durable writes)
    access       BankSnapshot: routing and fetch over segments, the texts of its own catalog state
    compaction   rewriting segments without tombstones
    integrity    check(), the lost-commit check, the orphan sweep
    locking      the single-writer lock; ``ids``: user ids; ``errors``: every BankError
"""

from msa.memory.access import BankSnapshot, LoadedSegment, tile_doc_scores
from msa.memory.bank import BankExistsError, BankSettings, MemoryBank
from msa.memory.encode import DocumentEncoder
from msa.memory.errors import (
    BankCorruptError,
    BankDiskFullError,
    BankError,
    BankLockedError,
    BankModelMismatch,
    BankReadOnlyError,
    DocumentPieceError,
    DocumentTooLongError,
    DuplicateDocumentError,
    LostCommitsError,
    UnknownDocumentError,
)
from msa.memory.ids import DocId, InvalidIdError
from msa.memory.writer import AddReport, BankWriter, DeleteReport

__all__ = [
    "AddReport",
    "BankCorruptError",
    "BankDiskFullError",
    "BankError",
    "BankExistsError",
    "BankLockedError",
    "BankModelMismatch",
    "BankReadOnlyError",
    "BankSettings",
    "BankSnapshot",
    "BankWriter",
    "DeleteReport",
    "DocId",
    "DocumentEncoder",
    "DocumentPieceError",
    "DocumentTooLongError",
    "DuplicateDocumentError",
    "InvalidIdError",
    "LoadedSegment",
    "LostCommitsError",
    "MemoryBank",
    "UnknownDocumentError",
    "tile_doc_scores",
]
