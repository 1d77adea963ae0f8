"""The engine over a sharded bank: the unchanged ``Engine`` with a ``DistributedBankView``."""

from __future__ import annotations

from pathlib import Path

import torch

from msa.engine import Engine
from msa.parallel.dist import DistContext, init_distributed
from msa.parallel.view import DistributedBankView


def distributed_engine(model, tokenizer, bank_path: str | Path, ctx: DistContext | None = None,
                       device: str | torch.device | None = None, timeout_s: float = 120.0,
                       content_tier: str = "host", tile_chunks: int | None = None,
                       doc_choice: str | None = None) -> Engine:  # fmt: skip
    """An ``Engine`` whose memory is the bank at ``bank_path`` sharded over the process group.

    Call on every rank (under torchrun) with the same model; then call ``ask``/``ask_batch`` on every
    rank with the same questions: every rank returns the same answers. ``ctx``: an existing
    ``init_distributed`` context (joined here when None, with ``timeout_s``). ``doc_choice``: see
    ``Engine`` (default: the model's ``policy.doc_choice``).
    """
    ctx = ctx or init_distributed(timeout_s=timeout_s)
    device = torch.device(device) if device is not None else ctx.device
    view = DistributedBankView(bank_path, ctx, model, tokenizer, device=device, content_tier=content_tier,
                               tile_chunks=tile_chunks)  # fmt: skip
    return Engine(model, tokenizer, view, device=device, doc_choice=doc_choice)
