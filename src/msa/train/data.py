"""Training samples: the JSONL training format, a streaming reader, and a bios sample generator.

JSONL training format (one sample per line, UTF-8)::

    {"question":  str,                                   # the user question (routing query)
     "memory":    [{"id": int, "text": str}, ...],       # the sample's memory documents, in the order
                                                         #   they are placed (doc_ids 1..N); "id" is the
                                                         #   document's GLOBAL id, written as [id]
     "positives": [int, ...],                            # global ids of the gold documents, in reasoning
                                                         #   order (multi-hop: hop 1 first); each must
                                                         #   appear in the memory
     "target":    str | null,                            # optional literal response text (overrides the
                                                         #   recipe's target format; all of it is a target)
     "answer":    str | null}                            # the answer, used by the target formats

Instead of "memory" a line may carry ``"memory_ref": {"world": {...BiosConfig fields...}, "ids": [...]}``:
the documents are the bios world's documents with those ids (generated on the fly, nothing stored).
Unknown keys are ignored; a missing "question" or "positives", a positive absent from the memory, or
both/neither of "memory" and "memory_ref" are errors naming the line.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from msa.data.bios_text import TRAIN_LEADS
from msa.data.bios import BiosConfig, BiosWorld
from msa.data.jsonl import read_jsonl
from msa.train.config import BiosSampling

logger = logging.getLogger(__name__)

__all__ = [
    "Document",
    "TrainSample",
    "SampleSource",
    "JsonlSamples",
    "BiosSamples",
    "NiahSamples",
    "MixedSamples",
    "sample_from_json",
    "sample_to_json",
]


@dataclass(frozen=True)
class Document:
    """One memory document: its global id (shown to the model as ``[id]``) and its text."""

    id: int
    text: str


@dataclass
class TrainSample:
    """One training sample (see the module docstring for the JSON form).

    memory: documents in placement order; positives: global ids of gold documents in reasoning order.
    """

    question: str
    memory: list[Document]
    positives: list[int]
    target: str | None = None
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [d.id for d in self.memory]
        if len(set(ids)) != len(ids):
            raise ValueError(f"memory document ids must be unique, got {ids}")
        missing = sorted(set(self.positives) - set(ids))
        if missing:
            raise ValueError(f"positives {missing} are not in the sample's memory")

    def labels(self) -> list[int]:
        """0/1 per memory slot (placement order), 1 = positive: the aux-loss labels."""
        pos = set(self.positives)
        return [int(d.id in pos) for d in self.memory]


@functools.lru_cache(maxsize=8)
def _world(num_people: int, seed: int, marriage_rate: float) -> BiosWorld:
    return BiosWorld(BiosConfig(num_people=num_people, seed=seed, marriage_rate=marriage_rate))


def sample_from_json(obj: dict[str, Any]) -> TrainSample:
    """Parse one JSONL record (see the module docstring); raises ValueError on a malformed record."""
    if not isinstance(obj, dict):
        raise ValueError(f"a training sample must be a JSON object, got {type(obj).__name__}")
    for key in ("question", "positives"):
        if key not in obj:
            raise ValueError(f"training sample lacks {key!r}")
    has_mem, has_ref = "memory" in obj, "memory_ref" in obj
    if has_mem == has_ref:
        raise ValueError("a training sample needs exactly one of 'memory' and 'memory_ref'")
    if has_mem:
        memory = [Document(int(d["id"]), str(d["text"])) for d in obj["memory"]]
    else:
        ref = obj["memory_ref"]
        world = _world(**{**{"num_people": 1024, "seed": 0, "marriage_rate": 0.6}, **ref.get("world", {})})
        memory = [Document(int(i), world.document(int(i))) for i in ref["ids"]]
    known = {"question", "memory", "memory_ref", "positives", "target", "answer"}
    return TrainSample(
        question=str(obj["question"]),
        memory=memory,
        positives=[int(i) for i in obj["positives"]],
        target=obj.get("target"),
        answer=obj.get("answer"),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def sample_to_json(sample: TrainSample, world: BiosConfig | None = None) -> dict[str, Any]:
    """The JSONL record of a sample; with ``world`` the memory is written as a ``memory_ref``."""
    out: dict[str, Any] = {"question": sample.question}
    if world is not None:
        cfg = {"num_people": world.num_people, "seed": world.seed, "marriage_rate": world.marriage_rate}
        out["memory_ref"] = {"world": cfg, "ids": [d.id for d in sample.memory]}
    else:
        out["memory"] = [{"id": d.id, "text": d.text} for d in sample.memory]
    out.update(positives=list(sample.positives), target=sample.target, answer=sample.answer)
    return out


class SampleSource(Protocol):
    """Where the training loop gets samples. ``iterate(start)`` yields the samples of global indices
    start, start+1, ... (forever, cycling a finite set), so the data position is one integer.
    ``num_docs`` asks for that many memory documents per sample where the source can make them
    (the curriculum); fixed datasets ignore it."""

    def iterate(self, start: int, num_docs: int | None = None) -> Iterator[TrainSample]: ...


class JsonlSamples:
    """Streams a JSONL training file (see the module docstring), cycling through it in file order.

    Resuming at position ``start`` skips ``start`` records (modulo the file length) without parsing them.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in read_jsonl(self.path))
        return self._len

    def __iter__(self) -> Iterator[TrainSample]:
        for lineno, obj in enumerate(read_jsonl(self.path), start=1):
            yield self._parse(obj, lineno)

    def _parse(self, obj: Any, lineno: int) -> TrainSample:
        try:
            return sample_from_json(obj)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: record {lineno}: {err}") from err

    def iterate(self, start: int, num_docs: int | None = None) -> Iterator[TrainSample]:
        n = len(self)
        if n == 0:
            raise ValueError(f"{self.path} holds no training samples")
        skip = start % n
        while True:
            records = itertools.islice(read_jsonl(self.path), skip, None)
            for lineno, obj in enumerate(records, start=skip + 1):
                yield self._parse(obj, lineno)
            skip = 0


