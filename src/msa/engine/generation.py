"""Batched decoding (greedy, or seeded temperature sampling per sample) with per-sample pending tokens
(several tokens may be fed at once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from msa.model import KVCache, MSAForCausalLM


@dataclass
class DecodeState:
    """One sample's decoding state. ``pending``: tokens to feed next (the last generated one, or an
    appended block); ``done``: frozen, its further steps are masked out."""

    pending: list[int]
    done: bool = False
    generated: list[int] = field(default_factory=list)


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    """rows -> ids [B, T], mask [B, T] bool (left padding)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, t - len(r) :] = torch.tensor(r)
            mask[i, t - len(r) :] = True
    return ids, mask


@dataclass
class Sampler:
    """Temperature sampling for one sample: a token drawn from softmax(logits / temperature) with the
    sample's own generator, so a seed gives the same draws whatever else is in the batch."""

    temperature: float
    seed: int

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 to sample, got {self.temperature}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, logits: Tensor) -> int:
        """logits [V] -> one token id."""
        p = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        return int(torch.multinomial(p, 1, generator=self.generator))


def pick_tokens(logits: Tensor, samplers: list[Sampler | None] | None = None, greedy: Tensor | None = None) -> Tensor:
    """logits [B, V] -> next tokens [B] (CPU): greedy (``greedy`` [B] when already computed), or drawn by
    the row's sampler where it has one."""
    nxt = (logits.argmax(-1) if greedy is None else greedy).cpu()
    for i, s in enumerate(samplers or []):
        if s is not None:
            nxt[i] = s(logits[i])
    return nxt


def decode_step(model: MSAForCausalLM, cache: KVCache, states: list[DecodeState],
                samplers: list[Sampler | None] | None = None) -> Tensor:  # fmt: skip
    """Feed every active sample's pending tokens; returns next tokens [B] (-1 for done samples): greedy,
    or drawn by ``samplers[i]`` where given."""
    ids, mask = pending_batch(states)
    logits = model.decode(ids, cache, mask)[:, -1]
    return finish_step(states, pick_tokens(logits, samplers))


def pending_batch(states: list[DecodeState]) -> tuple[Tensor, Tensor]:
    """Every sample's pending tokens, left-padded: ids [B, t], mask [B, t] bool (all False for done
    samples and samples with nothing pending)."""
    rows = [[] if s.done else s.pending for s in states]
    ids, mask = left_pad([r if r else [0] for r in rows])
    for i, r in enumerate(rows):
        if not r:
            mask[i] = False
    return ids, mask


def finish_step(states: list[DecodeState], nxt: Tensor) -> Tensor:
    """After a step: pending tokens are consumed; next tokens [B] with -1 for done samples."""
    for s in states:
        if not s.done:
            s.pending = []
    return torch.where(torch.tensor([s.done for s in states]), torch.full_like(nxt, -1), nxt)


@dataclass
class Timer:
    """Accumulates wall time per stage (synchronising CUDA so device work is counted where it runs)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, t0: float, device: torch.device | None = None) -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
