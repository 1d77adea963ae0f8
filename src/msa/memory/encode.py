"""Stage 1 encoding for the bank: tokenise formatted documents, split long ones, pack batches, encode."""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from msa.model.memory import CompressedMemory

log = logging.getLogger(__name__)

# A gid with more digits than any real id: splitting budgets are measured with it, so a piece formatted
# with its real (shorter) gid is never longer than measured.
PLACEHOLDER_GID = 10**18 - 1
_LEVELS = (re.compile(r"(?<=[.!?;])\s+|\n\s*"), re.compile(r"\s+"))


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens added (HF tokenizers or ``tokenizers.Tokenizer``)."""
    out = tokenizer.encode(text, add_special_tokens=False)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def tokenizer_fingerprint(tokenizer) -> str | None:
    """Hash of the tokenizer's definition, or None when it cannot be serialised."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "to_str"):
        return text_hash(backend.to_str())
    if hasattr(tokenizer, "get_vocab"):
        return text_hash(repr(sorted(tokenizer.get_vocab().items())))
    return None


@dataclass
class Piece:
    """One document to store: an input text, or one piece of a split input text.

    item: index of the input text in the ``add`` call; index: piece number (0 = first/only piece).
    tokens: [L] int32 token ids of the formatted document (filled once the id is known).
    source_hash: hash of the whole input text (every piece of it). lead / trail: the input's text
    before this piece (after the previous one) and, on the last piece, after it: the pieces joined
    with them give the input back exactly. replaces: ids of the rows this document replaces (first
    piece; an update).
    """

    item: int
    index: int
    text: str
    doc_id: int = -1
    parent: int | None = None
    source_hash: str = ""
    tokens: np.ndarray | None = None
    lead: str = ""
    trail: str = ""
    replaces: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return 0 if self.tokens is None else int(len(self.tokens))


def _spans(text: str, start: int, end: int, level: int) -> list[tuple[int, int]]:
    """Non-blank spans of text[start:end] cut at this level's separators (sentences, words); level 2
    (single characters) is handled by halving in ``_units``."""
    out, pos = [], start
    for m in _LEVELS[level].finditer(text, start, end):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < end:
        out.append((pos, end))
    return out


def _units(text: str, start: int, end: int, level: int, count: Callable[[str], int], limit: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) units of text[start:end], each at most ``limit`` tokens on its own."""
    out = []
    spans = _spans(text, start, end, level) if level < len(_LEVELS) else [(start, end)]
    for s, e in spans:
        n = count(text[s:e])
        if n <= limit:
            out.append((s, e, n))
        elif level + 1 < len(_LEVELS):
            out.extend(_units(text, s, e, level + 1, count, limit))
        elif e - s > 1:
            mid = (s + e) // 2
            out.extend(_units(text, s, mid, len(_LEVELS), count, limit))
            out.extend(_units(text, mid, e, len(_LEVELS), count, limit))
        else:
            raise ValueError(f"a single character needs {n} tokens, more than the budget {limit}")
    return out


def split_text(text: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Split ``text`` at sentence, then word, then character boundaries into pieces of at most
    ``budget`` tokens as measured by ``count`` (which includes the document wrapper)."""
    return [text[a:b] for a, b in split_spans(text, count, budget)]


