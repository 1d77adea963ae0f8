"""DistributedAccess: the MemoryAccess of Memory Parallel (every rank runs the same questions).

Per router layer, two tensor collectives on ``DistContext.comm_device`` (NCCL on GPU, gloo on CPU),
no object collective and no side barrier (``DistContext.collective``):
1. route: each rank scores its shard exactly (the bank's own scorer) and keeps its local top-k as
   (raw score, GLOBAL slot) float64 pairs, padded with (-inf, -1) to exactly k, so every rank
   contributes the same shape whatever its shard size (empty shards included). ONE all-gather into a
   [W*B, k, 2] tensor on the device; every rank then forms the same global top-k with ``merge_topk``
   on the host (higher score first, then lower global slot: the single-process order) and applies
   ``coupled_scale``.
2. fetch: the selection is known everywhere, and so is the owner and chunk count of every document
   (``ShardLayout``), hence every rank's number of selected chunks n_r (``FetchPlan``). Each owner
   gathers its selected chunks (unique documents, ascending slot) through its shard's tiered fetch
   (pinned host -> device on a side stream) into a block of max_r n_r chunks [n_max, 2, Hkv, D]
   (zero padded), and ONE all-gather of the blocks gives every rank all selected chunks; one
   ``index_select`` assembles [B, Cmax, Hkv, D] in the requested document order, exactly as the
   single-process fetch does. Nothing selected anywhere: no collective.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from msa.memory.catalog import CatalogSnapshot
from msa.model.memory import Routing
from msa.parallel.dist import DistContext
from msa.parallel.sharding import ShardLayout

log = logging.getLogger(__name__)

# one output tensor for all ranks' equal-size inputs (renamed all_gather_single in torch 2.13)
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def merge_topk(scores: Tensor, slots: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Global top-k of candidates: scores [B, M] float, slots [B, M] long (-1 = padding), any device.

    Higher score first, ties towards the lower slot; only finite scores are selectable.
    Returns docs [B, k] long (-1 padded) and scores [B, k] (-inf padded), dtype and device of ``scores``.
    """
    scores = torch.where(torch.isfinite(scores) & (slots >= 0), scores, torch.full_like(scores, float("-inf")))
    by_slot = torch.argsort(slots, dim=1, stable=True)
    s1, d1 = scores.gather(1, by_slot), slots.gather(1, by_slot)
    order = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, :k]
    top_s, top_d = s1.gather(1, order), d1.gather(1, order)
    ok = torch.isfinite(top_s)
    b = scores.shape[0]
    docs = torch.full((b, k), -1, dtype=torch.long, device=scores.device)
    out = torch.full((b, k), float("-inf"), dtype=scores.dtype, device=scores.device)
    n = top_s.shape[1]
    docs[:, :n] = torch.where(ok, top_d, -1)
    out[:, :n] = torch.where(ok, top_s, float("-inf"))
    return docs, out


@dataclass
class FetchPlan:
    """Who sends which chunks for one fetch; computed identically on every rank (CPU tensors).

    sel: [S] long unique selected global slots, ascending; owner, chunks: [S] their rank and chunk
    count; block: chunks per rank in the all-gather (max over ranks of the selected chunks they own);
    index: [B, Cmax] long row of every requested chunk in the gathered [W * block] chunks (0 where
    padding); valid: [B, Cmax] bool.
    """

    sel: Tensor
    owner: Tensor
    chunks: Tensor
    block: int
    index: Tensor
    valid: Tensor

    @classmethod
    def build(cls, layout: ShardLayout, docs: Tensor) -> "FetchPlan":
        """docs: [B, k] long global slots (-1 = none)."""
        b = docs.shape[0]
        sel = torch.unique(docs[docs >= 0])  # ascending
        owner, chunks = layout.slot_rank[sel], layout.slot_chunks[sel]
        per_rank = torch.zeros(layout.world, dtype=torch.long).index_add_(0, owner, chunks)
        block = int(per_rank.max()) if sel.numel() else 0
        # a document's first row: its owner's block, then the owner's earlier (lower-slot) documents
        by_owner = torch.argsort(owner, stable=True)  # stable: ascending slot within an owner
        before = torch.cumsum(chunks[by_owner], 0) - chunks[by_owner]  # chunks of earlier owners included
        within = torch.empty_like(chunks)
        within[by_owner] = before - (torch.cumsum(per_rank, 0) - per_rank)[owner[by_owner]]
        first = owner * block + within
        ok = docs >= 0
        pos = torch.searchsorted(sel, docs.clamp(min=0)).clamp(max=max(sel.numel() - 1, 0))
        count = torch.where(ok, chunks[pos], 0) if sel.numel() else torch.zeros_like(docs)  # [B, k]
        start = first[pos] if sel.numel() else torch.zeros_like(docs)
        lens = count.sum(1)  # [B]
        cmax = int(lens.max()) if b else 0
        flat = count.flatten()
        total = int(flat.sum())
        step = torch.arange(total) - torch.repeat_interleave(torch.cumsum(flat, 0) - flat, flat)
        src = torch.repeat_interleave(start.flatten(), flat) + step  # [total] gathered row of each chunk
        row = torch.repeat_interleave(torch.arange(b), lens)
        col = torch.arange(total) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        index = torch.zeros(b, cmax, dtype=torch.long)
        valid = torch.zeros(b, cmax, dtype=torch.bool)
        index[row, col] = src
        valid[row, col] = True
        return cls(sel, owner, chunks, block, index, valid)


