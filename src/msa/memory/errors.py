"""Errors raised by the memory bank. All derive from ``BankError``."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Iterator


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


class BankDiskFullError(BankError, OSError):
    """The disk holding a bank file is full; the write was rolled back (nothing half stored)."""


class BankLockedError(BankError):
    """Another writer holds the bank's writer lock (or the catalog) for longer than the lock timeout."""


class DocumentPieceError(BankError, ValueError):
    """An id names one piece of a split document; the document is named by its first piece's id."""


class LostCommitsError(BankCorruptError):
    """The catalog is behind commits that were made (its write-ahead log was lost): nothing is swept."""


_CORRUPT = ("malformed", "not a database", "no such table", "no such column", "file is encrypted", "corrupt",
            "database schema")  # fmt: skip
_FULL = ("database or disk is full", "disk is full")
_LOCKED = ("database is locked", "database is busy")


def describe_sqlite(path: str, e: BaseException) -> BankError:
    """The one BankError (naming ``path``) that an sqlite3 error stands for (an I/O error on a file
    system with no room left is a full disk: SQLite reports short writes of its WAL index so)."""
    msg = str(e)
    low = msg.lower()
    if any(s in low for s in _FULL) or ("i/o error" in low and _no_room(path)):
        return BankDiskFullError(f"{path}: disk full ({msg}); nothing was stored, free space and run it again")
    if any(s in low for s in _LOCKED):
        return BankLockedError(f"{path}: locked by another process ({msg})")
    if any(s in low for s in _CORRUPT):
        return BankCorruptError(path, f"corrupt catalog ({msg})")
    return BankCorruptError(path, f"catalog error ({msg})")


def _no_room(path: str) -> bool:
    import os

    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (256 << 10)


def disk_error(path: str, e: OSError) -> BankError | OSError:
    """A BankError naming ``path`` for a full disk (ENOSPC, EDQUOT); other OS errors unchanged."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return BankDiskFullError(f"{path}: disk full ({e.strerror}); nothing was stored, free space and run it again")
    return e


@contextmanager
def sqlite_error(path) -> Iterator[None]:
    """Turn any sqlite3 error raised inside into the one BankError naming ``path``."""
    try:
        yield
    except sqlite3.Error as e:
        raise describe_sqlite(str(path), e) from e
    except OSError as e:
        err = disk_error(str(path), e)
        if err is e:
            raise
        raise err from e
