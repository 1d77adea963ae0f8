"""The persistent memory bank (catalog + immutable segments) and its tiered device access."""

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
