"""Streaming JSON Lines reading and writing, and the document files ``msa bank add`` reads.

Format: one JSON value (normally an object) per line, UTF-8, ``\\n`` line ends. Blank lines are
skipped on reading. ``"-"`` as a path means stdin (reading) or stdout (writing); a path ending in
``.gz`` is read and written through gzip. An already open text file object is used as is and is not
closed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Union

from msa.data.official import is_memory_file, read_memory_documents

PathOrFile = Union[str, "os.PathLike[str]", IO[str]]

__all__ = ["PathOrFile", "read_jsonl", "write_jsonl", "open_text", "DocumentFile", "DocumentFileError", "read_documents",
           "DOCUMENT_READERS"]


@contextlib.contextmanager
def open_text(path_or_file: PathOrFile, mode: str) -> Iterator[IO[str]]:
    """Open ``path_or_file`` for text reading (``mode="r"``) or writing (``"w"`` / ``"a"``).

    ``"-"`` maps to stdin / stdout, ``*.gz`` goes through gzip, file objects pass through unclosed.
    """
    if mode not in ("r", "w", "a"):
        raise ValueError(f"mode must be 'r', 'w' or 'a', got {mode!r}")
    if not isinstance(path_or_file, (str, os.PathLike)):
        yield path_or_file
        return
    path = os.fspath(path_or_file)
    if path == "-":
        stream = sys.stdin if mode == "r" else sys.stdout
        yield stream
        if mode != "r":
            stream.flush()
        return
    if path.endswith(".gz"):
        handle: IO[str] = io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8", newline="\n")
    else:
        handle = open(path, mode, encoding="utf-8", newline="\n")
    with handle:
        yield handle


def _name_of(path_or_file: PathOrFile) -> str:
    if isinstance(path_or_file, (str, os.PathLike)):
        path = os.fspath(path_or_file)
        return "<stdin>" if path == "-" else path
    return str(getattr(path_or_file, "name", "<stream>"))


def read_jsonl(path_or_file: PathOrFile) -> Iterator[Any]:
    """Yield the JSON value of every non-blank line, lazily.

    Raises ``ValueError("<name>:<line number>: malformed JSON: ...")`` on the first bad line
    (line numbers are 1-based and count blank lines).
    """
    name = _name_of(path_or_file)
    with open_text(path_or_file, "r") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{name}:{lineno}: malformed JSON: {err.msg} (column {err.colno})") from err


def write_jsonl(path_or_file: PathOrFile, records: Iterable[Any], append: bool = False) -> int:
    """Write each record as one compact JSON line (non-ASCII kept as UTF-8); return the count."""
    count = 0
    with open_text(path_or_file, "a" if append else "w") as handle:
        write = handle.write
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
        for record in records:
            write(dumps(record))
            write("\n")
            count += 1
    return count


# -- document files ------------------------------------------------------------------------------


class DocumentFileError(ValueError):
    """A document file that cannot be read; the one-line message names the file (and line or item)."""


@dataclass
class DocumentFile:
    """The documents of one file: ``texts[i]`` with ``ids[i]`` (``ids`` is None when no document has one)."""

    name: str
    texts: list[str]
    ids: list[int | str] | None


def _record(rec: Any, where: str) -> tuple[str, int | str | None]:
    """(text, id) of one JSON document: a string, or an object {"text": str, "id"?: int | str}."""
    if isinstance(rec, str):
        return rec, None
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise DocumentFileError(f'{where}: each document must be a string or an object with a "text" string')
    doc_id = rec.get("id")
    if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, (int, str))):
        raise DocumentFileError(f"{where}: id must be an integer or a string, got {json.dumps(doc_id)}")
    return rec["text"], doc_id


def _documents(name: str, records: list[tuple[str, int | str | None, str]]) -> DocumentFile:
    """Check that either every document has an id or none has; ``records``: (text, id, where)."""
    with_id = [r for r in records if r[1] is not None]
    if with_id and len(with_id) != len(records):
        lacking = next(r for r in records if r[1] is None)
        raise DocumentFileError(f"{lacking[2]}: has no id while {with_id[0][2]} has one: give every document an id, or none")
    return DocumentFile(name, [r[0] for r in records], [r[1] for r in records] if with_id else None)  # type: ignore[misc]


def _decode(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DocumentFileError(f"{name} is not UTF-8 text (byte {e.start})") from None


def _read_jsonl_documents(name: str, raw: bytes) -> DocumentFile:
    text = _decode(name, raw)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DocumentFileError(f"{name}:{n}: malformed JSON ({e.msg}, column {e.colno})") from None
        records.append((*_record(rec, f"{name}:{n}"), f"{name}:{n}"))
    return _documents(name, records)


def _read_json_documents(name: str, raw: bytes) -> DocumentFile:
    try:
        value = json.loads(_decode(name, raw))
    except json.JSONDecodeError as e:
        raise DocumentFileError(f"{name}: malformed JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    if not isinstance(value, list):
        raise DocumentFileError(f"{name}: a .json document file must hold an array of strings or {{\"text\", \"id\"?}} objects")
    return _documents(name, [(*_record(rec, f"{name}[{i}]"), f"{name}[{i}]") for i, rec in enumerate(value)])


def _read_text_documents(name: str, raw: bytes) -> DocumentFile:
    paras = [p.strip() for p in _decode(name, raw).replace("\r\n", "\n").split("\n\n")]
    return DocumentFile(name, [p for p in paras if p], None)


# File name ending -> reader(name, raw bytes); anything else is plain text (blank-line paragraphs).
DOCUMENT_READERS = {".jsonl": _read_jsonl_documents, ".json": _read_json_documents}


def _sniff(raw: bytes):
    """The reader for stdin: by the first non-blank character."""
    head = raw.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    return {b"{": _read_jsonl_documents, b"[": _read_json_documents}.get(head, _read_text_documents)


def read_documents(path: str | os.PathLike[str], stdin: IO[bytes] | None = None) -> DocumentFile:
    """Read a document file: ``.jsonl`` ({"id"?, "text"} or a string per line), ``.json`` (an array of
    those), the authors' memory files (``*.pkl``, ``mdata_*.json``: id = index in the file, through the
    restricted reader of ``msa.data.official``), anything else plain UTF-8 text with blank-line-separated
    documents; ``"-"`` reads ``stdin``
    (default ``sys.stdin.buffer``) and picks the format by its first character. A UTF-8 byte-order mark
    is ignored. Ids: every document has one (int or str) or none has.

    Raises DocumentFileError (one line naming the file, and line or item) for anything unreadable.
    """
    path = os.fspath(path)
    if path == "-":
        raw, name = (stdin or sys.stdin.buffer).read(), "<stdin>"
    else:
        if not os.path.isfile(path):
            raise DocumentFileError(f"no such file: {path}")
        if is_memory_file(path):  # the authors' mdata_*.pkl / mdata_*.json: id = index in the file
            texts, ids = read_memory_documents(path)
            return DocumentFile(path, texts, ids)
        with open(path, "rb") as f:
            raw, name = f.read(), path
    ext = os.path.splitext(path)[1].lower()
    reader = _sniff(raw) if path == "-" else DOCUMENT_READERS.get(ext, _read_text_documents)
    return reader(name, raw)
