"""A snapshot's content K/V resident on the compute device, gathered there without host work.

``fetch`` of the host tiers assembles the selected chunks on the host (one read of the routing result,
per-document copies) and copies them over. With the content on the device, the selection is turned
into gather indices by tensor ops of fixed shape, [B, k * max_doc_chunks]: no synchronisation, the
same shapes every call (what a CUDA graph needs). Content may be held in bfloat16, or in float8 (e4m3) with one
float32 scale per chunk (its absolute maximum maps to the format's largest value), half the bytes of
bfloat16; ``fetch`` returns it dequantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ResidentContent:
    """keys, values: layer -> [C, Hkv, D] on the device (segments back to back), as stored, bfloat16 or
    float8;
    key_scale, value_scale: layer -> [C] float32 (None: not quantized); dtype: the stored dtype;
    start, count: [N] long first chunk and chunks of every slot; max_doc_chunks: the largest count."""

    keys: dict[int, Tensor]
    values: dict[int, Tensor]
    key_scale: dict[int, Tensor | None]
    value_scale: dict[int, Tensor | None]
    dtype: torch.dtype
    start: Tensor
    count: Tensor
    max_doc_chunks: int

    @classmethod
    def build(cls, segments, loc: list[tuple[int, int, int]], device: torch.device,
              content_dtype: torch.dtype | None = None) -> "ResidentContent":  # fmt: skip
        """segments: LoadedSegment list (content on the host); loc: per slot (segment, first chunk, chunks)."""
        if content_dtype not in (None, torch.bfloat16, torch.float8_e4m3fn):
            raise ValueError(f"resident content is stored as is, torch.bfloat16 or torch.float8_e4m3fn, not {content_dtype}")
        sizes = [next(iter(seg.keys.values())).shape[0] for seg in segments]
        seg_start = torch.cumsum(torch.tensor([0] + sizes[:-1]), 0)
        places = torch.tensor(loc, dtype=torch.long).reshape(-1, 3)
        layers = list(segments[0].keys)
        store = to_fp8 if content_dtype == torch.float8_e4m3fn else lambda t: (t.to(content_dtype or t.dtype), None)
        keys = {i: store(torch.cat([seg.keys[i].to(device) for seg in segments])) for i in layers}
        values = {i: store(torch.cat([seg.values[i].to(device) for seg in segments])) for i in layers}
        return cls(
            keys={i: k for i, (k, _) in keys.items()}, values={i: v for i, (v, _) in values.items()},
            key_scale={i: sc for i, (_, sc) in keys.items()}, value_scale={i: sc for i, (_, sc) in values.items()},
            dtype=segments[0].keys[layers[0]].dtype,
            start=(seg_start[places[:, 0]] + places[:, 1]).to(device),
            count=places[:, 2].to(device),
            max_doc_chunks=int(places[:, 2].max()) if len(places) else 0,
        )  # fmt: skip

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys.values(), *self.values.values(), *self.key_scale.values(), *self.value_scale.values()]
        return sum(t.nbytes for t in tensors if t is not None)

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """docs: [B, k] slots (-1 = none) -> keys, values [B, k * max_doc_chunks, Hkv, D] (the selected
        documents' chunks in the order given, then invalid padding) and valid [B, k * max_doc_chunks]."""
        dev = self.start.device
        docs = docs.to(dev).long()
        b, k = docs.shape
        m = self.max_doc_chunks
        d = docs.clamp(min=0)
        count = torch.where(docs >= 0, self.count[d], 0)  # [B, k]
        first = torch.cumsum(count, 1) - count  # row slot of every document's first chunk
        c = torch.arange(m, device=dev)
        live = c < count[..., None]  # [B, k, m]
        dump = k * m  # dead entries are scattered to one extra column, dropped after
        dest = torch.where(live, first[..., None] + c, dump).reshape(b, -1)
        src = torch.where(live, self.start[d][..., None] + c, 0).reshape(b, -1)
        index = torch.zeros(b, dump + 1, dtype=torch.long, device=dev).scatter_(1, dest, src)[:, :dump]
        valid = torch.zeros(b, dump + 1, dtype=torch.bool, device=dev).scatter_(1, dest, live.reshape(b, -1))
        return self._gather(self.keys, self.key_scale, layer, index), self._gather(
            self.values, self.value_scale, layer, index), valid[:, :dump]  # fmt: skip

    def _gather(self, store: dict[int, Tensor], scale: dict[int, Tensor | None], layer: int, index: Tensor) -> Tensor:
        out = store[layer][index]  # [B, M, Hkv, D]
        sc = scale[layer]
        return out.to(self.dtype) if sc is None else (out.float() * sc[index][..., None, None]).to(self.dtype)


def to_fp8(t: Tensor) -> tuple[Tensor, Tensor]:
    """[C, Hkv, D] -> float8_e4m3fn values and [C] float32 scales (a chunk's amax maps to the format's max)."""
    amax = t.float().abs().amax(dim=(1, 2)).clamp(min=1e-12)
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    return (t.float() / scale[:, None, None]).to(torch.float8_e4m3fn), scale
