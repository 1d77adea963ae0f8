"""Prefill replayed from CUDA graphs, over a memory that routes and fetches on the device alone.

An eager prefill of a 36-layer model launches thousands of kernels from the host; with the memory's
content resident on the device and the fused routing (``BankSnapshot.on_device``), nothing in it
needs the host, so the whole prefill (routing, top-k, the gather of the selected chunks, attention)
can be captured once and replayed. A graph reads the tensors it was captured with, so graphs belong
to one snapshot of the memory: a different snapshot (a write or delete made a new generation) drops
them, and the next questions capture again.

Graphs are kept per (rows, padded length, keep_carry, top_k): a batch's left-padded prompts are
padded further on the left to a multiple of ``LENGTH_ROUND`` tokens (pads are masked out of attention
and routing, so the real tokens' results are those of the eager prefill up to rounding). The outputs
are the graph's buffers: valid until the next replay of that graph, so a caller holds ``holding()``
while it uses them (another thread meanwhile gets None, and prefills eagerly).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from msa.model import MSAForCausalLM, PrefixCache
from msa.model.modeling import PrefillOutput

logger = logging.getLogger(__name__)

LENGTH_ROUND = 8  # prompts are padded to a multiple of this many tokens (fewer graphs, little padding)
MAX_ROWS = 8  # batches of more questions prefill eagerly
MAX_GRAPHS = 8  # graphs kept (least recently used dropped)


def padded_length(tokens: int) -> int:
    """The length a prompt of ``tokens`` tokens is captured at."""
    return max(LENGTH_ROUND, -(-tokens // LENGTH_ROUND) * LENGTH_ROUND)


def pad_left(ids: Tensor, mask: Tensor, query_mask: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, T] left-padded ids, attention mask and query mask -> [B, length] (more padding on the left)."""
    extra = length - ids.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {ids.shape[1]} tokens to {length}")
    pad = lambda t: torch.nn.functional.pad(t, (extra, 0))  # noqa: E731  (zeros / False)
    return pad(ids), pad(mask), pad(query_mask)


@dataclass
class _Graph:
    staging: Tensor  # [3, B, L] long pinned host: ids, attention mask, query mask
    inputs: Tensor  # the same on the device, read by the graph
    prefix: PrefixCache | None
    graph: torch.cuda.CUDAGraph
    out: PrefillOutput
    copied: torch.cuda.Event


class GraphedPrefill:
    """``MSAForCausalLM.prefill_on_device`` from captured graphs (module docstring). CUDA only."""

    def __init__(self, model: MSAForCausalLM):
        if model.device.type != "cuda":
            raise ValueError("a graphed prefill needs a model on a CUDA device")
        self.model = model
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._state: tuple | None = None  # (snapshot, its resident content) the kept graphs read
        self._lock = threading.RLock()
        self.captures = 0  # graphs captured so far (for tests and benchmarks)
        self.failed = False  # a capture failed: every prefill eager from then on
        self._checked: tuple[tuple, bool] | None = None  # (snapshot, resident content) -> on the device

    def usable(self, memory, rows: int) -> bool:
        """Whether a prefill of ``rows`` questions over ``memory`` can be replayed."""
        if self.failed or rows > MAX_ROWS:
            return False
        state = (memory, getattr(memory, "resident", None))
        if self._checked is None or any(a is not b for a, b in zip(state, self._checked[0])):
            on_device = getattr(memory, "on_device", None)
            self._checked = (state, callable(on_device) and bool(on_device(self.model.router_layers)))
        return self._checked[1]

    @contextlib.contextmanager
    def holding(self) -> Iterator[bool]:
        """Hold the outputs of this thread's replays until the block ends: yields False (then ``prefill``
        returns None) while another thread holds them."""
        got = self._lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self._lock.release()

    def release(self) -> None:
        """Drop the kept graphs and the snapshot they read."""
        with self._lock:
            self._graphs.clear()
            self._state = self._checked = None

    def prefill(self, memory, ids: Tensor, mask: Tensor, query_mask: Tensor, prefix: PrefixCache | None, top_k: int,
                keep_carry: bool) -> tuple[PrefillOutput, int] | None:  # fmt: skip
        """A last-only prefill of left-padded ids [B, T] (host or device), attention mask and query mask
        [B, T] bool, replayed (captured first if new) -> (output, the padded length L: the prompt's
        slots in its cache), or None (prefill eagerly) when another thread holds the outputs or the capture
        failed."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self.model._check_ids(ids.cpu())
            length = padded_length(ids.shape[1])
            ids, mask, query_mask = pad_left(ids, mask.bool(), query_mask.bool() & mask.bool(), length)
            state = (memory, getattr(memory, "resident", None))
            if self._state is None or any(a is not b for a, b in zip(state, self._state)):
                self._graphs.clear()  # another snapshot (or its content made resident again): the graphs read old tensors
                self._state = state
            key = (ids.shape[0], length, keep_carry, top_k)
            g = self._graphs.get(key)
            if g is None or g.prefix is not prefix:
                try:
                    g = self._capture(memory, ids, mask, query_mask, prefix, top_k, keep_carry)
                except Exception as e:  # noqa: BLE001  (a memory or kernel that cannot be captured: eager prefills)
                    self.failed = True
                    self._graphs.clear()
                    logger.warning("graphed prefill unavailable, eager prefill instead: %s", str(e).splitlines()[0][:200])
                    return None
                self._graphs[key] = g
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            g.copied.synchronize()  # the last copy out of the staging buffer is done
            g.staging[0].copy_(ids)
            g.staging[1].copy_(mask)
            g.staging[2].copy_(query_mask)
            g.inputs.copy_(g.staging, non_blocking=True)  # one copy in
            g.copied.record()
            g.graph.replay()
            return g.out, length
        finally:
            self._lock.release()

    def _capture(self, memory, ids: Tensor, mask: Tensor, query_mask: Tensor, prefix: PrefixCache | None, top_k: int,
                 keep_carry: bool) -> _Graph:  # fmt: skip
        dev = self.model.device
        staging = torch.stack([ids.long(), mask.long(), query_mask.long()]).cpu().pin_memory()
        inputs = staging.to(dev)
        offset = self.model.config.msa.query_offset

        def run() -> PrefillOutput:
            return self.model.prefill_on_device(inputs[0], inputs[1].bool(), inputs[2].bool(), memory, prefix, offset,
                                                True, top_k, keep_carry)  # fmt: skip

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: compiled kernels, routing keys prepared, allocations
            for _ in range(2):
                run()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = run()
        self.captures += 1
        logger.debug("prefill graph captured: %d rows, %d tokens", ids.shape[0], ids.shape[1])
        copied = torch.cuda.Event()
        copied.record()
        return _Graph(staging, inputs, prefix, graph, out, copied)
