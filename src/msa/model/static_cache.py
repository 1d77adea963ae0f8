"""A preallocated decoding context: fixed per-layer buffers written in place, so a decode step has the
same shapes and buffer addresses every time (what a CUDA graph needs).

Layout of layer l, for every row: ``[context (base[l] slots: prefix | selected chunks) | tokens]``,
``capacity`` token slots after the context. The context is copied once from a prefill's ``KVCache``;
every fed token is written at ``base[l] + cursor`` by ``index_copy_`` with device-tensor indices, and
attention reads the whole buffer under the ``valid`` mask (unwritten slots are never valid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from msa.model.context import KVCache


@dataclass
class StaticKVCache:
    """keys[l], values[l]: [B, Hkv, S_l, D] (heads first: attention reads them without a copy);
    valid[l]: [B, S_l] bool; S_l = context slots of layer l (at most) + capacity.

    base: [L] long (device) context slots of every layer in the current load; cursor: [] long (device)
    tokens written after the context (the same for all rows: a row that feeds nothing writes an
    invalid slot); next_position: [B] long (device); used, context: the host's copies of ``cursor`` and
    ``base``; steps: [capacity] long 0.. (device); trim: attend over the written slots only (eager
    steps; a captured step reads the whole buffer).
    carry_layer, hidden [B, capacity, hidden], hidden_valid [B, capacity] bool: the input of the first
    router layer per token slot (kept for the next Memory Interleave round, ``msa.model.carry``), or None.
    """

    keys: list[Tensor]
    values: list[Tensor]
    valid: list[Tensor]
    base: Tensor
    cursor: Tensor
    next_position: Tensor
    capacity: int
    steps: Tensor = field(default=None)  # type: ignore[assignment]
    used: int = 0
    context: list[int] = field(default_factory=list)
    trim: bool = False
    carry_layer: int | None = None
    hidden: Tensor | None = None
    hidden_valid: Tensor | None = None

    @classmethod
    def allocate(cls, batch: int, context: list[int], capacity: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, carry: tuple[int, int] | None = None) -> "StaticKVCache":  # fmt: skip
        """Zeroed buffers for ``batch`` rows, ``context[l]`` context slots per layer and ``capacity`` tokens;
        with ``carry`` = (layer, hidden size), that layer's input is kept per token slot (``keep_hidden``)."""
        size = [c + capacity for c in context]
        return cls(
            carry_layer=carry[0] if carry else None,
            hidden=torch.zeros(batch, capacity, carry[1], dtype=dtype, device=device) if carry else None,
            hidden_valid=torch.zeros(batch, capacity, dtype=torch.bool, device=device) if carry else None,
            keys=[torch.zeros(batch, num_kv_heads, s, head_dim, dtype=dtype, device=device) for s in size],
            values=[torch.zeros(batch, num_kv_heads, s, head_dim, dtype=dtype, device=device) for s in size],
            valid=[torch.zeros(batch, s, dtype=torch.bool, device=device) for s in size],
            base=torch.zeros(len(size), dtype=torch.long, device=device),
            cursor=torch.zeros((), dtype=torch.long, device=device),
            next_position=torch.zeros(batch, dtype=torch.long, device=device),
            capacity=capacity,
            steps=torch.arange(capacity, device=device),
        )

    @property
    def batch(self) -> int:
        return self.next_position.shape[0]

    def fits(self, cache: KVCache, tokens: int, room: int) -> bool:
        """Whether ``load(cache, tokens)`` fits and leaves ``room`` token slots free."""
        if cache.keys[0].shape[0] > self.batch or tokens + room > self.capacity:  # type: ignore[union-attr]
            return False
        return all(k.shape[1] - tokens <= buf.shape[2] - self.capacity for k, buf in zip(cache.keys, self.keys))  # type: ignore[union-attr]

    @torch.no_grad()
    def load(self, cache: KVCache, tokens: int) -> None:
        """Copy a prefill's cache in: its last ``tokens`` slots of every layer are the prompt (written to
        the token region), the rest the context. Rows beyond the cache's batch stay empty (padding)."""
        b = cache.keys[0].shape[0]  # type: ignore[union-attr]
        base = []
        for l, (k, v, ok) in enumerate(zip(cache.keys, cache.values, cache.valid)):
            s = k.shape[1]  # type: ignore[union-attr]
            self.valid[l].zero_()
            self.keys[l][:b, :, :s].copy_(k.transpose(1, 2))  # type: ignore[union-attr]
            self.values[l][:b, :, :s].copy_(v.transpose(1, 2))  # type: ignore[union-attr]
            self.valid[l][:b, :s].copy_(ok)  # type: ignore[arg-type]
            base.append(s - tokens)
        self.base.copy_(torch.tensor(base))
        self.context = base
        if self.hidden_valid is not None:
            self.hidden_valid.zero_()
            if cache.hidden and cache.carry_layer == self.carry_layer:
                self.hidden[:b, :tokens].copy_(torch.cat(cache.hidden, 1))  # type: ignore[index]
                self.hidden_valid[:b, :tokens].copy_(torch.cat(cache.hidden_valid, 1))
        self.cursor.fill_(tokens)
        self.next_position.zero_()
        self.next_position[:b].copy_(cache.next_position)  # type: ignore[arg-type]
        self.used = tokens

    def write(self, layer: int, k: Tensor, v: Tensor, new_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write new tokens of one layer in place and return what they attend to.

        k, v: [B, t, Hkv, D]; new_valid: [B, t] bool -> keys, values [B, Hkv, S_l, D] and mask
        [B, t, S_l] bool: token i sees valid slots up to its own, and always itself.
        """
        t = k.shape[1]
        own = self.base[layer] + self.cursor + self.steps[:t]  # [t]
        self.keys[layer].index_copy_(2, own, k.transpose(1, 2))
        self.values[layer].index_copy_(2, own, v.transpose(1, 2))
        _copy_bool(self.valid[layer], own, new_valid)
        # trim (eager steps): attend over the written slots only; a graph reads the fixed buffer
        s = self.context[layer] + self.used + t if self.trim else self.valid[layer].shape[1]
        keys, values, valid = self.keys[layer][:, :, :s], self.values[layer][:, :, :s], self.valid[layer][:, :s]
        if t == 1:  # no slot after the new token is written yet: valid slots, and always itself
            return keys, values, valid.index_fill(1, own, True)[:, None, :]
        slots = torch.arange(s, device=k.device)
        upto = slots[None, :] <= own[:, None]  # [t, S]
        mask = (valid[:, None, :] & upto[None]) | (slots[None, :] == own[:, None])[None]
        return keys, values, mask

    @torch.no_grad()
    def grown(self, capacity: int) -> "StaticKVCache":
        """A copy with ``capacity`` token slots (more than now), holding the same state."""
        if capacity < self.capacity:
            raise ValueError("a static cache grows, never shrinks")
        new = StaticKVCache.allocate(self.batch, [buf.shape[2] - self.capacity for buf in self.keys], capacity,
                                     self.keys[0].shape[1], self.keys[0].shape[3], self.keys[0].dtype, self.base.device,
                                     (self.carry_layer, self.hidden.shape[2]) if self.hidden is not None else None)  # fmt: skip
        for old, buf in ((self.keys, new.keys), (self.values, new.values)):
            for a, b in zip(old, buf):
                b[:, :, : a.shape[2]].copy_(a)
        for a, b in zip(self.valid, new.valid):
            b[:, : a.shape[1]].copy_(a)
        if self.hidden is not None:
            new.hidden[:, : self.capacity].copy_(self.hidden)  # type: ignore[index]
            new.hidden_valid[:, : self.capacity].copy_(self.hidden_valid)  # type: ignore[index]
        for name in ("base", "cursor", "next_position"):
            getattr(new, name).copy_(getattr(self, name))
        new.used, new.context, new.trim = self.used, list(self.context), self.trim
        return new

    def keep_hidden(self, h: Tensor, new_valid: Tensor) -> None:
        """Record the input [B, t, hidden] of ``carry_layer`` for the tokens being fed ([B, t] bool)."""
        own = self.cursor + self.steps[: h.shape[1]]
        self.hidden.index_copy_(1, own, h)  # type: ignore[union-attr]
        _copy_bool(self.hidden_valid, own, new_valid)  # type: ignore[arg-type]

    def advance(self, new_valid: Tensor) -> None:
        """After all layers: [B, t] bool fed tokens; positions advance by the real ones, cursor by t."""
        self.next_position.add_(new_valid.long().sum(-1))
        self.cursor.add_(new_valid.shape[1])
        self.used += new_valid.shape[1]


def _copy_bool(dst: Tensor, index: Tensor, src: Tensor) -> None:
    """``dst.index_copy_(1, index, src)`` for bool tensors, through a uint8 view (every backend has it)."""
    dst.view(torch.uint8).index_copy_(1, index, src.contiguous().view(torch.uint8))
