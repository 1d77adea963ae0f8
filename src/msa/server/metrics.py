"""Prometheus text-format metrics (exposition format 0.0.4): counters, gauges and histograms with labels.

Small on purpose: the server needs a handful of series, not a client library. Every update takes one
lock; ``render`` returns the whole text page.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.buckets):
            if x <= b:
                self.counts[i] += 1
        self.total += x
        self.n += 1


class Metrics:
    """Named metric families; each name has one kind ("counter", "gauge", "histogram") and a help text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, _Histogram]] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}

    def declare(self, name: str, kind: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"unknown metric kind {kind!r}")
        self._help[name] = (kind, help_text)
        if kind == "histogram":
            self._hists[name] = {}
            self._buckets[name] = tuple(buckets)
        else:
            self._values[name] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._hists[name]
            if key not in series:
                series[key] = _Histogram(self._buckets[name])
            series[key].observe(value)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge series (0 if never set)."""
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """The text exposition page."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind != "histogram":
                    for key, v in self._values[name].items():
                        lines.append(f"{name}{_labels(key)} {_num(v)}")
                    continue
                for key, h in self._hists[name].items():
                    for b, c in zip(h.buckets, h.counts):
                        lines.append(f"{name}_bucket{_labels(key, (('le', _num(b)),))} {c}")
                    lines.append(f"{name}_bucket{_labels(key, (('le', '+Inf'),))} {h.n}")
                    lines.append(f"{name}_sum{_labels(key)} {_num(h.total)}")
                    lines.append(f"{name}_count{_labels(key)} {h.n}")
        return "\n".join(lines) + "\n"


def server_metrics() -> Metrics:
    """The server's metric families."""
    m = Metrics()
    m.declare("msa_requests_total", "counter", "HTTP requests by route and status code")
    m.declare("msa_request_seconds", "histogram", "HTTP request latency by route (seconds, until the last byte)")
    m.declare("msa_prompt_tokens_total", "counter", "question tokens of answered requests")
    m.declare("msa_completion_tokens_total", "counter", "tokens generated for answered requests")
    m.declare("msa_queue_depth", "gauge", "questions admitted and not finished (waiting or answering), by bank")
    m.declare("msa_queue_wait_seconds", "histogram", "time from admission to the start of the batch answering it")
    m.declare("msa_batch_size", "histogram", "questions per Engine.ask_batch call", BATCH_BUCKETS)
    m.declare("msa_rejected_total", "counter", "requests refused because the queue was full, by bank")
    m.declare("msa_cancelled_total", "counter", "questions whose client went away or timed out before the answer")
    m.declare("msa_batches_aborted_total", "counter", "batches stopped early because every question in them was cancelled")
    m.declare("msa_jobs", "gauge", "background add jobs by status")
    return m
