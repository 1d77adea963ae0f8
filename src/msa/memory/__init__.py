"""The persistent memory bank (catalog + immutable segments) and its tiered device access."""

from msa.memory.access import BankSnapshot, LoadedSegment, tile_doc_scores
from msa.memory.bank import BankSettings, MemoryBank
from msa.memory.errors import (
    BankCorruptError,
    BankError,
    BankModelMismatch,
    BankReadOnlyError,
    DocumentTooLongError,
    DuplicateDocumentError,
    UnknownDocumentError,
)

__all__ = [
    "BankCorruptError",
    "BankError",
    "BankModelMismatch",
    "BankReadOnlyError",
    "BankSettings",
    "BankSnapshot",
    "DocumentTooLongError",
    "DuplicateDocumentError",
    "LoadedSegment",
    "MemoryBank",
    "UnknownDocumentError",
    "tile_doc_scores",
]
