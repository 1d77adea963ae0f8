"""Document ids as users give them, and how they map onto the bank's internal integer ids.

A user id (``DocId``) is an int in [0, MAX_ID] or a non-empty str, kept as given: a bank never turns
"123" into 123 or back. Internally every stored row has an integer id (the id the model sees in the
document's wrapper): an int user id is its own internal id; a str id is given an internal id once
(table ``keys``) and keeps it after a delete; the pieces of a split document get internal ids of
their own. An internal id that belongs to a str id or to a piece is therefore not free as an int id.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from msa.memory.errors import BankError, DuplicateDocumentError

DocId = int | str
# Split budgets are measured with a gid of 18 digits (``encode.PLACEHOLDER_GID``): a longer id could
# make a piece longer than measured.
MAX_ID = 10**18 - 1


class InvalidIdError(BankError, TypeError):
    """A document id that is neither an int in [0, MAX_ID] nor a non-empty str."""


def check_int_id(d: Any) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= int(d) <= MAX_ID:
        raise InvalidIdError(f"document ids are ints from 0 to {MAX_ID} or non-empty strings, got {d!r}")
    return int(d)


def check_id(d: Any) -> DocId:
    if isinstance(d, str):
        if not d:
            raise InvalidIdError("a string document id must not be empty")
        return d
    return check_int_id(d)


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        if not t.strip():
            raise ValueError(f"text {i} is empty or whitespace only: nothing was stored")
    return texts


def check_ids(ids: Sequence[DocId | None] | None, n: int) -> list[DocId | None]:
    """One id per text (None: the bank allocates one), validated, none repeated."""
    if ids is None:
        return [None] * n
    if isinstance(ids, (str, int)):
        raise TypeError("ids must be a list (one per text)")
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} texts")
    out = [None if d is None else check_id(d) for d in ids]
    seen: set = set()
    dup = []
    for d in out:
        if d is not None and (type(d), d) in seen:
            dup.append(d)
        seen.add((type(d), d))
    if dup:
        raise DuplicateDocumentError(f"ids repeated within one add: {dup}")
    return out


def parse_token(token: str) -> tuple[type | None, str]:
    """(forced type or None, the rest) of a command-line token: "str:x" -> (str, "x"), "int:5" -> (int, "5")."""
    for prefix, kind in (("str:", str), ("int:", int)):
        if token.startswith(prefix):
            return kind, token[len(prefix) :]
    return None, token
