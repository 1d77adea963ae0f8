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


def train_attention(q: Tensor, k: Tensor, v: Tensor, layout: TrainLayout, chunk_first: Tensor | None = None) -> Tensor:
    """q: [B, L, Hq, D]; k, v: [B, L + Cmax, Hkv, D]; chunk_first: [B, Cmax] long sequence index of each
    chunk slot's first token (L = empty slot), None when there are no chunk keys. -> [B, L, Hq, D]."""
    if backend(q.device) == "sdpa":
        mask = layout.local_mask
        if chunk_first is not None:
            pos = torch.arange(q.shape[1], device=q.device)
            chunk = layout.stream[:, :, None] & (chunk_first[:, None, :] < pos[None, :, None])
            mask = torch.cat([mask, chunk], dim=-1)
        return attend(q, k, v, mask)
    return _flex(q, k, v, layout, chunk_first)


def _pad_to(x: Tensor, dim: int, size: int, value=0) -> Tensor:
    if x.shape[dim] == size:
        return x
    pad = [0, 0] * (x.dim() - dim - 1) + [0, size - x.shape[dim]]
    return F.pad(x, pad, value=value)


def _flex(q: Tensor, k: Tensor, v: Tensor, layout: TrainLayout, chunk_first: Tensor | None) -> Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    b, l = layout.doc.shape
    c = 0 if chunk_first is None else chunk_first.shape[1]
    lp = bucket(l)
    cp = bucket(c) if c else 0
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

    cache_key = (lp, cp) if first is None else None  # the local-only mask is shared by all non-router layers
    block_mask = layout.block_masks.get(cache_key) if cache_key else None
    if block_mask is None:
        # _compile builds the mask block by block instead of materialising [B, L, L+C] (memory, speed)
        block_mask = create_block_mask(mask_mod, b, None, lp, lp + cp, device=q.device, _compile=q.is_cuda)
        if cache_key:
            layout.block_masks[cache_key] = block_mask
    tok_k, chunk_k = k[:, :l], k[:, l:]
    tok_v, chunk_v = v[:, :l], v[:, l:]
    kk = torch.cat([_pad_to(tok_k, 1, lp), _pad_to(chunk_k, 1, cp)], 1) if c else _pad_to(tok_k, 1, lp)
    vv = torch.cat([_pad_to(tok_v, 1, lp), _pad_to(chunk_v, 1, cp)], 1) if c else _pad_to(tok_v, 1, lp)
    qq = _pad_to(q, 1, lp)
    out = _flex_fn(q.device.type)(qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), block_mask=block_mask,
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
