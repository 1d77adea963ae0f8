"""Typed values for compressed memory: what encode mode returns and query mode reads.

Memory state is explicit: these values are passed in and out of the model, never hidden in buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class LayerMemory:
    """One router layer's chunk-pooled tensors. All three are [C, Hkv, D].

    routing_keys: pooled router keys KRbar (raw router_k_proj output; normalised at routing time).
    keys: pooled content keys Kbar (after k_norm and document-local RoPE).
    values: pooled content values Vbar.
    """

    routing_keys: Tensor
    keys: Tensor
    values: Tensor

    def index_chunks(self, chunk_index: Tensor) -> "LayerMemory":
        return LayerMemory(*(t.index_select(0, chunk_index.to(t.device)) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.routing_keys, self.keys, self.values


@dataclass
class CompressedMemory:
    """Chunk-pooled memory of N documents for every router layer.

    layers: router layer index -> LayerMemory with C chunks.
    chunk_doc: [C] long, owning document slot 0..N-1 of every chunk (chunks of a document are contiguous).
    doc_lengths: [N] long, tokens of every document.
    doc_ids: [N] long, user-visible id of every document slot (default 0..N-1).
    """

    layers: dict[int, LayerMemory]
    chunk_doc: Tensor
    doc_lengths: Tensor
    doc_ids: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.doc_ids is None:
            self.doc_ids = torch.arange(len(self.doc_lengths), dtype=torch.long)

    @property
    def num_docs(self) -> int:
        return int(self.doc_lengths.numel())

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_doc.numel())

    def doc_chunk_counts(self) -> Tensor:
        """[N] long chunks per document."""
        return torch.bincount(self.chunk_doc.cpu(), minlength=self.num_docs)

    def doc_chunk_offsets(self) -> Tensor:
        """[N] long index of every document's first chunk."""
        counts = self.doc_chunk_counts()
        return torch.cumsum(counts, 0) - counts

    def chunks_of(self, docs: Tensor) -> Tensor:
        """[sum chunks] long chunk indices of the given document slots, in the order given."""
        docs = docs.cpu().long()
        counts = self.doc_chunk_counts()[docs]
        starts = self.doc_chunk_offsets()[docs]
        rep = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
        return torch.arange(int(counts.sum())) + rep

    def select(self, docs: Tensor) -> "CompressedMemory":
        """A memory holding only the given document slots, in the order given."""
        docs = docs.cpu().long()
        chunk_index = self.chunks_of(docs)
        counts = self.doc_chunk_counts()[docs]
        return CompressedMemory(
            layers={i: m.index_chunks(chunk_index) for i, m in self.layers.items()},
            chunk_doc=torch.repeat_interleave(torch.arange(len(docs)), counts).to(self.chunk_doc.device),
            doc_lengths=self.doc_lengths.cpu()[docs].to(self.doc_lengths.device),
            doc_ids=self.doc_ids.cpu()[docs],
        )

    @staticmethod
    def cat(parts: list["CompressedMemory"]) -> "CompressedMemory":
        """Concatenate memories (document slots renumbered in order)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        layer_ids = parts[0].layers.keys()
        offsets = torch.cumsum(torch.tensor([0] + [p.num_docs for p in parts[:-1]]), 0)
        return CompressedMemory(
            layers={
                i: LayerMemory(*(torch.cat([p.layers[i].tensors()[j] for p in parts]) for j in range(3)))
                for i in layer_ids
            },
            chunk_doc=torch.cat([p.chunk_doc.cpu() + int(o) for p, o in zip(parts, offsets)]),
            doc_lengths=torch.cat([p.doc_lengths.cpu() for p in parts]),
            doc_ids=torch.cat([p.doc_ids.cpu() for p in parts]),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "CompressedMemory":
        return CompressedMemory(
            layers={i: LayerMemory(*(t.to(device, dtype) for t in m.tensors())) for i, m in self.layers.items()},
            chunk_doc=self.chunk_doc.to(device),
            doc_lengths=self.doc_lengths,
            doc_ids=self.doc_ids,
        )


@dataclass
class PrefixCache:
    """K/V of the template prefix (official: ``<|im_start|>user\\n`` at positions 0..2), every layer.

    keys[l], values[l]: [Hkv, P, D] after k_norm and RoPE.
    """

    token_ids: Tensor
    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return int(self.token_ids.numel())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PrefixCache":
        return PrefixCache(
            self.token_ids, [k.to(device, dtype) for k in self.keys], [v.to(device, dtype) for v in self.values]
        )


@dataclass
class Routing:
    """One router layer's selection for a batch of queries.

    docs: [B, k] long document slots, best first, -1 where fewer than k were selectable.
    scores: [B, k] float32 scores of those documents (-inf at -1 slots).
    """

    docs: Tensor
    scores: Tensor


class MemoryAccess(Protocol):
    """What query mode needs from a memory: route a layer's router queries, then fetch the selection.

    Implementations: ``msa.model.memory.DenseMemoryAccess`` (reference, all tensors resident), the
    memory bank's tiered access (routing keys on the device, content K/V on the host), Memory Parallel.
    """

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        """q_router: [B, Tq, Hq, D]; query_mask: [B, Tq] bool."""
        ...

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """docs: [B, k] slots (-1 = none) -> keys, values [B, Cmax, Hkv, D] and valid [B, Cmax] bool."""
        ...


@dataclass
class RoutingOptions:
    """How router queries meet routing keys (see ``MSAConfig``)."""

    cosine: bool = True
    head_reduce: str = "mean"
    query_reduce: str = "max"
    chunk_reduce: str = "max"
    coupled_scale: float = 1.0


class DenseMemoryAccess:
    """Reference MemoryAccess over a resident CompressedMemory: scores every document, exact top-k.

    ``live``: optional [N] bool; documents marked False are never selected (deleted documents).
    """

    def __init__(self, memory: CompressedMemory, options: RoutingOptions, live: Tensor | None = None):
        self.memory = memory
        self.options = options
        self.live = live

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        from msa import functional as MF

        mem = self.memory
        o = self.options
        kr = mem.layers[layer].routing_keys
        b = q_router.shape[0]
        docs = torch.full((b, k), -1, dtype=torch.long)
        scores = torch.full((b, k), float("-inf"))
        for s in range(b):
            sc = MF.doc_scores(
                q_router[s].to(kr.device), kr, mem.chunk_doc.to(kr.device), mem.num_docs,
                query_mask[s].to(kr.device), o.cosine, head_reduce=o.head_reduce,  # type: ignore[arg-type]
                query_reduce=o.query_reduce, chunk_reduce=o.chunk_reduce,  # type: ignore[arg-type]
            )  # fmt: skip
            if self.live is not None:
                sc = sc.masked_fill(~self.live.to(sc.device), float("-inf"))
            top = MF.select_docs(sc, k)
            docs[s, : len(top)] = top.cpu()
            scores[s, : len(top)] = sc[top].cpu() * o.coupled_scale
        return Routing(docs, scores)

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mem = self.memory
        lm = mem.layers[layer]
        b = docs.shape[0]
        per_sample = [mem.chunks_of(d[d >= 0]) for d in docs.cpu()]
        cmax = max((len(c) for c in per_sample), default=0)
        hkv, d = lm.keys.shape[1:]
        keys = lm.keys.new_zeros(b, cmax, hkv, d)
        values = lm.values.new_zeros(b, cmax, hkv, d)
        valid = torch.zeros(b, cmax, dtype=torch.bool)
        for s, idx in enumerate(per_sample):
            keys[s, : len(idx)] = lm.keys.index_select(0, idx.to(lm.keys.device))
            values[s, : len(idx)] = lm.values.index_select(0, idx.to(lm.values.device))
            valid[s, : len(idx)] = True
        return keys, values, valid.to(keys.device)
