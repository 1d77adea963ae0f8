"""DistributedAccess: the MemoryAccess of Memory Parallel (every rank runs the same questions).

Per router layer:
1. route: each rank scores its shard exactly (the bank's own tiled scorer) and keeps its local top-k
   as (raw score, GLOBAL slot), padded with (-inf, -1) to exactly k, so every rank contributes the same
   shape whatever its shard size (empty shards included). One all_gather of [B, k, 2] float64; every
   rank then forms the same global top-k with ``merge_topk`` (higher score first, then lower global
   slot — the single-process order) and applies ``coupled_scale``.
2. fetch: the selection is known everywhere, and so is the owner and chunk count of every document
   (``ShardLayout``). For each rank holding selected documents, the owner gathers exactly those
   chunks (unique documents, ascending slot) through its shard's tiered fetch (pinned host -> device
   on a side stream) and broadcasts one [n_r, 2, Hkv, D] tensor; ranks with nothing selected send
   nothing. Receivers assemble [B, Cmax, Hkv, D] in the requested document order, exactly as the
   single-process fetch does.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import Tensor

from msa.memory.catalog import CatalogSnapshot
from msa.model.memory import Routing
from msa.parallel.dist import DistContext
from msa.parallel.sharding import ShardLayout

log = logging.getLogger(__name__)


def merge_topk(scores: Tensor, slots: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Global top-k of candidates: scores [B, M] float, slots [B, M] long (-1 = padding).

    Higher score first, ties towards the lower slot; only finite scores are selectable.
    Returns docs [B, k] long (-1 padded) and scores [B, k] (-inf padded), dtype of ``scores``.
    """
    scores = torch.where(torch.isfinite(scores) & (slots >= 0), scores, torch.full_like(scores, float("-inf")))
    by_slot = torch.argsort(slots, dim=1, stable=True)
    s1, d1 = scores.gather(1, by_slot), slots.gather(1, by_slot)
    order = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, :k]
    top_s, top_d = s1.gather(1, order), d1.gather(1, order)
    ok = torch.isfinite(top_s)
    b = scores.shape[0]
    docs = torch.full((b, k), -1, dtype=torch.long)
    out = torch.full((b, k), float("-inf"), dtype=scores.dtype)
    n = top_s.shape[1]
    docs[:, :n] = torch.where(ok, top_d, -1)
    out[:, :n] = torch.where(ok, top_s, float("-inf"))
    return docs, out


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
        """q_router: [B, Tq, Hq, D]; query_mask: [B, Tq] bool -> Routing, docs [B, k] global slots.

        Every rank must call it with the same B (the same questions)."""
        local = self.shard.route(layer, q_router, query_mask, k)
        docs = local.docs.cpu().long()
        slots = torch.full_like(docs, -1)
        ok = docs >= 0
        slots[ok] = self._local_to_global[docs[ok]]
        packed = torch.stack([local.scores.cpu().double(), slots.double()], -1).to(self.ctx.comm_device)  # [B, k, 2]
        gathered = [torch.empty_like(packed) for _ in range(self.ctx.world)]
        with self.ctx.phase(f"route layer {layer}"):
            dist.all_gather(gathered, packed)
        cand = torch.stack(gathered, 1).cpu()  # [B, W, k, 2]
        b = cand.shape[0]
        sc, sl = cand[..., 0].reshape(b, -1), cand[..., 1].reshape(b, -1).long()
        top_docs, top_scores = merge_topk(sc, sl, k)
        return Routing(top_docs, top_scores.float() * self.coupled_scale)

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """docs: [B, k] global slots (-1 = none), the same on every rank -> keys, values
        [B, Cmax, Hkv, D] on ``device`` (selected documents' chunks in the order given, zero padded)
        and valid [B, Cmax] bool."""
        lay, ctx = self.layout, self.ctx
        docs = docs.cpu().long()
        b = docs.shape[0]
        hkv, d = self.kv_shape
        sel = torch.unique(docs[docs >= 0])  # ascending
        owner, chunks = lay.slot_rank[sel], lay.slot_chunks[sel]
        parts = []
        for r in range(ctx.world):
            mine = sel[owner == r]
            n = int(lay.slot_chunks[mine].sum())
            if n == 0:
                continue
            if r == ctx.rank:
                k_, v_, _ = self.shard.fetch(layer, lay.slot_local[mine][None])  # [1, n, Hkv, D]
                buf = torch.stack([k_[0], v_[0]], 1).to(ctx.comm_device)
            else:
                buf = torch.empty(n, 2, hkv, d, dtype=self.dtype, device=ctx.comm_device)
            with ctx.phase(f"fetch layer {layer} from rank {r}"):
                dist.broadcast(buf, src=r)
            parts.append(buf)
        # received order: by owner rank, then ascending slot; start of every selected document in it
        order = torch.argsort(owner * (lay.num_docs + 1) + sel, stable=True)
        starts = torch.zeros_like(sel)
        starts[order] = torch.cumsum(chunks[order], 0) - chunks[order]
        pos = {int(s): (int(st), int(c)) for s, st, c in zip(sel, starts, chunks)}
        rows = []
        for row in docs:
            idx = [torch.arange(pos[int(x)][0], pos[int(x)][0] + pos[int(x)][1]) for x in row if int(x) >= 0]
            rows.append(torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long))
        cmax = max((len(i) for i in rows), default=0)
        keys = torch.zeros(b, cmax, hkv, d, dtype=self.dtype, device=self.device)
        values = torch.zeros(b, cmax, hkv, d, dtype=self.dtype, device=self.device)
        valid = torch.zeros(b, cmax, dtype=torch.bool, device=self.device)
        if parts:
            received = torch.cat(parts).to(self.device)  # [n_total, 2, Hkv, D]
            for s, idx in enumerate(rows):
                got = received.index_select(0, idx.to(self.device))
                keys[s, : len(idx)] = got[:, 0]
                values[s, : len(idx)] = got[:, 1]
                valid[s, : len(idx)] = True
        return keys, values, valid
