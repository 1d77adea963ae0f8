"""DistributedBankView: the engine's MemoryView over a bank sharded across the ranks."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from msa.memory import MemoryBank
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


class DistributedBankView:
    """MemoryView for ``Engine``: every rank opens the bank (read-only, catalog on a shared filesystem)
    and loads only its shard. ``snapshot`` reloads the shards collectively when any rank sees a newer
    catalog generation and returns the ``DistributedAccess`` of the agreed state (global ``slot_ids``,
    texts of that state). Every rank must call ``snapshot`` in lockstep (the engine does, once per
    ``ask_batch``).

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
        with plan.catalog.query() as r:  # type: ignore[union-attr]
            manifest = r.manifest()
        self.plan = plan
        self._access = DistributedAccess(
            shard, plan.layout, self.ctx, self.bank.routing_options.coupled_scale,
            (int(manifest["num_kv_heads"]), int(manifest["head_dim"])), _dtype(manifest["dtype"]), self.device,
            catalog=plan.catalog,
        )  # fmt: skip

    @property
    def prefix(self) -> PrefixCache:
        return self.bank.prefix

    def snapshot(self) -> DistributedAccess:
        """The sharded memory at the newest generation every rank agrees on (collective)."""
        gens = self.ctx.all_gather_ints([self.bank.generation], "view.generation")  # [W, 1]
        if bool((gens != self.plan.layout.generation).any()):  # type: ignore[union-attr]
            self._load()
        return self._access  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.plan.layout.num_docs  # type: ignore[union-attr]

    def close(self) -> None:
        self.bank.close()

    def __enter__(self) -> "DistributedBankView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
