"""The Memory Parallel watchdog: when a rank stops answering, every rank ends, naming it.

A collective on a stopped (SIGSTOP) or wedged rank is bounded by the process group's timeout, but
between collectives (decode, or after the others have finished) nothing would notice: the others
finish or wait, and the launcher waits for the stopped rank forever. Every rank therefore runs a
thread that reads all heartbeats (``dist._Heartbeat``) on a store connection of its own; a rank whose
counter has not moved for ``timeout_s`` (or the rendezvous store, when its host stops answering) is
declared stopped: the watchdog logs one line naming it, kills it when it runs on this host (its pid
is published at start), and ends this process with ``EXIT_PEER_STOPPED``. Every survivor does the
same, so the whole job ends within about ``timeout_s`` plus one heartbeat interval.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Callable

import torch.distributed as dist

log = logging.getLogger(__name__)

EXIT_PEER_STOPPED = 4


def publish_process(store: dist.Store, rank: int) -> None:
    """Record where this rank runs (host name and pid) for the watchdogs of the others."""
    store.set(f"proc/{rank}", f"{socket.gethostname()} {os.getpid()}")


def end_job(store: dist.Store | None, rank: int, ranks: list[int], why: str,
            exit: Callable[[int], None] = os._exit) -> None:  # fmt: skip
    """Log ``why`` naming ``ranks``, kill those of them on this host, and end this process."""
    names = ", ".join(str(r) for r in ranks)
    log.critical("Memory Parallel: rank(s) %s stopped answering (%s); rank %d ends the job", names, why, rank)
    host = socket.gethostname()
    for r in ranks:
        try:
            where = store.get(f"proc/{r}").decode().split() if store is not None else []
        except Exception:  # the store is what stopped answering
            where = []
        if len(where) == 2 and where[0] == host:
            try:
                os.kill(int(where[1]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
    for handler in logging.getLogger().handlers:
        handler.flush()
    exit(EXIT_PEER_STOPPED)


class Watchdog:
    """Background check of every other rank's heartbeat (see the module docstring).

    store: a store connection of the watchdog's own (short timeout); store_host_rank: the rank whose
    process hosts the store (None: torchrun's agent does), blamed when the store stops answering.
    """

    def __init__(self, store: dist.Store, rank: int, world: int, interval_s: float, timeout_s: float,
                 store_host_rank: int | None):  # fmt: skip
        self.store, self.rank, self.world = store, rank, world
        self.interval_s, self.timeout_s, self.store_host_rank = interval_s, timeout_s, store_host_rank
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"msa-watchdog-{rank}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        now = time.monotonic()
        seen: dict[int, tuple[str, float]] = {r: ("", now) for r in range(self.world) if r != self.rank}
        store_ok = now
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                for r in list(seen):
                    if self.store.check([f"closed/{r}"]):
                        del seen[r]  # finished normally
                        continue
                    beat = self.store.get(f"beat/{r}").decode()
                    if beat != seen[r][0]:
                        seen[r] = (beat, now)
                store_ok = now
            except Exception as e:  # the store does not answer
                if self._stop.is_set():
                    return
                if now - store_ok > self.timeout_s:
                    blamed = [self.store_host_rank] if self.store_host_rank is not None else []
                    end_job(None, self.rank, blamed, f"the rendezvous store did not answer for {self.timeout_s:.0f}s: {e}")
                continue
            stalled = sorted(r for r, (_, t) in seen.items() if now - t > self.timeout_s)
            if stalled and not self._stop.is_set():
                end_job(self.store, self.rank, stalled, f"no heartbeat for {self.timeout_s:.0f}s")
