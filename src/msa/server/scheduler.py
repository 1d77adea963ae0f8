"""Per-bank batching: questions wait a few milliseconds, then one ``Engine.ask_batch`` answers them.

A bank's scheduler owns one thread. Admission is bounded: a question holds a slot from ``submit``
until its answer is ready or it is cancelled (client gone, timeout); with every slot taken ``submit``
raises ``QueueFull`` instead of queueing without bound. A cancelled question frees its slot at once;
a batch whose questions are all cancelled is stopped at its next generated token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from msa.engine import Answer
from msa.engine.generation import Sampler
from msa.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AskOptions:
    """Options of one question; questions with equal options share an ``ask_batch`` call.

    max_new_tokens: generated tokens per retrieval round; doc_choice / top_k: None = the model's own."""

    max_new_tokens: int = 256
    max_rounds: int = 4
    doc_choice: str | None = None
    top_k: int | None = None
    interleave: bool = True
    return_routing: bool = False


@dataclass
class Answered:
    """An answer and how it was produced: tokens generated for it, the batch it shared, seconds queued."""

    answer: Answer
    completion_tokens: int
    batch_size: int
    queue_s: float


@dataclass
class Question:
    text: str
    options: AskOptions
    on_token: Callable[[str], None] | None = None  # called on the scheduler thread
    sampler: Sampler | None = None  # None: greedy
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    admitted: float = field(default_factory=time.monotonic)
    tokens: int = 0
    released: bool = False


class QueueFull(Exception):
    """Every slot of the bank's queue is taken."""


class Cancelled(Exception):
    """The question was cancelled before its answer was ready."""


class _Abort(Exception):
    """Raised from on_token to stop a batch whose questions are all cancelled."""


AnswerBatch = Callable[[list[str], AskOptions, Callable[[int, str], None], list[Sampler | None] | None], list[Answer]]


