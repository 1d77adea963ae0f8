"""DistributedBankView: the engine's MemoryView over a bank sharded across the ranks."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from msa.memory import MemoryBank
from msa.memory.catalog import Catalog
from msa.model.memory import PrefixCache
from msa.parallel.access import DistributedAccess
from msa.parallel.dist import DistContext
from msa.parallel.sharding import ShardPlan, open_shard

log = logging.getLogger(__name__)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the bank manifest")
    return dtype


class _ShardedSnapshot:
    def __init__(self, access: DistributedAccess, slot_ids: Tensor, text):
        self.access, self.slot_ids, self.text = access, slot_ids, text

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int):
        return self.access.route(layer, q_router, query_mask, k)

    def fetch(self, layer: int, docs: Tensor):
        return self.access.fetch(layer, docs)


class DistributedBankView:
    """MemoryView for ``Engine``: every rank opens the bank (read-only, catalog on a shared filesystem)
    and loads only its shard. ``slot_ids`` are global; ``text`` reads the catalog; ``access`` reloads
    the shards collectively when any rank sees a newer catalog generation. Every rank must call
    ``access`` in lockstep (the engine does, once per ``ask_batch``).

    device: routing keys and fetched K/V (default: ``ctx.device``). content_tier: "host" or "disk".
    """

    def __init__(self, bank_path: str | Path, ctx: DistContext, model=None, tokenizer=None,
                 device: str | torch.device | None = None, content_tier: str = "host",
                 tile_chunks: int | None = None, verify: bool = True):  # fmt: skip
        self.ctx = ctx
        self.device = torch.device(device) if device is not None else ctx.device
        self.bank = MemoryBank.open(bank_path, model, tokenizer, device=self.device, readonly=True, content_tier=content_tier)
        self.tile_chunks, self.verify = tile_chunks, verify
        self._access: DistributedAccess | None = None
        self.plan: ShardPlan | None = None
        self._load()

    def _load(self) -> None:
        plan, shard = open_shard(self.bank, self.ctx, self.tile_chunks, self.verify)
        with self.bank.catalog.read() as c:
            manifest = Catalog.manifest(c)
        self.plan = plan
        self._access = DistributedAccess(
            shard, plan.layout, self.ctx, self.bank.routing_options.coupled_scale,
            (int(manifest["num_kv_heads"]), int(manifest["head_dim"])), _dtype(manifest["dtype"]), self.device,
        )  # fmt: skip

    @property
    def prefix(self) -> PrefixCache:
        return self.bank.prefix

    def access(self) -> DistributedAccess:
        gens = self.ctx.all_gather_object(self.bank.generation, "view.generation")
        if any(g != self.plan.layout.generation for g in gens):  # type: ignore[union-attr]
            self._load()
        return self._access  # type: ignore[return-value]

    def slot_ids(self) -> Tensor:
        """[N] long bank id of every global slot."""
        return self.plan.layout.slot_to_id  # type: ignore[union-attr]

    def text(self, doc_id: int) -> str | None:
        return self.bank.text(doc_id)

    def snapshot(self) -> "_ShardedSnapshot":
        """The engine's MemorySnapshot: the collective access, global slot ids and texts."""
        return _ShardedSnapshot(self.access(), self.slot_ids(), self.text)

    def __len__(self) -> int:
        return self.plan.layout.num_docs  # type: ignore[union-attr]

    def close(self) -> None:
        self.bank.close()

    def __enter__(self) -> "DistributedBankView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
