"""A MemoryView held entirely in memory: encode a list of texts, ask, nothing persisted."""

from __future__ import annotations

import torch
from torch import Tensor

from msa.model import CompressedMemory, MemoryAccess, MSAForCausalLM, PrefixCache
from msa.prompt import OFFICIAL, PromptFormat


class InMemoryView:
    """Documents encoded at construction (ids 0..N-1 unless given), routed by the reference access."""

    def __init__(self, model: MSAForCausalLM, tokenizer, texts: list[str], ids: list[int] | None = None,
                 prompt: PromptFormat = OFFICIAL, batch_size: int = 64):  # fmt: skip
        if not texts:
            raise ValueError("no documents given")
        ids = list(range(len(texts))) if ids is None else list(ids)
        if len(ids) != len(texts) or len(set(ids)) != len(ids):
            raise ValueError("ids must be unique and one per text")
        self.texts = dict(zip(ids, texts))
        seqs = [tokenizer.encode(prompt.format_document(i, t), add_special_tokens=False) for i, t in zip(ids, texts)]
        parts = [model.encode(seqs[j : j + batch_size]) for j in range(0, len(seqs), batch_size)]
        self.memory: CompressedMemory = CompressedMemory.cat(parts) if len(parts) > 1 else parts[0]
        self.memory.doc_ids = torch.tensor(ids, dtype=torch.long)
        self.prefix: PrefixCache = model.encode_prefix(tokenizer.encode(prompt.memory_prefix, add_special_tokens=False))
        self._access = model.memory_access(self.memory)

    def access(self) -> MemoryAccess:
        return self._access

    def snapshot(self) -> "InMemorySnapshot":
        """The memory as the engine reads it (it never changes)."""
        return InMemorySnapshot(self._access, self.memory.doc_ids, self.texts)

    def slot_ids(self) -> Tensor:
        return self.memory.doc_ids

    def text(self, doc_id: int) -> str | None:
        return self.texts.get(doc_id)

    def __len__(self) -> int:
        return len(self.texts)


class InMemorySnapshot:
    """A MemorySnapshot of an InMemoryView: its access, ``slot_ids`` [N] long and texts."""

    def __init__(self, access: MemoryAccess, slot_ids: Tensor, texts: dict[int, str]):
        self._access, self.slot_ids, self._texts = access, slot_ids, texts

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int):
        return self._access.route(layer, q_router, query_mask, k)

    def fetch(self, layer: int, docs: Tensor):
        return self._access.fetch(layer, docs)

    def text(self, doc_id: int) -> str | None:
        return self._texts.get(doc_id)
