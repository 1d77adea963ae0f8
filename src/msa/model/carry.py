"""Memory Interleave without starting over: what a sample's next round reuses from its last one.

The layers below the first router layer never read memory, so for the tokens a round has processed
their keys/values and their output (the first router layer's input) are what the next round would
compute again: same tokens, same positions, same prefix. A next round runs those layers on its new
tokens only, against the carried K/V, and the router layers and above on the whole sequence (their
routing, and so everything they compute, changes). Exact up to floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from msa import functional as MF
from msa.model.context import KVCache, QueryContext
from msa.model.memory import MemoryAccess, PrefixCache
from msa.model.static_cache import StaticKVCache

if TYPE_CHECKING:
    from msa.model.modeling import MSAForCausalLM, PrefillOutput


@dataclass
class Carry:
    """One sample's reusable state after a round.

    keys[l], values[l]: [S, Hkv, D] for the layers l below the carry layer: the prefix and the n
    processed tokens (slot order is irrelevant: attention does not depend on it).
    hidden: [n, hidden] input of the carry layer for the processed tokens, in sequence order.
    next_position: position of the sample's next token.
    """

    keys: list[Tensor]
    values: list[Tensor]
    hidden: Tensor
    next_position: int

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[0])


def carry_rows(cache: KVCache | StaticKVCache, rows: list[int]) -> list[Carry]:
    """The carries of some batch rows of a cache that kept them (a prefill with ``keep_carry``)."""
    layer = cache.carry_layer
    if layer is None:
        raise ValueError("this cache kept no carry (prefill with keep_carry=True)")
    pos = cache.next_position.cpu()  # type: ignore[union-attr]
    if isinstance(cache, StaticKVCache):
        hidden, ok = cache.hidden[:, : cache.used], cache.hidden_valid[:, : cache.used]  # type: ignore[index]
        kv = lambda t, l, i: t[l][i][:, cache.valid[l][i]].transpose(0, 1)  # noqa: E731  [S, Hkv, D]
    else:
        hidden, ok = torch.cat(cache.hidden, 1), torch.cat(cache.hidden_valid, 1)
        kv = lambda t, l, i: t[l][i][cache.valid[l][i]]  # type: ignore[index]  # noqa: E731
    return [
        Carry([kv(cache.keys, l, i) for l in range(layer)], [kv(cache.values, l, i) for l in range(layer)],
              hidden[i][ok[i]], int(pos[i]))  # fmt: skip
        for i in rows
    ]


def _pad_right(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """[S_i, ...] tensors -> [B, S_max, ...] zero padded and valid [B, S_max] bool."""
    s = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), s, *rows[0].shape[1:])
    valid = torch.zeros(len(rows), s, dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        valid[i, : r.shape[0]] = True
    return out, valid


def resume_prefill(model: "MSAForCausalLM", carries: list[Carry], suffix: Tensor, suffix_mask: Tensor,
                   query_mask: Tensor, memory: MemoryAccess | None, prefix: PrefixCache | None, last_only: bool,
                   top_k: int) -> "PrefillOutput":  # fmt: skip
    """Prefill of B sequences, each its carry's tokens followed by new ones.

    Args:
        carries: B carries (``carry_rows``), positions from the model's query offset.
        suffix: [B, U] left-padded new tokens of every row; suffix_mask: [B, U] bool real ones.
        query_mask: [B, T] bool routing-query tokens of the whole left-padded sequences
            (T = the longest carried + new tokens).
        memory, prefix, last_only, top_k: as ``MSAForCausalLM.prefill``.

    Returns:
        PrefillOutput as ``prefill`` of the whole sequences would (its cache keeps a carry again).
    """
    from msa.model.modeling import PrefillOutput

    layer, dev = model.carry_layer, model.device
    if layer is None:
        raise ValueError("this model has no router layers: nothing to carry")
    offset = model.config.msa.query_offset
    if any(c.next_position != offset + c.tokens for c in carries):
        raise ValueError("a carry's positions do not start at the model's query offset")
    suffix, suffix_mask = suffix.to(dev), suffix_mask.to(dev).bool()
    cache = KVCache.empty(len(model.model.layers), layer)
    for l in range(layer):
        cache.keys[l], cache.valid[l] = _pad_right([c.keys[l].to(dev) for c in carries])
        cache.values[l], _ = _pad_right([c.values[l].to(dev) for c in carries])
    start = torch.tensor([c.next_position for c in carries], device=dev)
    lower = QueryContext(attention_mask=suffix_mask, query_mask=torch.zeros_like(suffix_mask), cache=cache, routing=False)
    steps = suffix_mask.long()
    h_new = model.model.run(suffix, start[:, None] + torch.cumsum(steps, -1) - steps, lower, num_layers=layer)
    rows = [torch.cat([c.hidden.to(dev, h_new.dtype), h_new[i][suffix_mask[i]]]) for i, c in enumerate(carries)]
    t = max(r.shape[0] for r in rows)
    if t != query_mask.shape[1]:
        raise ValueError(f"query_mask covers {query_mask.shape[1]} tokens, the sequences {t}")
    h = h_new.new_zeros(len(rows), t, h_new.shape[-1])
    mask = torch.zeros(len(rows), t, dtype=torch.bool, device=dev)
    for i, r in enumerate(rows):
        h[i, t - r.shape[0] :] = r
        mask[i, t - r.shape[0] :] = True
    positions = MF.query_position_ids(mask, offset)
    cache.hidden, cache.hidden_valid = [h], [mask]
    ctx = QueryContext(attention_mask=mask, query_mask=query_mask.to(dev).bool() & mask, cache=cache, memory=memory,
                       prefix=prefix, top_k=top_k, routing=True)  # fmt: skip
    out = model.model.run_layers(h, positions, ctx, layer)
    cache.next_position = positions[:, -1] + 1
    return PrefillOutput(model.lm_head(out[:, -1] if last_only else out), cache, ctx.routings)
