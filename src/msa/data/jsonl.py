"""Streaming JSON Lines reading and writing.

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
from typing import IO, Any, Union

PathOrFile = Union[str, "os.PathLike[str]", IO[str]]

__all__ = ["PathOrFile", "read_jsonl", "write_jsonl", "open_text"]


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