class Scheduler:
    """Batches the questions of one bank.

    Args:
        name: the bank's name (metric label, thread name).
        answer_batch: answers questions with equal options in one call (texts, options, on_token(i, text),
            per question a sampler or None).
        max_queue: slots (questions admitted and not finished).
        max_batch: questions per ``answer_batch`` call at most.
        wait_s: how long the first question of a batch waits for others to join it, at most.
        gap_s: the batch closes when no question has arrived for this long; ten times as long while
            it holds fewer questions than the previous batch answered. Clients answered together come
            back together, over some milliseconds: waiting for them keeps one batch of N instead of
            two alternating halves (the cohort that was queued and the one being answered); a lone
            client waits only ``gap_s``.
    """

    def __init__(self, name: str, answer_batch: AnswerBatch, metrics: Metrics, max_queue: int = 64,
                 max_batch: int = 32, wait_s: float = 0.05, gap_s: float = 0.002):  # fmt: skip
        if max_queue < 1 or max_batch < 1 or wait_s < 0 or gap_s < 0:
            raise ValueError("max_queue and max_batch must be >= 1, wait_s and gap_s >= 0")
        self.name, self.answer_batch, self.metrics = name, answer_batch, metrics
        self.max_queue, self.max_batch, self.wait_s, self.gap_s = max_queue, max_batch, wait_s, gap_s
        self._queue: queue.Queue[Question | None] = queue.Queue()
        self._lock = threading.Lock()
        self._depth = 0
        self._thread = threading.Thread(target=self._loop, name=f"msa-scheduler-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, text: str, options: AskOptions, on_token: Callable[[str], None] | None = None,
               sampler: Sampler | None = None) -> Question:  # fmt: skip
        """Admit a question (``QueueFull`` when every slot is taken); its ``future`` gets an ``Answered``."""
        with self._lock:
            if self._depth >= self.max_queue:
                self.metrics.inc("msa_rejected_total", bank=self.name)
                raise QueueFull(f"bank {self.name!r}: {self.max_queue} questions are already waiting or being answered")
            self._depth += 1
            self.metrics.set("msa_queue_depth", self._depth, bank=self.name)
        q = Question(text, options, on_token, sampler)
        self._queue.put(q)
        return q

    def cancel(self, q: Question) -> None:
        """The client is gone or gave up: free the slot now; the answer (if any) is dropped."""
        if not q.future.done() and not q.cancelled.is_set():
            q.cancelled.set()
            self.metrics.inc("msa_cancelled_total", bank=self.name)
        self._release(q)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -- the thread ---------------------------------------------------------------------------------
    def _release(self, q: Question) -> None:
        with self._lock:
            if q.released:
                return
            q.released = True
            self._depth -= 1
            self.metrics.set("msa_queue_depth", self._depth, bank=self.name)

    def _collect(self, first: Question, expect: int) -> tuple[list[Question], bool]:
        batch, stop = [first], False
        target = min(self.max_batch, max(1, expect))
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.monotonic()
                wait = min(left, self.gap_s if len(batch) >= target else 10 * self.gap_s)
                q = self._queue.get_nowait() if left <= 0 else self._queue.get(timeout=wait)
            except queue.Empty:
                break
            if q is None:
                stop = True
                break
            batch.append(q)
        return batch, stop

    def _loop(self) -> None:
        last = 0  # questions of the previous batch (their clients may be about to ask again)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first, last)
            last = len(batch)
            groups: dict[AskOptions, list[Question]] = {}
            for q in batch:
                if q.cancelled.is_set():
                    q.future.set_exception(Cancelled())
                else:
                    groups.setdefault(q.options, []).append(q)
            for options, qs in groups.items():
                self._run(options, qs)
            if stop:
                return

    def _run(self, options: AskOptions, qs: list[Question]) -> None:
        start = time.monotonic()
        for q in qs:
            self.metrics.observe("msa_queue_wait_seconds", start - q.admitted)
        self.metrics.observe("msa_batch_size", len(qs))

        def on_token(i: int, piece: str) -> None:
            q = qs[i]
            q.tokens += 1
            if q.on_token is not None and not q.cancelled.is_set():
                q.on_token(piece)
            if q.cancelled.is_set() and all(x.cancelled.is_set() for x in qs):
                raise _Abort

        try:
            samplers = [q.sampler for q in qs] if any(q.sampler for q in qs) else None
            answers = self.answer_batch([q.text for q in qs], options, on_token, samplers)
        except _Abort:
            self.metrics.inc("msa_batches_aborted_total", bank=self.name)
            for q in qs:
                q.future.set_exception(Cancelled())
        except Exception as e:  # noqa: BLE001 - every question of the batch gets the error
            if not isinstance(e, (ValueError, KeyError, TypeError)):
                log.exception("bank %s: a batch of %d questions failed", self.name, len(qs))
            for q in qs:
                q.future.set_exception(e)
        else:
            for q, a in zip(qs, answers):
                q.future.set_result(Answered(a, q.tokens, len(qs), start - q.admitted))
        finally:
            for q in qs:
                self._release(q)


class Ticket:
    """The event-loop side of a submitted question: its token texts and its end, as one async stream.

    Built on the loop; the scheduler thread hands tokens over with ``call_soon_threadsafe``.
    """

    def __init__(self, scheduler: Scheduler, text: str, options: AskOptions, stream: bool,
                 sampler: Sampler | None = None):  # fmt: skip
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[str | None] = asyncio.Queue()
        push = (lambda piece: self.loop.call_soon_threadsafe(self.events.put_nowait, piece)) if stream else None
        self.scheduler = scheduler
        self.question = scheduler.submit(text, options, push, sampler)
        self.question.future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.events.put_nowait, None))

    async def next(self, deadline: float) -> str | None:
        """The next token text, or None when the answer is ready; TimeoutError past ``deadline`` (monotonic)."""
        return await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.monotonic()))

    def result(self) -> Answered:
        return self.question.future.result(timeout=0)

    def cancel(self) -> None:
        self.scheduler.cancel(self.question)