class DistributedAccess:
    """MemoryAccess over a sharded bank. ``Routing.docs`` are GLOBAL slots (the single-process
    bank's slot order), so ``slot_ids`` maps them to bank ids; ``text`` reads the agreed catalog state.

    shard: this rank's local MemoryAccess (local slots, RAW scores, e.g. ``load_shard``'s snapshot).
    layout: the replicated slot -> (rank, local slot, chunks) map. coupled_scale: the bank's.
    kv_shape: (Hkv, D) and dtype of content K/V (for receive buffers on ranks without documents).
    device: where fetched K/V are returned (the model's device).
    """

    def __init__(self, shard, layout: ShardLayout, ctx: DistContext, coupled_scale: float,
                 kv_shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
                 catalog: CatalogSnapshot | None = None):  # fmt: skip
        self.shard = shard
        self.catalog = catalog
        self.layout = layout
        self.ctx = ctx
        self.coupled_scale = coupled_scale
        self.kv_shape = kv_shape
        self.dtype = dtype
        self.device = torch.device(device)
        self._local_to_global = layout.local_slots(ctx.rank)

    @property
    def slot_ids(self) -> Tensor:
        """[N] long internal id of every global slot."""
        return self.layout.slot_to_id

    def text(self, doc_id: int) -> str | None:
        """Text of a routed row in the state the shards were cut from (this rank's catalog read)."""
        return None if self.catalog is None else self.catalog.text(doc_id)

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        """q_router: [B, Tq, Hq, D]; query_mask: [B, Tq] bool -> Routing, docs [B, k] global slots (CPU).

        Every rank must call it with the same B (the same questions)."""
        local = self.shard.route(layer, q_router, query_mask, k)
        docs = local.docs.cpu().long()
        slots = torch.full_like(docs, -1)
        ok = docs >= 0
        slots[ok] = self._local_to_global[docs[ok]]
        mine = torch.stack([local.scores.cpu().double(), slots.double()], -1).to(self.ctx.comm_device)  # [B, k, 2]
        b = mine.shape[0]
        every = torch.empty(self.ctx.world * b, k, 2, dtype=mine.dtype, device=mine.device)  # [W*B, k, 2]
        with self.ctx.collective(f"route layer {layer}"):
            _all_gather(every, mine)
        # merged on the host: the selection is needed there anyway (fetch plan), and a few dozen
        # scalars cost less there than a dozen kernel launches
        cand = every.cpu().view(self.ctx.world, b, k, 2).transpose(0, 1).reshape(b, -1, 2)  # [B, W*k, 2]
        top_docs, top_scores = merge_topk(cand[..., 0], cand[..., 1].long(), k)
        return Routing(top_docs, top_scores.float() * self.coupled_scale)

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """docs: [B, k] global slots (-1 = none), the same on every rank -> keys, values
        [B, Cmax, Hkv, D] on ``device`` (selected documents' chunks in the order given, zero padded)
        and valid [B, Cmax] bool."""
        lay, ctx = self.layout, self.ctx
        plan = FetchPlan.build(lay, docs.cpu().long())
        b, cmax = plan.index.shape
        hkv, d = self.kv_shape
        if plan.block == 0:  # nothing selected on any rank
            empty = torch.zeros(b, 0, hkv, d, dtype=self.dtype, device=self.device)
            return empty, empty.clone(), torch.zeros(b, 0, dtype=torch.bool, device=self.device)
        send = torch.zeros(plan.block, 2, hkv, d, dtype=self.dtype, device=ctx.comm_device)
        mine = plan.sel[plan.owner == ctx.rank]
        if mine.numel():
            k_, v_, _ = self.shard.fetch(layer, lay.slot_local[mine][None])  # [1, n_mine, Hkv, D]
            n = k_.shape[1]
            send[:n, 0] = k_[0].to(ctx.comm_device)
            send[:n, 1] = v_[0].to(ctx.comm_device)
        every = torch.empty(ctx.world * plan.block, 2, hkv, d, dtype=self.dtype, device=ctx.comm_device)
        with ctx.collective(f"fetch layer {layer}"):
            _all_gather(every, send)
        every = every.to(self.device)
        index = plan.index.flatten().to(self.device)
        valid = plan.valid.to(self.device)
        keys = every[:, 0].index_select(0, index).view(b, cmax, hkv, d)
        values = every[:, 1].index_select(0, index).view(b, cmax, hkv, d)
        if not bool(plan.valid.all()):  # rows of different lengths: zero the padding
            keys.masked_fill_(~valid[..., None, None], 0)
            values.masked_fill_(~valid[..., None, None], 0)
        return keys, values, valid
