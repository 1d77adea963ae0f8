"""Background add jobs: persisted before they are accepted, resumed after a restart of the server.

A job's spec (texts and ids) is written once, atomically, to ``<id>.spec.json`` in the bank's job
directory before the client gets its id; its state (status, documents done, their ids) is rewritten
atomically to ``<id>.json`` after every committed step. A step adds ``job_slice`` documents with the
bank's resumable ``add(..., job="<job id>.<step>")``: a step re-run after a crash skips what the bank
had committed, so a resumed job stores every document exactly once.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from msa.memory import BankError
from msa.memory.files import atomic_write

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^job-[0-9a-f]{16}$")
ACTIVE = ("queued", "running")


@dataclass
class Job:
    """The public state of one add job (``GET /v1/jobs/{id}``)."""

    id: str
    bank: str
    total: int
    on_duplicate: str | None = None
    status: str = "queued"  # queued | running | done | failed
    done: int = 0
    ids: list[Any] = field(default_factory=list)
    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    error: str | None = None
    resumed: int = 0
    step: int = 0  # documents per step, fixed at the first run (a resumed step keeps its job name)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"object": "job", **asdict(self)}


AddFn = Callable[[list[str], list[Any] | None, str, str | None], dict[str, Any]]
WriteFn = Callable[[Callable[[], Any]], Any]


class JobStore:
    """The jobs of one bank, kept in ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def create(self, bank: str, texts: list[str], ids: list[Any] | None, on_duplicate: str | None) -> Job:
        self.root.mkdir(parents=True, exist_ok=True)
        job = Job(f"job-{uuid.uuid4().hex[:16]}", bank, len(texts), on_duplicate)
        atomic_write(self.root / f"{job.id}.spec.json", json.dumps({"texts": texts, "ids": ids}).encode())
        self.save(job)
        return job

    def save(self, job: Job) -> None:
        job.updated = time.time()
        atomic_write(self.root / f"{job.id}.json", json.dumps(asdict(job)).encode())

    def spec(self, job_id: str) -> tuple[list[str], list[Any] | None]:
        d = json.loads((self.root / f"{job_id}.spec.json").read_text())
        return d["texts"], d["ids"]

    def load(self) -> list[Job]:
        """Every job kept here, oldest first (a state file that cannot be read is logged and skipped)."""
        if not self.root.is_dir():
            return []
        jobs = []
        for p in sorted(self.root.glob("job-*.json")):
            if p.name.endswith(".spec.json"):
                continue
            try:
                jobs.append(Job(**json.loads(p.read_text())))
            except (OSError, ValueError, TypeError) as e:
                log.warning("skipping unreadable job state %s: %s", p, e)
        return sorted(jobs, key=lambda j: j.created)


class JobRunner:
    """Runs a bank's jobs one after another on its own thread; every step holds the bank's write lock.

    add(texts, ids, job_name, on_duplicate) -> {"ids", "added", "unchanged", "replaced"} stores one step.
    """

    def __init__(self, name: str, store: JobStore, add: AddFn, write: WriteFn, slice_size: int):
        self.name, self.store, self.add, self.write, self.slice_size = name, store, add, write, slice_size
        self.jobs: dict[str, Job] = {j.id: j for j in store.load()}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        for j in self.jobs.values():
            if j.status in ACTIVE:
                j.resumed += 1
                j.status = "queued"
                store.save(j)
                log.info("bank %s: resuming job %s (%d/%d documents done)", name, j.id, j.done, j.total)
                self._queue.put(j.id)
        self._thread = threading.Thread(target=self._loop, name=f"msa-jobs-{name}", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str], ids: list[Any] | None, on_duplicate: str | None) -> Job:
        job = self.store.create(self.name, texts, ids, on_duplicate)
        self.jobs[job.id] = job
        self._queue.put(job.id)
        return job

    def close(self, timeout_s: float = 120.0) -> None:
        """Stop after the step being committed; an unfinished job stays queued and resumes at the next start."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._stop.is_set():
            job = self.jobs[job_id]
            try:
                self._run(job)
            except (BankError, ValueError, TypeError, OSError) as e:
                job.status, job.error = "failed", str(e).splitlines()[0] if str(e) else type(e).__name__
                log.warning("bank %s: job %s failed after %d documents: %s", self.name, job.id, job.done, job.error)
            except Exception as e:  # noqa: BLE001 - the job reports it; the runner keeps serving
                job.status, job.error = "failed", f"internal error: {type(e).__name__}: {e}"
                log.exception("bank %s: job %s failed", self.name, job.id)
            self.store.save(job)

    def _run(self, job: Job) -> None:
        texts, ids = self.store.spec(job.id)
        job.status = "running"
        self.store.save(job)
        if not job.step:
            job.step = max(self.slice_size, -(-job.total // 200))  # at most ~200 state rewrites per job
        step = job.step
        for k in range(job.done // step, -(-job.total // step)):
            if self._stop.is_set():
                job.status = "queued"  # the server is stopping: resume here at the next start
                return
            a, b = k * step, min(job.total, (k + 1) * step)
            part = None if ids is None else ids[a:b]
            rep = self.write(lambda: self.add(texts[a:b], part, f"{job.id}.{k}", job.on_duplicate))
            job.ids = job.ids[:a] + list(rep["ids"])
            job.done = b
            for key in ("added", "unchanged", "replaced"):
                setattr(job, key, getattr(job, key) + int(rep.get(key, 0)))
            self.store.save(job)
        job.status = "done"
        log.info("bank %s: job %s done (%d documents)", self.name, job.id, job.total)