class _Indexed:
    """A source with random access: ``iterate`` walks ``sample(i, num_docs)`` from ``start`` on."""

    def sample(self, index: int, num_docs: int | None = None) -> TrainSample:
        raise NotImplementedError

    def iterate(self, start: int, num_docs: int | None = None) -> Iterator[TrainSample]:
        for i in itertools.count(start):
            yield self.sample(i, num_docs)


_RECITE = ("Tell me about {who}.", "Who is {who}?", "Write the biography of {who}.")


class BiosSamples(_Indexed):
    """Generates bios QA samples on the fly: sample ``i`` is a pure function of ``(world, seed, kind, i,
    num_docs, sampling)``.

    memory = the question's gold documents plus ``num_docs - len(gold)`` distinct distractor
    documents of the world (random, and namesakes of the gold people per ``sampling``), shuffled;
    positives = the gold ids in reasoning order; answer = the answer; ``extra["names"]``: gold id ->
    the person's name as the question writes it (the first) or as documents write it.

    Args:
        world: the bios world configuration.
        num_docs: memory documents per sample (default; the curriculum may pass another).
        kind: "single", "multi", or "mixed" (multi-hop with probability ``multi_fraction``).
        seed: sample stream seed (different seeds give disjoint-looking streams, e.g. train vs held-out).
        recite_fraction: share of samples that ask for a person's whole biography ("Tell me about
            NAME."; answer = the document's text; kind "recite"): every token of the answer is a copy
            out of the retrieved document, a dense signal for the in-context copying that reading an
            answer needs (a question's answer has ~5 target tokens, a biography ~70).
        sampling: hard negatives, id range, name lookups and wording (``BiosSampling``).
    """

    def __init__(self, world: BiosConfig, num_docs: int = 16, kind: str = "single", seed: int = 0,
                 multi_fraction: float = 0.5, recite_fraction: float = 0.0,
                 sampling: BiosSampling | None = None):  # fmt: skip
        if kind not in ("single", "multi", "mixed"):
            raise ValueError(f"kind must be 'single', 'multi' or 'mixed', got {kind!r}")
        if num_docs < 2 and kind != "single":
            raise ValueError("multi-hop samples need num_docs >= 2")
        if num_docs > world.num_people:
            raise ValueError(f"num_docs={num_docs} exceeds the world's {world.num_people} documents")
        if not 0.0 <= recite_fraction <= 1.0:
            raise ValueError(f"recite_fraction must be in [0, 1], got {recite_fraction}")
        self.recite_fraction = recite_fraction
        self.config = world
        self.world = _world(world.num_people, world.seed, world.marriage_rate)
        self.num_docs = num_docs
        self.kind = kind
        self.seed = seed
        self.multi_fraction = multi_fraction
        self.sampling = sampling or BiosSampling()

    def sample(self, index: int, num_docs: int | None = None) -> TrainSample:
        n_docs = self.num_docs if num_docs is None else num_docs
        n_people = self.config.num_people
        rng = np.random.default_rng([self.seed, index, 0x5A17])
        opt = self.sampling
        kind = self.kind
        if kind == "mixed":
            kind = "multi" if rng.random() < self.multi_fraction else "single"
        if self.recite_fraction > 0 and rng.random() < self.recite_fraction:
            i = int(rng.integers(0, n_people))
            text = _RECITE[int(rng.integers(0, len(_RECITE)))].format(who=self.world.name(i))
            return self._with_distractors(rng, text, [i], self.world.document(i), "recite", n_docs)
        if opt.lookup_fraction > 0 and rng.random() < opt.lookup_fraction:
            i = int(rng.integers(0, n_people))
            name = self.world.name(i)
            written = name.lower() if opt.lower_fraction > 0 and rng.random() < opt.lower_fraction else name
            return self._with_distractors(rng, written, [i], self.world.document(i), "lookup", n_docs, {i: written})
        # (no draws for options that are off: the stream of a default BiosSampling is the one before it)
        lead = None
        if opt.lead_fraction > 0 and rng.random() < opt.lead_fraction:
            lead = TRAIN_LEADS[int(rng.integers(0, len(TRAIN_LEADS)))]
        lower = bool(opt.lower_fraction > 0 and rng.random() < opt.lower_fraction)
        for _ in range(10_000):
            try:
                q = self.world.question(int(rng.integers(0, n_people)), kind, wording=opt.wording, lead=lead,
                                        lower_names=lower)  # fmt: skip
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"could not draw a {kind}-hop question from this world")
        first = self.world.name(q.gold_ids[0])
        return self._with_distractors(rng, q.text, list(q.gold_ids), q.answer, q.kind, n_docs,
                                      {q.gold_ids[0]: first.lower() if lower else first})  # fmt: skip

    def _with_distractors(self, rng: np.random.Generator, question: str, gold: list[int], answer: str, kind: str,
                          n_docs: int, written: dict[int, str] | None = None) -> TrainSample:  # fmt: skip
        if n_docs < len(gold):
            raise ValueError(f"num_docs={n_docs} is smaller than the {len(gold)} gold documents")
        n_people = self.config.num_people
        chosen = list(gold)
        taken = set(gold)
        n_hard = int(round(self.sampling.hard_negative_fraction * (n_docs - len(gold))))
        if n_hard:
            pool = np.unique(np.concatenate([self.world.namesakes(g) for g in gold]))
            pool = [int(j) for j in pool if int(j) not in taken]
            for j in rng.permutation(len(pool))[:n_hard].tolist():
                chosen.append(pool[j])
                taken.add(pool[j])
        need = n_docs - len(chosen)
        draw = rng.choice(n_people, size=min(n_people, n_docs + len(chosen)), replace=False).tolist()
        chosen += [int(i) for i in draw if i not in taken][:need]
        rng.shuffle(chosen)
        texts = self.world.documents(chosen)
        names = {g: self.world.name(g) for g in gold} | (written or {})
        gid = self._ids(rng, chosen)
        memory = [Document(gid[i], t) for i, t in zip(chosen, texts)]
        return TrainSample(question, memory, [gid[g] for g in gold], None, answer,
                           {"kind": kind, "names": {gid[g]: n for g, n in names.items()}})  # fmt: skip

    def _ids(self, rng: np.random.Generator, people: list[int]) -> dict[int, int]:
        """Person -> the id its document shows in this sample (see ``BiosSampling.max_doc_id``)."""
        top = self.sampling.max_doc_id
        if top is None:
            return {p: p for p in people}
        digits = len(str(top - 1))
        out: dict[int, int] = {}
        used: set[int] = set()
        for p in people:
            while True:
                d = int(rng.integers(1, digits + 1))
                v = int(rng.integers(0 if d == 1 else 10 ** (d - 1), min(top, 10**d)))
                if v not in used:
                    break
            used.add(v)
            out[p] = v
        return out


