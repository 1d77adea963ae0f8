"""Errors raised by the memory bank. All derive from ``BankError``."""

from __future__ import annotations


class BankError(Exception):
    """Base class of every memory-bank error."""


class BankCorruptError(BankError):
    """A bank file is missing, truncated, or fails its checksum / consistency check.

    ``file``: the offending file (or the catalog) as a path string.
    """

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class BankModelMismatch(BankError):
    """The bank was encoded by another model (fingerprint) or another tokenizer."""


class BankReadOnlyError(BankError):
    """A write was attempted on a bank opened with ``readonly=True``."""


class UnknownDocumentError(BankError, KeyError):
    """An id given to ``delete`` / ``update`` / ``get_text`` names no live document."""

    def __init__(self, ids: list):
        super().__init__(f"unknown document id(s): {ids}")
        self.ids = ids

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateDocumentError(BankError, ValueError):
    """An id is repeated within one call, or already names a live document with another text."""


class DocumentTooLongError(BankError, ValueError):
    """A document exceeds ``max_doc_tokens`` and the bank was asked to reject long documents."""
