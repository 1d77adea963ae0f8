"""Decoding against preallocated caches, one-token steps replayed from CUDA graphs.

A ``StaticDecoder`` keeps one ``StaticKVCache`` per batch bucket (1, 2, 4, ..., 64; batches are padded
up with empty rows) across calls, and on CUDA one captured graph per bucket of the step "feed one
token per row, return logits and the greedy token". A prefill's cache is copied into the bucket's
buffers (``session``); steps that feed several tokens at once (an appended block) run eagerly on the
same buffers. The results equal the eager ``KVCache`` path up to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

from msa.engine.generation import DecodeState, Sampler, finish_step, pending_batch, pick_tokens
from msa.model import KVCache, MSAForCausalLM
from msa.model import fused_decode
from msa.model.fused_decode import weights_stamp
from msa.model.static_cache import StaticKVCache

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTEXT_ROUND = 64  # context slots are allocated in multiples of this (fewer re-allocations)
CAPACITY_ROUND = 256  # and token slots in multiples of this


def bucket(batch: int) -> int:
    """The batch size a batch of ``batch`` rows runs at (padded with empty rows)."""
    for b in BUCKETS:
        if batch <= b:
            return b
    return -(-batch // BUCKETS[-1]) * BUCKETS[-1]


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


class StaticStepper:
    """One batch bucket: its cache, input buffers and (on CUDA, when asked) the captured step. The
    cache grows when a step needs more token slots than it has (``ensure``)."""

    def __init__(self, model: MSAForCausalLM, cache: StaticKVCache, graph: bool):
        self.model, self.cache = model, cache
        b, dev = cache.batch, model.device
        self.ids = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(b, 1, dtype=torch.bool, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graphed = graph
        cache.trim = not graph
        if graph:
            self._capture()

    def _body(self) -> tuple[Tensor, Tensor]:
        # Eagerly through ``decode`` (checks the ids); captured, ``decode_static`` (no host reads).
        feed = self.model.decode_static if self.graphed else self.model.decode
        logits = feed(self.ids, self.cache, self.mask)[:, -1]
        return logits, logits.argmax(-1)

    def _capture(self) -> None:
        # Warm-up steps feed nothing (mask False: invalid slots, positions kept); the cursor is restored.
        c = self.cache
        state = (c.cursor.clone(), c.next_position.clone(), c.used)

        def restore() -> None:
            c.cursor.copy_(state[0])
            c.next_position.copy_(state[1])
            c.used = state[2]

        try:
            self._record()
        except Exception as e:
            if not fused_decode.compiled_in_use():
                raise
            fused_decode.give_up(e)  # the compiled layers could not be captured: the eager layers from now on
            restore()
            self._record()
        finally:
            restore()

    def _record(self) -> None:
        self.mask.zero_()
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body()
        torch.cuda.current_stream(self.model.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another engine's thread may use the device meanwhile (a server with several banks)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits, self.tokens = self._body()
        self.stamp = weights_stamp(self.model.model.layers)

    def ensure(self, tokens: int) -> None:
        """Room for ``tokens`` more token slots: the cache grows (and the step is captured again)."""
        if self.cache.used + tokens > self.cache.capacity:
            self.cache = self.cache.grown(_round_up(self.cache.used + tokens + CAPACITY_ROUND, CAPACITY_ROUND))
            logger.debug("static cache grown to %d token slots", self.cache.capacity)
            if self.graphed:
                self._capture()

    def step(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """One token per row. ids [Bb] long, mask [Bb] bool (device) -> logits [Bb, V] and greedy tokens
        [Bb] (device; with a graph, buffers the next step overwrites)."""
        self.ensure(1)
        self.ids[:, 0].copy_(ids)
        self.mask[:, 0].copy_(mask)
        if self.graph is None:
            return self._body()
        if weights_stamp(self.model.model.layers) != self.stamp:  # fused weights were rebuilt elsewhere
            self._capture()
        self.graph.replay()
        self.cache.used += 1
        return self.logits, self.tokens

    def decode_step(self, states: list[DecodeState], samplers: list[Sampler | None] | None = None) -> Tensor:
        """``msa.engine.generation.decode_step`` on this bucket's buffers: next tokens [B] (CPU, -1 done)."""
        ids, mask = pending_batch(states)
        b, pad = ids.shape[0], self.cache.batch - ids.shape[0]
        dev = self.model.device
        ids = torch.nn.functional.pad(ids, (0, 0, 0, pad)).to(dev, non_blocking=True)
        mask = torch.nn.functional.pad(mask, (0, 0, 0, pad)).to(dev, non_blocking=True)
        if ids.shape[1] == 1:
            logits, greedy = self.step(ids[:, 0], mask[:, 0])
        else:
            self.ensure(ids.shape[1])
            logits = self.model.decode(ids, self.cache, mask)[:, -1]
            greedy = logits.argmax(-1)
        return finish_step(states, pick_tokens(logits[:b], samplers, greedy[:b]))


