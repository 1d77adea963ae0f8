"""Collator: training samples -> PackedBatch + LM labels + aux (routing) labels.

Per sample, the packed row is (official layout, MSA_SPEC B 3.1, 3.5, 7)::

    tokens     memory_prefix | doc 1 ... doc N                      | head+question+tail | turn_end | response_head | target segments
    doc_ids    -2 ...        | 1 ... | ... | N ...                  | 0 ...              | -2 ...   | -1            | per segment (-1 / 0)
    positions  0..P-1        | 0..len_1-1 | ... | 0..len_N-1        | q, q+1, ...  (q = msa.query_offset, continuing +1 to the end)
    labels     -100 everywhere except the tokens of target segments (their own token id)

Document i (1-based placement order) is ``fmt.document`` with the document's GLOBAL id:
``<|im_start|>[{gid}]. {text}[{gid}]<|im_end|>``. Rows are right-padded (attention_mask False,
doc_ids -1, positions 0, labels -100). ``labels[b, t]`` is the target for the logits at ``t - 1``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from msa.model.context import PackedBatch
from msa.prompt import OFFICIAL, TEMPLATE, PromptFormat, query_segments
from msa.train.data import TrainSample
from msa.train.targets import Segment, TargetFormat, interleave_transcript, literal_target

logger = logging.getLogger(__name__)

__all__ = ["IGNORE", "TrainBatch", "Collator", "EncodedSample"]

IGNORE = -100


@dataclass
class EncodedSample:
    """One sample as flat lists (length L_b): input_ids, doc_ids, position_ids, labels; aux labels [N_b];
    doc_keys [N_b]: a hash of each document's text (``doc_key``), equal for the same document in any sample."""

    input_ids: list[int]
    doc_ids: list[int]
    position_ids: list[int]
    labels: list[int]
    aux_labels: list[int]
    doc_keys: list[int] = field(default_factory=list)