def split_spans(text: str, count: Callable[[str], int], budget: int) -> list[tuple[int, int]]:
    """The pieces of ``split_text`` as increasing, non-overlapping (start, end) spans of ``text``."""
    overhead = count("")
    if overhead >= budget:
        raise ValueError(f"max_doc_tokens={budget} leaves no room for text (the wrapper alone is {overhead} tokens)")
    units = _units(text, 0, len(text), 0, lambda t: count(t) - overhead, budget - overhead)
    groups: list[list[tuple[int, int, int]]] = [[]]
    used = overhead
    for u in units:
        if groups[-1] and used + u[2] + 1 > budget:
            groups.append([])
            used = overhead
        groups[-1].append(u)
        used += u[2] + 1

    pieces: list[tuple[int, int]] = []

    def emit(group: list[tuple[int, int, int]]) -> None:
        span = (group[0][0], group[-1][1])
        if len(group) > 1 and count(text[span[0] : span[1]]) > budget:  # the estimate was off: halve and retry
            emit(group[: len(group) // 2])
            emit(group[len(group) // 2 :])
        else:
            pieces.append(span)

    for g in groups:
        if g:
            emit(g)
    return pieces


def commit_groups(items: list[list[Piece]], segment_tokens: int) -> list[list[Piece]]:
    """Consecutive whole items (all pieces of a text together, so no document is ever half committed)
    grouped up to ``segment_tokens`` tokens: one group = one segment = one catalog transaction."""
    groups: list[list[Piece]] = [[]]
    used = 0
    for pieces in items:
        n = sum(p.length for p in pieces)
        if groups[-1] and used + n > segment_tokens:
            groups.append([])
            used = 0
        groups[-1].extend(pieces)
        used += n
    return [g for g in groups if g]


def encode_batches(pieces: list[Piece], batch_tokens: int) -> list[list[Piece]]:
    """Sort by length (the commit group is the sorting window) and pack so that the padded batch
    (documents x longest) stays within ``batch_tokens`` (a longer document goes alone)."""
    order = sorted(pieces, key=lambda p: -p.length)
    batches: list[list[Piece]] = []
    for p in order:
        if batches and (len(batches[-1]) + 1) * batches[-1][0].length <= batch_tokens:
            batches[-1].append(p)
        else:
            batches.append([p])
    return batches


def encode_group(model, pieces: list[Piece], batch_tokens: int, on_batch: Callable[[list[Piece]], None] | None = None) -> CompressedMemory:
    """Encode one commit group -> CompressedMemory on the CPU, documents in batch order, doc_ids = ids."""
    parts = []
    order: list[Piece] = []
    for batch in encode_batches(pieces, batch_tokens):
        mem = model.encode([torch.from_numpy(p.tokens.astype(np.int64)) for p in batch])  # type: ignore[union-attr]
        mem = mem.to("cpu")
        mem.doc_ids = torch.tensor([p.doc_id for p in batch], dtype=torch.long)
        parts.append(mem)
        order.extend(batch)
        if on_batch is not None:
            on_batch(batch)
    pieces[:] = order
    return CompressedMemory.cat(parts) if len(parts) > 1 else parts[0]


class DocumentEncoder:
    """What the storage layer asks of a model: token pieces of a document and their compressed memory.

    Holds the model, its tokenizer, the bank's prompt format and write settings (``max_doc_tokens``,
    ``on_long``, ``batch_tokens``) and shows progress (a bar on a terminal) while encoding.
    """

    def __init__(self, model, tokenizer, prompt, settings, progress: bool | None = None):
        self.model, self.tokenizer, self.prompt, self.settings = model, tokenizer, prompt, settings
        self.progress = progress

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    def pieces(self, text: str, doc_id: int, h: str, item: int, next_id: int) -> tuple[list[Piece], int]:
        """Tokenised pieces of one text (split when longer than max_doc_tokens); returns next free id.

        The first piece has id ``doc_id``; the others take ids from ``next_id`` on, ``parent`` = doc_id.
        Raises DocumentTooLongError with ``on_long="error"``."""
        from msa.memory.errors import DocumentTooLongError

        fmt, tok, limit = self.prompt, self.tokenizer, self.settings.max_doc_tokens
        tokens = tokenize(tok, fmt.format_document(doc_id, text))
        if len(tokens) <= limit:
            return [Piece(item, 0, text, doc_id, None, h, np.asarray(tokens, dtype=np.int32))], next_id
        if self.settings.on_long == "error":
            raise DocumentTooLongError(
                f"document {doc_id} has {len(tokens)} tokens, more than max_doc_tokens={limit} (on_long='error')"
            )
        spans = split_spans(text, lambda t: len(tokenize(tok, fmt.format_document(PLACEHOLDER_GID, t))), limit)
        out = []
        for j, (a, b) in enumerate(spans):
            pid = doc_id
            if j:
                pid, next_id = next_id, next_id + 1
            toks = tokenize(tok, fmt.format_document(pid, text[a:b]))
            lead = text[spans[j - 1][1] if j else 0 : a]
            trail = text[b:] if j == len(spans) - 1 else ""
            out.append(Piece(item, j, text[a:b], pid, None if j == 0 else doc_id, h, np.asarray(toks, dtype=np.int32),
                             lead, trail))  # fmt: skip
        log.info("document %d (%d tokens) split into %d pieces", doc_id, len(tokens), len(out))
        return out, next_id

    def encode(self, group: list[Piece], on_batch: Callable[[list[Piece]], None] | None = None) -> CompressedMemory:
        """``encode_group`` with the bank's batch size (reorders ``group`` to the memory's order)."""
        return encode_group(self.model, group, self.settings.batch_tokens, on_batch)

    def bar(self, total_tokens: int, total_docs: int, progress: bool | None = None) -> "Progress":
        """A progress display; ``progress`` (else the encoder's): None = on a terminal, False = never."""
        progress = self.progress if progress is None else progress
        show = (progress if progress is not None else True) and sys.stderr.isatty()
        return Progress(total_tokens, total_docs, show)


class Progress:
    """Encoding progress: tokens on a bar, documents and documents/s beside it."""

    def __init__(self, total_tokens: int, total_docs: int, show: bool):
        from tqdm.auto import tqdm

        self.total_docs, self.done_docs, self.start = total_docs, 0, time.perf_counter()
        self.bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="encode", disable=not show)

    def __call__(self, batch: list[Piece]) -> None:
        self.done_docs += len(batch)
        self.bar.update(sum(p.length for p in batch))
        rate = self.done_docs / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(docs=f"{self.done_docs}/{self.total_docs}", docs_s=f"{rate:.1f}")

    def close(self) -> None:
        self.bar.close()