class NiahSamples(_Indexed):
    """RULER NIAH samples (``msa.data.ruler``) as training samples: sample ``i`` is a pure function of
    ``(seed, i, num_docs)``.

    The haystack of ``num_docs * doc_tokens`` (approximate) tokens is cut into documents on sentence
    boundaries (``segment_context``) with random distinct global ids; positives = the documents that
    hold a queried needle, in the order of the expected values; answer = the values joined by ", ";
    ``extra["names"]``: gold id -> the key of its needle, what a retrieval round requests (as a bios
    sample's request is the person's name) instead of the document id, which a model cannot read out
    of pooled memory.
    Documents beyond ``num_docs`` (segmenting overshoots a little) are dropped from the haystack's
    end, never a positive. The subtask cycles through ``tasks``.
    """

    def __init__(self, num_docs: int = 16, seed: int = 0, doc_tokens: int = 96, tasks: tuple[str, ...] | None = None):
        from msa.data.ruler import TASKS

        self.tasks = tuple(tasks) if tasks else tuple(TASKS)
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown NIAH tasks {unknown}; expected some of {sorted(TASKS)}")
        if doc_tokens < 16:
            raise ValueError(f"doc_tokens must be >= 16, got {doc_tokens}")
        self.num_docs, self.seed, self.doc_tokens = num_docs, seed, doc_tokens

    def sample(self, index: int, num_docs: int | None = None) -> TrainSample:
        from msa.data.ruler import make_sample, segment_context

        n_docs = self.num_docs if num_docs is None else num_docs
        task = self.tasks[index % len(self.tasks)]
        ns = make_sample(task, n_docs * self.doc_tokens, seed=self.seed * 1_000_003 + index)
        texts = segment_context(ns.context, self.doc_tokens)
        rng = np.random.default_rng([self.seed, index, 0x41A4])
        ids = [int(i) for i in rng.choice(1 << 20, size=len(texts), replace=False)]
        gold: list[int] = []
        keys: dict[int, str] = {}
        for value in ns.answers:
            for gid, text in zip(ids, texts):
                if value in text and gid not in gold:
                    gold.append(gid)
                    keys[gid] = _needle_key(text, value, ns.type_needle_v)
                    break
        memory = [Document(i, t) for i, t in zip(ids, texts)]
        extra = len(memory) - n_docs  # segmenting overshoots a little: drop haystack-only documents
        if extra > 0:
            drop = set([d.id for d in memory if d.id not in gold][-extra:])
            memory = [d for d in memory if d.id not in drop]
        return TrainSample(ns.question, memory, gold, None, ", ".join(ns.answers), {"kind": task, "names": keys})