def doc_key(text: str) -> int:
    """A 63-bit hash of a document's text, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


@dataclass
class TrainBatch:
    """A collated micro-batch.

    packed: the model input (PackedBatch, [B, L] tensors).
    labels: [B, L] long, LM target token at t (predicted from logits at t-1), IGNORE elsewhere.
    aux_labels: B tensors [N_b] long 0/1, 1 = positive document, in doc_ids order 1..N_b.
    positives: per sample, the number of positive documents (a host-side copy, so the loss needs no
        device round trip to know it; filled from ``aux_labels`` when not given).
    doc_keys: B tensors [N_b] int64, ``doc_key`` of each document's text (empty when unknown): the same
        document in two samples has the same key (batch negatives leave a query's own positives out).
    """

    packed: PackedBatch
    labels: Tensor
    aux_labels: list[Tensor]
    positives: list[int] = field(default_factory=list)
    doc_keys: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.positives:
            self.positives = [int(a.sum()) for a in self.aux_labels]

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.packed.attention_mask.sum())

    def to(self, device: torch.device | str) -> "TrainBatch":
        """The batch's tensors on ``device``; aux labels and doc keys stay on the host, where the loss
        builds its row masks from them (per-sample device reads would stall the step)."""
        return TrainBatch(self.packed.to(device), self.labels.to(device), self.aux_labels, self.positives,
                          self.doc_keys)  # fmt: skip

    def lm_targets(self) -> tuple[Tensor, Tensor]:
        """(logits_index [M] flat indices into B*L of positions t-1 whose next token is a target,
        targets [M] token ids)."""
        b, l = self.labels.shape
        nxt = torch.full_like(self.labels, IGNORE)
        nxt[:, :-1] = self.labels[:, 1:]
        flat = nxt.flatten()
        index = (flat != IGNORE).nonzero().squeeze(-1)
        return index, flat[index]


class Collator:
    """Builds TrainBatch from TrainSample lists.

    Args:
        tokenizer: any object with ``encode(text, add_special_tokens=False) -> list[int]``.
        query_offset: position of the first query token (``ModelConfig.msa.query_offset``).
        target_format: a function of msa.train.targets (samples with a ``target`` use it verbatim).
        fmt: prompt strings (official by default).
        max_doc_tokens: truncate each formatted document to this many tokens (None: keep whole).
        pad_id: token id of padding.
        template_len: expected token count of ``fmt.memory_prefix`` (a mismatch is logged once).
    """

    def __init__(self, tokenizer, query_offset: int, target_format: TargetFormat = interleave_transcript,
                 fmt: PromptFormat = OFFICIAL, max_doc_tokens: int | None = None, pad_id: int = 0,
                 template_len: int | None = None):  # fmt: skip
        self.tokenizer = tokenizer
        self.query_offset = query_offset
        self.target_format = target_format
        self.fmt = fmt
        self.max_doc_tokens = max_doc_tokens
        self.pad_id = pad_id
        self._warned_long = False
        self.prefix = self._encode(fmt.memory_prefix)
        if template_len is not None and len(self.prefix) != template_len:
            logger.warning(
                "memory prefix %r is %d tokens but msa.template_len is %d", fmt.memory_prefix, len(self.prefix), template_len
            )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def encode(self, sample: TrainSample, max_tokens: int | None = None) -> EncodedSample:
        """Lay one sample out (see the module docstring). With ``max_tokens``, distractor documents are
        left out, last first, until the sample fits (positives are always kept)."""
        docs = []
        for doc in sample.memory:
            t = self._encode(self.fmt.format_document(doc.id, doc.text))
            docs.append(t[: self.max_doc_tokens] if self.max_doc_tokens is not None else t)
        fmt_fn = literal_target if sample.target is not None else self.target_format
        stream = [Segment(text, did, False) for text, did in query_segments(self.fmt, sample.question)]
        stream += fmt_fn(sample, self.fmt)
        encoded = [(self._encode(seg.text), seg) for seg in stream]
        keep = list(range(len(docs)))
        if max_tokens is not None:
            total = len(self.prefix) + sum(map(len, docs)) + sum(len(t) for t, _ in encoded)
            positives = set(sample.positives)
            for i in reversed(range(len(docs))):
                if total <= max_tokens:
                    break
                if sample.memory[i].id not in positives:
                    keep.remove(i)
                    total -= len(docs[i])
            if total > max_tokens and not self._warned_long:
                self._warned_long = True
                logger.warning("a sample needs %d tokens with only its positives in memory (max_tokens %d)", total, max_tokens)
        ids = list(self.prefix)
        doc_ids = [TEMPLATE] * len(ids)
        pos = list(range(len(ids)))
        labels = [IGNORE] * len(ids)
        for slot, i in enumerate(keep, start=1):
            ids += docs[i]
            doc_ids += [slot] * len(docs[i])
            pos += range(len(docs[i]))
            labels += [IGNORE] * len(docs[i])
        p = self.query_offset
        for t, seg in encoded:
            ids += t
            doc_ids += [seg.doc_id] * len(t)
            pos += range(p, p + len(t))
            p += len(t)
            labels += t if seg.target else [IGNORE] * len(t)
        aux = sample.labels()
        return EncodedSample(ids, doc_ids, pos, labels, [aux[i] for i in keep], [doc_key(sample.memory[i].text) for i in keep])

    def __call__(self, samples: list[TrainSample], max_tokens: int | None = None) -> TrainBatch:
        return self.pad([self.encode(s, max_tokens) for s in samples])

    def pad(self, encoded: list[EncodedSample]) -> TrainBatch:
        """Right-pad encoded samples into one batch."""
        if not encoded:
            raise ValueError("cannot collate an empty batch")
        b, l = len(encoded), max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((b, l), self.pad_id, dtype=torch.long)
        doc_ids = torch.full((b, l), -1, dtype=torch.long)
        pos = torch.zeros((b, l), dtype=torch.long)
        labels = torch.full((b, l), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, l), dtype=torch.bool)
        for r, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[r, :n] = torch.tensor(e.input_ids)
            doc_ids[r, :n] = torch.tensor(e.doc_ids)
            pos[r, :n] = torch.tensor(e.position_ids)
            labels[r, :n] = torch.tensor(e.labels)
            mask[r, :n] = True
        aux = [torch.tensor(e.aux_labels, dtype=torch.long) for e in encoded]
        keys = [torch.tensor(e.doc_keys, dtype=torch.long) for e in encoded] if all(
            len(e.doc_keys) == len(e.aux_labels) for e in encoded) else []  # fmt: skip
        return TrainBatch(PackedBatch(input_ids, doc_ids, pos, mask), labels, aux, doc_keys=keys)
