"""Process group setup for Memory Parallel, with failure detection that names the failed rank.

Every rank runs a heartbeat thread that publishes ``"<beats> <phase step>"`` to the rendezvous store
(its own client connection) every ``interval_s``. Each collective runs inside ``DistContext.phase``;
when it raises (a peer's socket closed, or the process group's ``timeout`` expired), the survivor
reads every rank's heartbeat twice, ``2.5 * interval_s`` apart: a rank whose counter did not move is
dead, a rank whose step is behind ours never reached this collective (hung). The result is a
``RankFailureError`` naming those ranks, on every survivor, instead of a silent hang. Under NCCL a
collective on a dead peer may block until the watchdog, so there each setup phase first passes a
barrier on a side gloo group (bounded by the same timeout); the per-router-layer exchange
(``DistContext.collective``) skips that barrier, a host round trip per layer, and a dead peer there
is named by the watchdog. Between collectives the ``watchdog`` ends every rank when one stops answering.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from msa.parallel.watchdog import Watchdog, end_job, publish_process

log = logging.getLogger(__name__)

STORE_PREFIX = "msa"


class RankFailureError(RuntimeError):
    """One or more ranks died or hung during a collective phase. ``ranks``: the failed ranks."""

    def __init__(self, ranks: list[int], phase: str, detail: str):
        names = ", ".join(str(r) for r in ranks)
        super().__init__(f"Memory Parallel: rank(s) {names} failed during {phase!r} ({detail})")
        self.ranks = ranks
        self.phase = phase


class _Heartbeat:
    """Background publisher of this rank's liveness counter and current phase step."""

    def __init__(self, store: dist.Store, rank: int, interval_s: float):
        self.store, self.rank, self.interval_s = store, rank, interval_s
        self.step = 0
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"msa-heartbeat-{rank}", daemon=True)

    def publish(self) -> None:
        self.beats += 1
        self.store.set(f"beat/{self.rank}", f"{self.beats} {self.step}")

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
            except Exception:  # the store went away (its host died): survivors report it
                return

    def stop(self) -> None:
        self._stop.set()