def _needle_key(text: str, value: str, type_needle_v: str) -> str:
    """The key of the needle sentence that holds ``value`` in ``text`` (``msa.data.ruler.NEEDLE_TEMPLATE``)."""
    from msa.data.ruler import NEEDLE_TEMPLATE

    head, tail = NEEDLE_TEMPLATE.split("{key}")
    head = head.format(type_needle_v=type_needle_v)
    end = text.index(tail.format(value=value))
    return text[text.rindex(head, 0, end) + len(head):end]


class MixedSamples(_Indexed):
    """Sample ``i`` comes from ``second`` with probability ``fraction`` (hashed from i), else ``first``."""

    def __init__(self, first: "SampleSource", second: "SampleSource", fraction: float):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.first, self.second, self.fraction = first, second, fraction

    def sample(self, index: int, num_docs: int | None = None) -> TrainSample:
        u = np.random.default_rng([index, 0x3C1D]).random()
        return (self.second if u < self.fraction else self.first).sample(index, num_docs)  # type: ignore[attr-defined]


class InterleaveRounds:
    """Turns each sample of ``inner`` into ONE Memory Interleave round (for ``interleave_round`` targets).

    Sample i keeps its memory and question; its round r in 0..R (R = number of gold documents) is a
    pure function of i; ``positives`` becomes the document that round must retrieve ([g_r], empty for
    the final answer round), and ``extra`` carries the full ``chain`` and the ``round``.

    answer_fraction: probability of the answer round (r = R); None = every round equally likely. Only
        retrieval rounds carry a routing (aux) target, so a lower value gives the router more signal.
    hide_read: answer rounds drop the documents already read (the chain) from the memory; their text
        is still appended (``extra["read"]``). The answer can then only come from the appended text,
        not from the documents' pooled chunks in memory, which give a blurred copy (template words
        right, names and values wrong) that a small model settles for instead of learning to read.
    extra_read: answer rounds have also read 0..extra_read (drawn per sample) other documents of the
        memory, each in a round of its own, all rounds in random order (``extra["reads"]``; dropped
        from the memory too with ``hide_read``): the answer is read out of several appended texts.
    chain_order: with ``extra_read``, the chain's own documents keep their hop order (bridge before
        target, as Memory Interleave reads them) and only the extra reads fall at random places among
        them. Shuffling the chain too (False) taught a model to answer a 2-hop question from the
        biography of the person the question names (bench/NOTES_training.md, night of 2026-12-01).
    """

    def __init__(self, inner: "SampleSource", answer_fraction: float | None = None, hide_read: bool = False,
                 extra_read: int = 0, chain_order: bool = False):  # fmt: skip
        if answer_fraction is not None and not 0.0 <= answer_fraction <= 1.0:
            raise ValueError(f"answer_fraction must be in [0, 1], got {answer_fraction}")
        if extra_read < 0:
            raise ValueError(f"extra_read must be >= 0, got {extra_read}")
        self.inner = inner
        self.answer_fraction = answer_fraction
        self.hide_read = hide_read
        self.extra_read = extra_read
        self.chain_order = chain_order
        if hasattr(inner, "sample"):
            self.sample = self._sample  # random access where the inner source has it

    def _round(self, i: int, s: TrainSample) -> TrainSample:
        chain = list(s.positives)
        u, v = np.random.default_rng([i, 0x1D3A]).random(2)  # a hash of i: neighbours are independent
        if self.answer_fraction is None:
            r = int(u * (len(chain) + 1))
        elif u < self.answer_fraction:
            r = len(chain)
        else:
            r = int(v * len(chain))
        extra = {**s.extra, "chain": chain, "round": r}
        memory = s.memory
        reads = list(chain)
        if self.extra_read and r == len(chain):  # (no draws when off: the stream before it is kept)
            rng = np.random.default_rng([i, 0x5EAD])
            others = [d.id for d in memory if d.id not in set(chain)]
            n = min(int(rng.integers(0, self.extra_read + 1)), len(others))
            added = [others[j] for j in rng.permutation(len(others))[:n].tolist()]
            if self.chain_order:  # the chain in its slots, in hop order; the extra reads in the others
                slots = set(rng.choice(len(chain) + n, len(chain), replace=False).tolist())
                hops, more = iter(chain), iter(added)
                reads = [next(hops) if j in slots else next(more) for j in range(len(chain) + n)]
            else:
                reads = [(reads + added)[j] for j in rng.permutation(len(chain) + n).tolist()]
            extra["reads"] = reads
        if self.hide_read and r == len(chain):
            read = set(reads)
            extra["read"] = {d.id: d.text for d in memory if d.id in read}
            memory = [d for d in memory if d.id not in read]
        return TrainSample(s.question, memory, chain[r : r + 1], s.target, s.answer, extra)

    def _sample(self, index: int, num_docs: int | None = None) -> TrainSample:
        return self._round(index, self.inner.sample(index, num_docs))  # type: ignore[attr-defined]

    def iterate(self, start: int, num_docs: int | None = None) -> Iterator[TrainSample]:
        for i, s in enumerate(self.inner.iterate(start, num_docs), start):
            yield self._round(i, s)
