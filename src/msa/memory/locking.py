"""The bank's single-writer lock: an flock on ``writer.lock`` that says who holds it and gives up."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from msa.memory.errors import BankLockedError

log = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
POLL_S = 0.05
NOTICE_S = 1.0  # wait this long before saying that another writer holds the lock


@contextmanager
def writer_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive writer lock of the bank directory ``path``.

    While another process holds it, a warning names it (its pid, recorded in the lock file) after
    ``NOTICE_S``; after ``timeout_s`` seconds BankLockedError (one line naming the lock file)."""
    lock_path = path / LOCK_NAME
    with open(lock_path, "a+b") as f:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout_s:
                    raise BankLockedError(
                        f"{lock_path}: another writer ({_holder(lock_path)}) has held the bank's writer lock for "
                        f"{waited:.0f}s; gave up (lock timeout {timeout_s:g}s)"
                    ) from None
                if not told and waited >= NOTICE_S:
                    log.warning("%s: waiting for another writer (%s) to finish (giving up after %gs)", lock_path,
                                _holder(lock_path), timeout_s)  # fmt: skip
                    told = True
                time.sleep(POLL_S)
        try:
            try:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n".encode())
                f.flush()
            except OSError:  # a full disk: the lock itself still holds
                pass
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "unknown process"
