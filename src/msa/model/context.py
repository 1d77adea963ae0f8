"""Per-forward state for the three modes, passed explicitly through the layers (no hidden buffers)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from msa.model.memory import LayerMemory, MemoryAccess, PrefixCache, Routing

if TYPE_CHECKING:
    from msa.model.static_cache import StaticKVCache
    from msa.model.train_attention import TrainLayout


@dataclass
class PackedBatch:
    """Training samples ``[template | documents | query + response]``, right-padded to L.

    input_ids: [B, L] long.
    doc_ids: [B, L] long, official conventions: 0 routing-query token, d > 0 token of the sample's
        document d (1..N_b, each contiguous), -1 response / other context, -2 template.
    position_ids: [B, L] long: template 0.., documents restart at 0, query from the query offset.
    attention_mask: [B, L] bool, False on padding.
    """

    input_ids: Tensor
    doc_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.doc_ids, self.position_ids, self.attention_mask)))


def _pad_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


@dataclass
class RouterLayout:
    """Static per-step chunk layout shared by every router layer (fast training path): every chunk of
    every document of a sample has a fixed slot, so router layers need no host reads and keep the same
    tensor shapes; a layer's selection only masks slots (``train_attention``'s ``chunk_keep``).

    token_slot: [B*L] long flat slot (into B*Cs) of every token's chunk; B*Cs for tokens outside documents.
    slot_count: [B*Cs] float tokens of each slot (1 for empty slots).
    slot_doc: [B, Cs] long 0-based document (within the sample) of each slot, -1 for empty slots.
    slot_first: [B, Cs] long sequence index of each slot's first token (L for empty slots).
    query_index: [B, Tq] long flat indices (into B*L) of each sample's routing tokens (0 = padding).
    query_valid: [B, Tq] bool.
    """

    token_slot: Tensor
    slot_count: Tensor
    slot_doc: Tensor
    slot_first: Tensor
    query_index: Tensor
    query_valid: Tensor

    def pool(self, x: Tensor) -> Tensor:
        """Chunk means of per-token x [B, L, H, D] -> [B, Cs, H, D] (float32 accumulation, x's dtype)."""
        b, cs = self.slot_doc.shape
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sums = x.new_zeros((b * cs + 1,) + tuple(x.shape[2:]), dtype=acc)
        sums.index_add_(0, self.token_slot, x.flatten(0, 1).to(acc))
        pooled = sums[:-1] / self.slot_count.to(acc).view(-1, *([1] * (x.dim() - 2)))
        return pooled.to(x.dtype).view(b, cs, *x.shape[2:])

    @classmethod
    def build(cls, ctx: "TrainContext", shape: tuple[int, int], chunk_size: int, multiple: int) -> "RouterLayout":
        """From a TrainContext's documents (one host read); slot and query counts are padded up to
        ``multiple`` so compiled kernels are reused across steps."""
        from msa.functional import chunk_layout

        b, l = shape
        dev = ctx.doc_tokens.device
        token_chunk, chunk_doc = chunk_layout(ctx.doc_lengths, chunk_size)
        chunk_sample = ctx.doc_sample[chunk_doc]
        rows, cols = ctx.query_mask.nonzero(as_tuple=True)
        c_counts = torch.bincount(chunk_sample, minlength=b)
        q_counts = torch.bincount(rows, minlength=b)
        cmax, tmax = (int(v) for v in torch.stack([c_counts.max(), q_counts.max()]).tolist()) if b else (0, 0)
        cs, tq = _pad_up(max(cmax, 1), multiple), _pad_up(max(tmax, 1), multiple)
        c_slot = torch.arange(len(chunk_doc), device=dev) - (torch.cumsum(c_counts, 0) - c_counts)[chunk_sample]
        flat_slot = chunk_sample * cs + c_slot  # [C]
        token_slot = torch.full((b * l,), b * cs, dtype=torch.long, device=dev)
        token_slot[ctx.doc_tokens] = flat_slot[token_chunk]
        slot_count = torch.ones(b * cs, device=dev).index_put_((flat_slot,), torch.bincount(token_chunk, minlength=len(chunk_doc)).float())
        slot_doc = torch.full((b * cs,), -1, dtype=torch.long, device=dev)
        slot_doc[flat_slot] = ctx.doc_local[chunk_doc]
        first = torch.full((len(chunk_doc),), l, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, token_chunk, ctx.doc_tokens % l, reduce="amin")
        slot_first = torch.full((b * cs,), l, dtype=torch.long, device=dev)
        slot_first[flat_slot] = first
        q_slot = torch.arange(len(rows), device=dev) - (torch.cumsum(q_counts, 0) - q_counts)[rows]
        query_index = torch.zeros(b, tq, dtype=torch.long, device=dev)
        query_index[rows, q_slot] = rows * l + cols
        query_valid = torch.zeros(b, tq, dtype=torch.bool, device=dev)
        query_valid[rows, q_slot] = True
        return cls(token_slot, slot_count, slot_doc.view(b, cs), slot_first.view(b, cs), query_index, query_valid)


@dataclass
class RouteInputs:
    """What a training router layer scored: router queries [B, Tq, Hq, D] (query_mask [B, Tq] bool) over
    each sample's pooled router keys [B, C, Hkv, D] owned by chunk_doc [B, C] (-1 = padding)."""

    q_router: Tensor
    query_mask: Tensor
    k_router: Tensor
    chunk_doc: Tensor


@dataclass
class TrainContext:
    """Layout of a packed batch, computed once per forward.

    layout: per-token document / stream / padding description the attention backends build masks from.
    doc_tokens: [T] long flat indices (into B*L) of all document tokens, sample-major, document order.
    doc_lengths: [N] long tokens of every (sample, document), sample-major.
    doc_sample: [N] long sample of every document; doc_local: [N] long its 0-based index in the sample.
    query_mask: [B, L] bool routing-query tokens (doc_ids == 0, not padding).
    stream_mask: [B, L] bool tokens that read memory (doc_ids < 1, not padding).
    scores: filled by router layers: layer -> [B, Nmax] float32 document scores (-inf: no such doc).
    selected: filled by router layers: layer -> Routing (document indices 0-based within the sample).
    route_inputs: filled by router layers: layer -> the RouteInputs its scores came from (for losses
        that score queries against other samples' documents, ``msa.functional.cross_doc_scores``).
    router: the static chunk layout of the fast path (``RouterLayout``), or None: router layers then
        gather their selected chunks per layer (the reference path).
    """

    layout: "TrainLayout"
    doc_tokens: Tensor
    doc_lengths: Tensor
    doc_sample: Tensor
    doc_local: Tensor
    query_mask: Tensor
    stream_mask: Tensor
    top_k: int
    max_docs: int
    scores: dict[int, Tensor] = field(default_factory=dict)
    selected: dict[int, Routing] = field(default_factory=dict)
    route_inputs: dict[int, "RouteInputs"] = field(default_factory=dict)
    router: RouterLayout | None = None

    @classmethod
    def from_batch(cls, batch: PackedBatch, top_k: int, chunk_size: int | None = None, multiple: int = 1) -> "TrainContext":
        """The context of ``batch``; with ``chunk_size`` also the fast path's RouterLayout (slot, query
        and document counts padded up to ``multiple``)."""
        ctx = cls._from_batch(batch, top_k)
        if chunk_size is not None:
            ctx.router = RouterLayout.build(ctx, tuple(batch.input_ids.shape), chunk_size, multiple)
            ctx.max_docs = _pad_up(max(ctx.max_docs, 1), multiple)
        return ctx

    @classmethod
    def _from_batch(cls, batch: PackedBatch, top_k: int) -> "TrainContext":
        from msa.model.train_attention import TrainLayout

        doc_ids, valid = batch.doc_ids, batch.attention_mask.bool()
        l = doc_ids.shape[1]
        is_doc = (doc_ids > 0) & valid
        stream = (doc_ids < 1) & valid
        layout = TrainLayout(doc=torch.where(is_doc, doc_ids, torch.full_like(doc_ids, -1)), stream=stream, valid=valid)
        # Documents: runs of equal (sample, doc id) among document tokens, in sequence order.
        base = int(doc_ids.max().clamp(min=0)) + 1
        flat_doc = torch.where(is_doc, doc_ids, torch.zeros_like(doc_ids)).flatten()
        doc_tokens = is_doc.flatten().nonzero().squeeze(-1)
        uniq, counts = torch.unique_consecutive((doc_tokens // l) * base + flat_doc[doc_tokens], return_counts=True)
        doc_sample = uniq // base
        doc_local = uniq % base - 1
        if len(uniq) and len(torch.unique(uniq)) != len(uniq):
            raise ValueError("every document's tokens must be contiguous within its sample")
        max_docs = int(doc_local.max()) + 1 if len(uniq) else 0
        return cls(
            layout=layout,
            doc_tokens=doc_tokens,
            doc_lengths=counts,
            doc_sample=doc_sample,
            doc_local=doc_local,
            query_mask=(doc_ids == 0) & valid,
            stream_mask=stream,
            top_k=top_k,
            max_docs=max_docs,
        )


@dataclass
class EncodeContext:
    """Documents only; router layers write their pooled tensors to ``out``.

    Padded layout: [N, Lmax] rows, one document each, causal attention. Packed layout (``packed`` set):
    one row [1, T] of all documents back to back, attention block-diagonal causal (no padding work).
    lengths: [N] long real tokens per document; tokens: [T] long flat indices of real tokens in the batch.
    packed: TrainLayout describing the packed row's documents, or None for the padded layout.
    """

    lengths: Tensor
    tokens: Tensor
    out: dict[int, LayerMemory] = field(default_factory=dict)
    chunk_doc: Tensor | None = None
    packed: "TrainLayout | None" = None


@dataclass
class KVCache:
    """Per-layer attention context of a batch of queries during prefill and decoding.

    keys[l], values[l]: [B, S_l, Hkv, D]; valid[l]: [B, S_l] bool (S_l differs per layer:
    router layers also hold their selected chunks). next_position: [B] long.
    carry_layer: when set, the input of that layer (the first router layer) is kept for every fed token:
    hidden[j] [B, t_j, hidden] with hidden_valid[j] [B, t_j] bool, in feeding order (``msa.model.carry``).
    """

    keys: list[Tensor | None]
    values: list[Tensor | None]
    valid: list[Tensor | None]
    next_position: Tensor | None = None
    carry_layer: int | None = None
    hidden: list[Tensor] = field(default_factory=list)
    hidden_valid: list[Tensor] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int, carry_layer: int | None = None) -> "KVCache":
        return cls([None] * num_layers, [None] * num_layers, [None] * num_layers, carry_layer=carry_layer)

    def keep_hidden(self, h: Tensor, valid: Tensor) -> None:
        """Record the input [B, t, hidden] of ``carry_layer`` for fed tokens ([B, t] bool real ones)."""
        self.hidden.append(h)
        self.hidden_valid.append(valid)


@dataclass
class QueryContext:
    """Prefill (routing) or decoding of a batch of left-padded queries.

    attention_mask: [B, T] bool new tokens that are real. query_mask: [B, T] bool routing-query tokens.
    cache: grows by concatenation (``KVCache``), or is written in place (``StaticKVCache``, decoding only).
    memory / prefix: where router layers route and fetch; the template prefix K/V (or None).
    routing: True during prefill (router layers route), False while decoding (context is cached).
    routings: filled by router layers during prefill.
    carry_layer: the layer whose input the cache keeps (``KVCache.carry_layer``), or None.
    """

    attention_mask: Tensor
    query_mask: Tensor
    cache: "KVCache | StaticKVCache"
    memory: MemoryAccess | None = None
    prefix: PrefixCache | None = None
    top_k: int = 16
    routing: bool = True
    routings: dict[int, Routing] = field(default_factory=dict)
    carry_layer: int | None = None

    @functools.cached_property
    def self_mask(self) -> Tensor:
        """[B, T, T] bool: new token i sees real new tokens j <= i, and always itself (the same in every
        layer, so built once per forward)."""
        t = self.attention_mask.shape[1]
        dev = self.attention_mask.device
        causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
        eye = torch.eye(t, dtype=torch.bool, device=dev)
        return (causal[None] & self.attention_mask.bool()[:, None, :]) | eye[None]
