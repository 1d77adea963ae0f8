"""Durable file primitives: checksums, atomic writes (temp name, fsync, rename, fsync directory)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from msa.memory.errors import disk_error
from msa.memory.hooks import pause_point

TMP_PREFIX = ".tmp-"
_BLOCK = 8 << 20


def checksum_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def checksum_file(path: Path) -> str:
    """blake2b (160 bit) of the file, read in blocks."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, pause_name: str | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either no file or the whole file there.

    The bytes go to a temp name in the same directory, are fsynced, renamed over ``path``, and the
    directory is fsynced. ``pause_name``: a hook point reached with half the bytes written (tests).
    A full disk raises BankDiskFullError naming ``path`` (the temp file is removed).
    """
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if pause_name:
                f.flush()
                pause_point(pause_name)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        err = disk_error(str(path), e)
        if err is e:
            raise
        raise err from e
