"""Attention backends for packed training batches: dense SDPA masks (CPU, reference) and FlexAttention
block masks (CUDA; skips the masked-out blocks, so documents cost O(len^2), not O(L^2)).

Both compute the same function. Keys are ``[L packed tokens | Cmax chunk slots]``:
  * a document token attends causally within its document;
  * a stream token (doc_ids < 1) attends causally to the sample's stream tokens, and to every kept
    chunk whose first token precedes it (chunks of the documents its router layer selected);
  * padding rows attend to themselves only (keeps softmax finite).
``MSA_TRAIN_ATTENTION=sdpa|flex`` forces a backend (flex runs uncompiled off CUDA: tests only).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from msa.model.layers import attend



def bucket(n: int) -> int:
    """Padded length for n (>= 1): a multiple of 128 and of n's power-of-two scale / 2 (1024, 1536, 2048,
    3072, ...), so compiled FlexAttention kernels are reused across batches: two shapes per octave keep
    recompilation rare, and the padding costs little because fully masked blocks are skipped."""
    step = max(128, 1 << max(0, n.bit_length() - 2))
    return -(-n // step) * step


@dataclass
class TrainLayout:
    """doc: [B, L] long document id of document tokens, -1 elsewhere; stream: [B, L] bool;
    valid: [B, L] bool."""

    doc: Tensor
    stream: Tensor
    valid: Tensor
    block_masks: dict = field(default_factory=dict)
    backend: str | None = None  # "sdpa" / "flex" fixed for this batch (None: ``backend(device)`` per call)

    @functools.cached_property
    def local_mask(self) -> Tensor:
        """[B, L, L] bool dense local mask (SDPA backend)."""
        b, l = self.doc.shape
        idx = torch.arange(l, device=self.doc.device)
        causal = idx[None, :, None] >= idx[None, None, :]
        same_doc = (self.doc[:, :, None] == self.doc[:, None, :]) & (self.doc[:, :, None] >= 0)
        both_stream = self.stream[:, :, None] & self.stream[:, None, :]
        return (causal & (same_doc | both_stream)) | torch.eye(l, dtype=torch.bool, device=self.doc.device)[None]


def backend(device: torch.device) -> str:
    forced = os.environ.get("MSA_TRAIN_ATTENTION")
    if forced:
        if forced not in ("sdpa", "flex"):
            raise ValueError(f"MSA_TRAIN_ATTENTION must be 'sdpa' or 'flex', got {forced!r}")
        return forced
    return "flex" if device.type == "cuda" else "sdpa"


def train_attention(q: Tensor, k: Tensor, v: Tensor, layout: TrainLayout, chunk_first: Tensor | None = None,
                    chunk_keep: Tensor | None = None) -> Tensor:  # fmt: skip
    """q: [B, L, Hq, D]; k, v: [B, L + Cmax, Hkv, D]; chunk_first: [B, Cmax] long sequence index of each
    chunk slot's first token (L = empty slot), None when there are no chunk keys. -> [B, L, Hq, D].

    chunk_keep: [B, Cmax] bool, slots this layer reads (the fast path's static layout: chunk_first is
    then the same in every router layer, so the block mask is built once per step and shared, and the
    layer's selection masks scores of the other slots)."""
    if (layout.backend or backend(q.device)) == "sdpa":
        mask = layout.local_mask
        if chunk_first is not None:
            pos = torch.arange(q.shape[1], device=q.device)
            chunk = layout.stream[:, :, None] & (chunk_first[:, None, :] < pos[None, :, None])
            if chunk_keep is not None:
                chunk = chunk & chunk_keep[:, None, :]
            mask = torch.cat([mask, chunk], dim=-1)
        return attend(q, k, v, mask)
    return _flex(q, k, v, layout, chunk_first, chunk_keep)


def _pad_to(x: Tensor, dim: int, size: int, value=0) -> Tensor:
    if x.shape[dim] == size:
        return x
    pad = [0, 0] * (x.dim() - dim - 1) + [0, size - x.shape[dim]]
    return F.pad(x, pad, value=value)


def prepare_block_masks(layout: TrainLayout, chunk_first: Tensor | None, device: torch.device) -> None:
    """Build (and cache in ``layout``) the FlexAttention block masks of a step before the layers run: the
    local mask of non-router layers and, for the fast path's static chunk slots chunk_first [B, Cmax],
    the one mask every router layer shares. A no-op on the SDPA backend."""
    if (layout.backend or backend(device)) != "flex":
        return
    _block_mask(layout, None, False, device)
    if chunk_first is not None:
        _block_mask(layout, chunk_first, True, device)


def _block_mask(layout: TrainLayout, chunk_first: Tensor | None, static: bool, device: torch.device):
    """The block mask over keys [L padded tokens | Cmax padded chunk slots] (see the module docstring);
    cached in ``layout`` unless the chunks are per layer (``static`` False with chunks)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, l = layout.doc.shape
    c = 0 if chunk_first is None else chunk_first.shape[1]
    lp, cp = bucket(l), (bucket(c) if c else 0)
    cache_key = ("chunks", lp, cp) if c and static else (lp, 0) if not c else None
    if cache_key in layout.block_masks:
        return layout.block_masks[cache_key]
    doc = _pad_to(layout.doc, 1, lp, -1)
    stream = _pad_to(layout.stream, 1, lp, False)
    first = _pad_to(chunk_first, 1, cp, lp) if c else None

    def mask_mod(bi, h, qi, ki):
        kt = torch.clamp(ki, max=lp - 1)
        local = (ki < lp) & (kt <= qi) & (((doc[bi, qi] == doc[bi, kt]) & (doc[bi, qi] >= 0)) | (stream[bi, qi] & stream[bi, kt]))
        local = local | (qi == ki)
        if first is None:
            return local
        ci = torch.clamp(ki - lp, min=0, max=cp - 1)
        return local | ((ki >= lp) & stream[bi, qi] & (first[bi, ci] < qi))

    # _compile builds the mask block by block instead of materialising [B, L, L+C] (memory, speed)
    block_mask = create_block_mask(mask_mod, b, None, lp, lp + cp, device=device, _compile=device.type == "cuda")
    if cache_key:
        layout.block_masks[cache_key] = block_mask
    return block_mask


def _masked_slots(keep: Tensor, lp: int):
    """A FlexAttention score_mod: -inf on chunk slots (keys >= lp) that keep [B, Cp] leaves out."""
    cp = keep.shape[1]

    def score_mod(score, bi, h, qi, ki):
        ci = torch.clamp(ki - lp, min=0, max=cp - 1)
        return torch.where((ki >= lp) & ~keep[bi, ci], -float("inf"), score)

    return score_mod


def _flex(q: Tensor, k: Tensor, v: Tensor, layout: TrainLayout, chunk_first: Tensor | None,
          chunk_keep: Tensor | None = None) -> Tensor:  # fmt: skip
    l = layout.doc.shape[1]
    c = 0 if chunk_first is None else chunk_first.shape[1]
    lp, cp = bucket(l), (bucket(c) if c else 0)
    # The local-only mask is shared by all non-router layers; with chunk_keep (static slots) the chunk
    # mask is the same in all router layers too. Only the reference path's per-layer chunks rebuild it.
    block_mask = _block_mask(layout, chunk_first, chunk_keep is not None, q.device)
    tok_k, chunk_k = k[:, :l], k[:, l:]
    tok_v, chunk_v = v[:, :l], v[:, l:]
    kk = torch.cat([_pad_to(tok_k, 1, lp), _pad_to(chunk_k, 1, cp)], 1) if c else _pad_to(tok_k, 1, lp)
    vv = torch.cat([_pad_to(tok_v, 1, lp), _pad_to(chunk_v, 1, cp)], 1) if c else _pad_to(tok_v, 1, lp)
    qq = _pad_to(q, 1, lp)
    score_mod = _masked_slots(_pad_to(chunk_keep, 1, cp, False), lp) if chunk_keep is not None and c else None
    if torch.compiler.is_compiling():  # inside a compiled decoder block: traced into the block's graph
        from torch.nn.attention.flex_attention import flex_attention as fn
    else:
        fn = _flex_fn(q.device.type)
    out = fn(qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), score_mod=score_mod, block_mask=block_mask,
             enable_gqa=True)  # fmt: skip
    return out.transpose(1, 2)[:, :l]


@functools.lru_cache(maxsize=None)
def _flex_fn(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    if device_type == "cuda":
        # One compiled kernel per (batch, length bucket, memory bucket); past dynamo's default limit of 8
        # recompiles it would silently fall back to the eager path, which materialises [B, H, L, L].
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
        return torch.compile(flex_attention, dynamic=False)
    return flex_attention