@dataclass
class DistContext:
    """A rank's view of the Memory Parallel process group.

    device: this rank's compute device (``cuda:LOCAL_RANK`` under NCCL). comm_device: where tensors
    given to collectives live. cpu_group: a gloo group for objects and liveness barriers (None = the
    default group is gloo already). timeout_s bounds every collective.
    """

    rank: int
    world: int
    backend: str
    device: torch.device
    timeout_s: float
    store: dist.Store
    heartbeat: _Heartbeat
    interval_s: float
    cpu_group: Any = None
    store_host_rank: int | None = 0
    watchdog: Watchdog | None = None
    _step: int = field(default=0, repr=False)

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one collective phase; a failure of any rank becomes ``RankFailureError`` naming it."""
        with self._named(name, barrier=self.backend != "gloo"):
            yield

    @contextmanager
    def collective(self, name: str) -> Iterator[None]:
        """A hot-path collective (the per-router-layer exchange): ``phase`` without the side gloo
        barrier, which costs a host round trip. On gloo a failure is named exactly as in ``phase``;
        under NCCL a dead peer is named by the watchdog (its heartbeat stops) within ``timeout_s``,
        before the process group's own, longer timeout ends the job."""
        with self._named(name, barrier=False):
            yield

    @contextmanager
    def _named(self, name: str, barrier: bool) -> Iterator[None]:
        self._step += 1
        self.heartbeat.step = self._step
        try:
            if barrier:
                dist.barrier(group=self.cpu_group)
            yield
        except RankFailureError:
            raise
        except Exception as e:
            ranks, detail = self.diagnose()
            if not ranks:
                raise
            raise RankFailureError(ranks, name, detail) from e

    def diagnose(self) -> tuple[list[int], str]:
        """Ranks that are dead (heartbeat stopped) or behind this rank's phase step, and a description."""
        try:
            first = self._read_beats()
            time.sleep(2.5 * self.interval_s)
            second = self._read_beats()
        except Exception as e:
            if self.store_host_rank is not None and self.store_host_rank != self.rank:
                return [self.store_host_rank], f"the rendezvous store it hosts is unreachable: {e}"
            return [], str(e)
        dead = [r for r in range(self.world) if r != self.rank and first.get(r, (0, 0))[0] == second.get(r, (0, 0))[0]]
        behind = [r for r in range(self.world) if r != self.rank and r not in dead and second[r][1] < self._step]
        parts = []
        if dead:
            parts.append(f"no heartbeat from rank(s) {dead} for {2.5 * self.interval_s:.1f}s (dead)")
        if behind:
            parts.append(f"rank(s) {behind} never reached step {self._step} (hung)")
        return sorted(dead + behind), "; ".join(parts)

    def _await_others(self, limit_s: float | None = None) -> list[int]:
        """Wait until every other rank has closed; returns those that stopped beating without closing.

        Ranks still beating are waited for (at most ``limit_s``, None = as long as they beat): once the
        store's host is gone, nobody could name or end a rank that stops later."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        last = self._read_beats()
        while deadline is None or time.monotonic() < deadline:
            waiting = [r for r in range(self.world) if r != self.rank and not self.store.check([f"closed/{r}"])]
            if not waiting:
                return []
            time.sleep(2.5 * self.interval_s)
            now = self._read_beats()
            # a rank that closed during the sleep stopped beating on purpose
            stopped = [r for r in waiting if now[r] == last[r] and not self.store.check([f"closed/{r}"])]
            if stopped:  # dead or stopped (SIGSTOP): nobody else will end them
                return stopped
            last = now
        return []

    def _read_beats(self) -> dict[int, tuple[int, int]]:
        out = {}
        for r in range(self.world):
            beats, step = self.store.get(f"beat/{r}").decode().split()
            out[r] = (int(beats), int(step))
        return out

    def all_gather_object(self, obj: Any, name: str = "gather") -> list[Any]:
        out: list[Any] = [None] * self.world
        with self.phase(name):
            dist.all_gather_object(out, obj, group=self.cpu_group)
        return out

    def all_gather_ints(self, values: list[int], name: str = "gather") -> torch.Tensor:
        """Every rank's ``values`` (same length everywhere) as a [world, n] long CPU tensor, over the
        gloo group: a tensor collective, no pickling."""
        mine = torch.tensor(values, dtype=torch.long)
        out = torch.empty(self.world, mine.numel(), dtype=torch.long)
        with self.phase(name):
            dist.all_gather(list(out.unbind(0)), mine, group=self.cpu_group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0, name: str = "broadcast") -> Any:
        box = [obj]
        with self.phase(name):
            dist.broadcast_object_list(box, src=src, group=self.cpu_group)
        return box[0]

    def barrier(self, name: str = "barrier") -> None:
        with self.phase(name):
            dist.barrier(group=self.cpu_group)

    def close(self, linger_s: float | None = None) -> None:
        """Stop the heartbeat and destroy the process group. The rank that hosts the rendezvous store
        (every rank, when torchrun's agent hosts it) first waits (at most ``linger_s``; None: while
        they beat) until every other rank has closed, so a rank still
        diagnosing a failure never finds the store gone and blames its host for it; a rank that stopped
        beating without closing (dead, or stopped by a signal) is named and, on this host, killed, so
        the launcher does not wait for it. A rank that cannot reach the store to say it closed names
        the store's host the same way."""
        stopped: list[int] = []
        try:
            self.store.set(f"closed/{self.rank}", "1")
            if self.store_host_rank in (self.rank, None):  # None: torchrun's agent keeps the store up
                stopped = self._await_others(linger_s)
        except Exception as e:  # a broken store must not make closing fail
            log.debug("rank %d: closing without waiting for the others: %s", self.rank, e)
            if self.store_host_rank is not None and self.store_host_rank != self.rank:
                stopped = [self.store_host_rank]
        if self.watchdog is not None:
            self.watchdog.stop()
        if stopped:
            end_job(self.store, self.rank, stopped, "no heartbeat when this rank finished", exit=lambda code: None)
        self.heartbeat.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def _connect(host: str, port: int, world: int, master: bool, timeout_s: float) -> dist.Store:
    store = dist.TCPStore(host, port, world if master else None, is_master=master,
                          timeout=timedelta(seconds=timeout_s), wait_for_workers=False)  # fmt: skip
    return dist.PrefixStore(STORE_PREFIX, store)


def init_distributed(backend: str | None = None, timeout_s: float = 120.0, heartbeat_s: float = 0.5) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). backend: "nccl" when CUDA is available, else "gloo".

    timeout_s bounds every collective (a dead or hung rank is reported within about
    ``timeout_s + 2.5 * heartbeat_s``, usually much sooner for a dead one), and a rank whose heartbeat
    stops for ``timeout_s`` ends the whole job by name (``watchdog``)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    # torchrun's agent hosts the store when it says so; otherwise rank 0 does (as env:// would).
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = _connect(host, port, world, master=(rank == 0 and not agent), timeout_s=timeout_s)
    timeout = timedelta(seconds=timeout_s)
    # Under NCCL the hot-path exchange has no side barrier (``DistContext.collective``): the process
    # group waits longer than the watchdog, so a dead peer is named before NCCL ends the job.
    pg_timeout = timeout if backend == "gloo" else timedelta(seconds=2 * timeout_s + 10)
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world, timeout=pg_timeout)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    beat_store = _connect(host, port, world, master=False, timeout_s=timeout_s)
    heartbeat = _Heartbeat(beat_store, rank, heartbeat_s)
    publish_process(store, rank)
    heartbeat.start()
    host_rank = None if agent else 0
    watchdog = Watchdog(_connect(host, port, world, master=False, timeout_s=max(1.0, 4 * heartbeat_s)), rank, world,
                        heartbeat_s, timeout_s, host_rank)  # fmt: skip
    ctx = DistContext(rank, world, backend, device, timeout_s, store, heartbeat, heartbeat_s, cpu_group,
                      store_host_rank=host_rank, watchdog=watchdog)  # fmt: skip
    ctx.barrier("init")  # every heartbeat key exists before any diagnosis reads it
    watchdog.start()
    log.info("rank %d/%d joined (%s, %s, timeout %.0fs)", rank, world, backend, device, timeout_s)
    return ctx