class StaticDecoder:
    """Static-cache decoding for a model, buffers and graphs kept across calls (see the module doc).

    graphs: capture CUDA graphs (default: when the model is on CUDA). One session at a time uses the
    kept buffers; a concurrent one gets private buffers (eager steps).
    """

    def __init__(self, model: MSAForCausalLM, graphs: bool | None = None):
        self.model = model
        self.graphs = model.device.type == "cuda" if graphs is None else graphs
        if self.graphs and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self._steppers: dict[int, StaticStepper] = {}
        self._lock = threading.Lock()

    def _allocate(self, batch: int, cache: KVCache, tokens: int, room: int, old: StaticStepper | None) -> StaticKVCache:
        # Graphs want few distinct shapes; eager steps want no slot more than needed.
        ctx_round, cap_round = (CONTEXT_ROUND, CAPACITY_ROUND) if self.graphs else (8, 8)
        context = [_round_up(k.shape[1] - tokens, ctx_round) for k in cache.keys]  # type: ignore[union-attr]
        capacity = _round_up(tokens + room, cap_round)
        if old is not None:  # grow, never shrink: a bucket settles on the largest shapes it has seen
            context = [max(c, buf.shape[2] - old.cache.capacity) for c, buf in zip(context, old.cache.keys)]
            capacity = max(capacity, old.cache.capacity)
        cfg, layer = self.model.config, self.model.carry_layer
        carry = (layer, cfg.hidden_size) if layer is not None else None  # kept for Memory Interleave rounds
        return StaticKVCache.allocate(batch, context, capacity, cfg.num_key_value_heads, cfg.head_dim, self.model.dtype,
                                      self.model.device, carry)  # fmt: skip

    @contextlib.contextmanager
    def session(self, cache: KVCache, tokens: int, room: int) -> Iterator[StaticStepper]:
        """A prefill's ``cache`` (its last ``tokens`` slots are the prompt) loaded into a bucket with
        ``room`` more token slots; yields the stepper to decode with."""
        rows = cache.keys[0].shape[0]  # type: ignore[union-attr]
        b = bucket(rows) if self.graphs else rows  # padding rows only buy a graph
        if not self._lock.acquire(blocking=False):
            private = StaticStepper(self.model, self._allocate(b, cache, tokens, room, None), graph=False)
            private.cache.load(cache, tokens)
            yield private
            return
        try:
            stepper = self._steppers.get(b)
            if stepper is None or not stepper.cache.fits(cache, tokens, room):
                self._steppers.pop(b, None)
                stepper = StaticStepper(self.model, self._allocate(b, cache, tokens, room, stepper), self.graphs)
                self._steppers[b] = stepper
                logger.debug("static cache for batch %d: %d token slots", b, stepper.cache.capacity)
            stepper.cache.load(cache, tokens)
            yield stepper
        finally:
            self._lock.release()

    def release(self) -> None:
        """Free the kept buffers and graphs."""
        with self._lock:
            self._steppers.clear()
