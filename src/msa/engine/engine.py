"""Stages 2 and 3 of MSA: route, assemble, generate; Memory Interleave across rounds.

One round = one prefill with fresh routing in every router layer, then greedy decoding until the model
ends the round (``round_end`` after the ids it wants), ends retrieval (``end_of_retrieval``), or the
answer is complete. Between rounds the engine appends the ORIGINAL TEXT of the newly requested
documents and routes again with the question plus that text as the routing query (official protocol,
MSA_SPEC Part B 7) — with a round limit, de-duplication, and unknown ids dropped and reported.

``doc_choice="routed"`` (our models' protocol, ``MSAConfig.doc_choice``): the model still decides how
many documents a round asks for and when retrieval ends, but the documents read are the router's
best-scoring unread ones of that round instead of the ids the model wrote. A small model trained from
scratch routes well long before it can copy an id out of a mean-pooled memory chunk
(bench/NOTES_training.md); the official protocol stays the default.

``doc_choice="named"`` (ours, for multi-hop): the model writes who it needs, ``[NAME]``, copied out of
the question or out of the text it has read; the engine routes the question ``PromptFormat.lookup``
about that name on its own (one small batched prefill per round) and reads the best unread document.
Routing with the question plus a whole appended document finds the document itself again, not the
person it mentions; a name is what the router has learnt to find. A numeric request is read as with
"routed". With ``name_match`` (default) the lookup's top-k is re-ordered before the pick: documents
whose text mentions the name come first, the earliest mention first (a biography names its subject
first), then the router's order. In a memory of millions of people the router's top-1 is often
someone who shares a first name while the right document is still among its candidates; the lookup
therefore routes to ``lookup_k`` (default :data:`LOOKUP_K` = 256) documents, not the model's top-k. With
a bios world of 1.1M people (~83 share a first name on average), msa-bios-tiny's top-16 holds the
right person for 18% of the questions and name_match over 256 candidates reads the right biography
for 93% (bench/results/issue6_h200_2026-11-27). With ``snap_names`` (default) a written name that is not
in the text the model can see (the question and the documents read so far) is taken for a slip of
copying and replaced by the most similar run of as many words of that text, capitalised alike
(:func:`snap_name`): a
small model writes "Daleus Drenus" for the "Dareus Drenus" of the question, and the router, which
finds first names, then finds somebody else.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any, Protocol

import torch
from torch import Tensor

from msa.engine.generation import DecodeState, Timer, decode_step, left_pad
from msa.config import DOC_CHOICES
from msa.model import MemoryAccess, MSAForCausalLM, PrefixCache, Routing
from msa.prompt import QUERY, RESPONSE, TEMPLATE, PromptFormat, encode_segments, prompt_format, query_segments

logger = logging.getLogger(__name__)
LOOKUP_K = 256  # candidates of a named lookup (Engine.lookup_k)
SNAP_MIN_RATIO = 0.5  # snap_name: least similarity (difflib ratio) of a replacement
ID_PATTERN = re.compile(r"\[(\d+)\]")
REQUEST_PATTERN = re.compile(r"\[([^\[\]]+)\]")


class MemorySnapshot(MemoryAccess, Protocol):
    """One state of a memory: routable, with the id of every routing slot and the texts of that state."""

    slot_ids: Tensor  # [N] long id of every routing slot

    def text(self, doc_id: int) -> str | None:
        """Original text of a document in this state, None if unknown."""
        ...


class MemoryView(Protocol):
    """What the engine reads from a memory: the prefix and snapshots (routing, slot ids, texts)."""

    prefix: PrefixCache

    def snapshot(self) -> MemorySnapshot: ...

    def __len__(self) -> int: ...


@dataclass
class RoundInfo:
    """requested: ids the model generated this round; retrieved: those appended (known, new; with
    ``doc_choice="routed"`` the router's best unread documents, as many as the model asked for);
    unknown: generated ids not in memory (dropped); routing: router layer -> selected ids (and scores);
    named: with ``doc_choice="named"`` the names looked up (each read as the best unread document for
    ``PromptFormat.lookup`` about it); snapped: written name -> the name looked up instead (``snap_names``);
    timings: seconds per stage of this round (a batched round's time shared by the questions in it)."""

    requested: list[int] = field(default_factory=list)
    retrieved: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    named: list[str] = field(default_factory=list)
    snapped: dict[str, str] = field(default_factory=dict)
    routing: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Answer:
    """text: the answer; transcript: everything generated (special tokens kept, deliberately);
    rounds: per retrieval round what was requested/retrieved/routed; timings: seconds per stage
    (route, fetch, prefill — prefill includes route and fetch —, decode)."""

    question: str
    text: str
    transcript: str
    rounds: list[RoundInfo]
    timings: dict[str, float]

    @property
    def doc_ids(self) -> list[list[int]]:
        return [r.retrieved for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "transcript": self.transcript,
            "rounds": [r.__dict__ for r in self.rounds],
            "timings": self.timings,
        }


class _TimedAccess:
    def __init__(self, inner: MemoryAccess, timer: Timer, device: torch.device):
        self.inner, self.timer, self.device = inner, timer, device

    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        t0 = time.perf_counter()
        out = self.inner.route(layer, q_router, query_mask, k)
        self.timer.add("route", t0, self.device)
        return out

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t0 = time.perf_counter()
        out = self.inner.fetch(layer, docs)
        self.timer.add("fetch", t0, self.device)
        return out

    def text(self, doc_id: int) -> str | None:
        return self.inner.text(doc_id)


@dataclass
class _Sample:
    question: str
    ids: list[int]
    doc_ids: list[int]
    rounds: list[RoundInfo] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    transcript_ids: list[int] = field(default_factory=list)
    finished: bool = False
    answer_phase: bool = False
    ranked: list[int] = field(default_factory=list)  # this round's routed ids, best first (last router layer)
    memory: Any = None  # the MemorySnapshot the question is answered from (its texts)


def _selected(r: Routing, i: int, slot_ids: Tensor) -> list[tuple[int, float]]:
    """Sample ``i``'s selected documents of one router layer as (user id, score) pairs."""
    keep = r.docs[i] >= 0
    return list(zip(slot_ids[r.docs[i][keep].cpu()].tolist(), r.scores[i][keep].cpu().tolist()))


class Engine:
    """Ask questions against a memory with a model and its tokenizer.

    Args:
        model: the MSA model (moved to ``device``).
        tokenizer: a HF fast tokenizer with the template's special tokens.
        bank: a MemoryBank (or any MemoryView); with ``distributed=True`` a bank (or its path) that every
            rank of a torchrun launch serves a shard of (Memory Parallel, ``msa.parallel``).
        prompt: the prompt layout; default: the one the model was trained with (``msa.prompt_format``).
        doc_choice: "generated" (official: read the ids the model writes), "routed" (read the router's
            best unread documents, as many as the model asks for) or "named" (the best unread document
            for a lookup question about each name the model writes); default ``msa.doc_choice``.
        timeout_s: with ``distributed``, a dead or hung rank fails the others after this long, by name.
        name_match: with ``doc_choice="named"``, prefer the lookup's documents that mention the name.
        lookup_k: with ``doc_choice="named"``, documents the lookup routes to per name (its candidates).
            More candidates only matter with ``name_match``: they keep the right document among them
            when many people share a first name (the module docstring). The model's ``top_k`` gives
            the router's own choice.
        snap_names: with ``doc_choice="named"``, replace a written name that is not in the question or
            the documents read by the most similar run of words there (:func:`snap_name`).
    """

    def __init__(self, model: MSAForCausalLM, tokenizer, bank, device: str | torch.device | None = None,
                 prompt: PromptFormat | None = None, distributed: bool = False, timeout_s: float = 120.0,
                 doc_choice: str | None = None, name_match: bool = True, lookup_k: int = LOOKUP_K,
                 snap_names: bool = True):  # fmt: skip
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if distributed:  # Memory Parallel: this rank serves its shard of the bank (launched by torchrun)
            from msa.parallel import DistributedBankView, init_distributed

            path = getattr(bank, "path", bank)
            bank = DistributedBankView(path, init_distributed(timeout_s=timeout_s), model, tokenizer, device=self.device)
        self.bank = bank
        self.prompt = prompt = prompt if prompt is not None else prompt_format(model.config.msa.prompt_format)
        self.doc_choice = doc_choice if doc_choice is not None else model.config.msa.doc_choice
        if self.doc_choice not in DOC_CHOICES:
            raise ValueError(f"doc_choice must be one of {DOC_CHOICES}, got {self.doc_choice!r}")
        self.name_match = name_match
        if isinstance(lookup_k, bool) or not isinstance(lookup_k, int) or lookup_k < 1:
            raise ValueError(f"lookup_k must be a positive integer, got {lookup_k!r}")
        self.lookup_k = lookup_k
        self.snap_names = snap_names
        self._reading = threading.local()  # the snapshot the current ask of this thread reads
        self._tok = lambda s: tokenizer.encode(s, add_special_tokens=False)
        stops = [prompt.end_of_turn, "<|endoftext|>"]
        self.eos_ids = {i for i in (tokenizer.convert_tokens_to_ids(t) for t in stops) if isinstance(i, int) and i >= 0}

    # -- public -------------------------------------------------------------------------------------
    def ask(self, question: str, interleave: bool = True, max_rounds: int = 4, max_new_tokens: int = 256,
            return_routing: bool = False) -> Answer:  # fmt: skip
        """Answer one question (see ``ask_batch``)."""
        return self.ask_batch([question], interleave, max_rounds, max_new_tokens, return_routing)[0]

    def ask_batch(self, questions: list[str], interleave: bool = True, max_rounds: int = 4,
                  max_new_tokens: int = 256, return_routing: bool = False) -> list[Answer]:  # fmt: skip
        """Answer a batch of questions; rounds are batched across the questions still retrieving.

        Args:
            interleave: Memory Interleave (fetch the generated ids' text, route again); False = one round,
                the model answers straight after naming documents.
            max_rounds: retrieval rounds at most; then the engine ends retrieval itself.
            max_new_tokens: generated tokens per round at most.
        """
        if isinstance(questions, str):
            raise TypeError("ask_batch() takes a list of questions; use ask() for one")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise ValueError("a question must be a non-empty string")
        if max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")
        if len(self.bank) == 0:
            raise ValueError("the memory bank is empty: add documents before asking")
        timer = Timer()
        samples = []
        for q in questions:
            ids, dids = encode_segments(self.tokenizer, query_segments(self.prompt, q))
            samples.append(_Sample(q, ids, dids))
        snapshot = self.bank.snapshot()
        access = _TimedAccess(snapshot, timer, self.device)
        slot_ids = snapshot.slot_ids
        for s in samples:
            s.memory = snapshot
        self._reading.memory = snapshot
        for rnd in range(max_rounds):
            active = [s for s in samples if not s.finished]
            if not active:
                break
            last = rnd == max_rounds - 1 or not interleave
            before = dict(timer.seconds)
            self._round(active, access, slot_ids, timer, max_new_tokens, last, return_routing)
            spent = {k: (v - before.get(k, 0.0)) / len(active) for k, v in timer.seconds.items()
                     if v > before.get(k, 0.0)}  # fmt: skip
            for s in active:
                s.rounds[-1].timings = dict(spent)
        self._reading.memory = None  # (a failed ask leaves it; the next ask sets its own first)
        for s in samples:
            s.finished = True
        return [self._answer(s, timer, len(samples)) for s in samples]

    # -- one round ------------------------------------------------------------------------------------
    def _round(self, active: list[_Sample], access, slot_ids: Tensor, timer: Timer, max_new_tokens: int,
               last: bool, return_routing: bool) -> None:  # fmt: skip
        t0 = time.perf_counter()
        out = self._prefill([s.ids for s in active], [s.doc_ids for s in active], access)
        timer.add("prefill", t0, self.device)
        routed = self.doc_choice in ("routed", "named") and bool(out.routings)
        for i, s in enumerate(active):
            info = RoundInfo()
            if return_routing or routed:
                selected = {layer: _selected(r, i, slot_ids) for layer, r in out.routings.items()}
                if return_routing:
                    info.routing = selected
                if routed:  # the last router layer's selection, best first
                    s.ranked = _best_first(selected[max(selected)])
            s.rounds.append(info)
        states = [DecodeState(pending=[]) for _ in active]
        nxt = out.logits.argmax(-1).cpu()
        round_text = [""] * len(active)
        t0 = time.perf_counter()
        for step in range(max_new_tokens + 64):
            for i, (s, st) in enumerate(zip(active, states)):
                if st.done:
                    continue
                tok = int(nxt[i])
                st.generated.append(tok)
                s.transcript_ids.append(tok)
                round_text[i] += self.tokenizer.decode([tok], skip_special_tokens=False)
                st.pending = [tok]
                if s.answer_phase:
                    if tok in self.eos_ids or round_text[i].endswith(self.prompt.end_of_turn):
                        st.done = s.finished = True
                elif self.prompt.end_of_retrieval in round_text[i]:
                    self._begin_answer(s, st)
                elif round_text[i].endswith(self.prompt.round_end):
                    if last:
                        self._collect_ids(s, round_text[i], retrieve=False)
                        self._begin_answer(s, st, forced=True)
                    else:
                        st.done = True
                elif tok in self.eos_ids:  # answered without the retrieval protocol
                    st.done = s.finished = True
                if not st.done and len(st.generated) >= max_new_tokens:
                    st.done = s.finished = True
            if all(st.done for st in states):
                break
            nxt = decode_step(self.model, out.cache, states)
        timer.add("decode", t0, self.device)
        requests: dict[int, list[str]] = {}  # named: each unfinished sample's requests, snapped once
        if self.doc_choice == "named":
            requests = {i: self._named_requests(s, round_text[i], s.rounds[-1].snapped)
                        for i, s in enumerate(active) if not s.finished}  # fmt: skip
        looked_up = self._look_up(requests, access, slot_ids, timer) if requests else {}
        for i, (s, st) in enumerate(zip(active, states)):
            if s.finished:
                continue
            s.ids = s.ids + st.generated
            s.doc_ids = self._restore_question_routing(s) + [RESPONSE] * len(st.generated)
            new = self._collect_ids(s, round_text[i], retrieve=True, looked_up=looked_up.get(i, {}),
                                    requests=requests.get(i))  # fmt: skip
            if new:
                text = self.prompt.retrieved_text([(d, access.text(d) or "") for d in new])
                add = self._tok(text)
                s.ids += add
                s.doc_ids += [QUERY] * len(add)
                s.transcript_ids += add
            else:  # nothing new to read: end retrieval now and answer in the next round
                add = self._tok(self.prompt.end_of_retrieval + self.prompt.question_block.format(question=s.question))
                s.ids += add
                s.doc_ids += [RESPONSE] * len(add)
                s.transcript_ids += add
                s.answer_phase = True

    def _restore_question_routing(self, s: _Sample) -> list[int]:
        """Routing query of a later round: the question (as in round 1) plus the latest appended text."""
        q_ids, q_dids = encode_segments(self.tokenizer, query_segments(self.prompt, s.question))
        n = len(q_ids)
        head = [QUERY if d == QUERY else d for d in q_dids]
        rest = [TEMPLATE if d == TEMPLATE else RESPONSE for d in s.doc_ids[n:]]
        return head + rest

    def _prefill(self, ids: list[list[int]], doc_ids: list[list[int]], access, top_k: int | None = None):
        """Left-padded prefill of a batch of sequences, routing with their QUERY tokens; last logits only."""
        ids_t, mask = left_pad(ids)
        dids, _ = left_pad(doc_ids, pad=RESPONSE)
        return self.model.prefill(ids_t, mask, (dids == QUERY) & mask, memory=access, prefix=self.bank.prefix,
                                  last_only=True, top_k=top_k)  # fmt: skip

    def _look_up(self, requests: dict[int, list[str]], access, slot_ids: Tensor,
                 timer: Timer) -> dict[int, dict[str, list[int]]]:  # fmt: skip
        """Route ``PromptFormat.lookup`` about every name requested this round (sample index -> its
        requests; one batched prefill). Returns sample index -> name -> user ids, best first (last
        router layer)."""
        asks = [(i, name) for i, rs in requests.items() for name in rs if not name.isdigit()]
        if not asks:
            return {}
        t0 = time.perf_counter()
        seqs = [encode_segments(self.tokenizer, query_segments(self.prompt, self.prompt.lookup.format(request=n)))
                for _, n in asks]  # fmt: skip
        out = self._prefill([q for q, _ in seqs], [d for _, d in seqs], access, self.lookup_k)
        found: dict[int, dict[str, list[int]]] = {}
        if out.routings:
            r = out.routings[max(out.routings)]
            for row, (i, name) in enumerate(asks):
                found.setdefault(i, {})[name] = _best_first(_selected(r, row, slot_ids))
        timer.add("lookup", t0, self.device)
        return found

    def _collect_ids(self, s: _Sample, text: str, retrieve: bool, looked_up: dict[str, list[int]] | None = None,
                     requests: list[str] | None = None) -> list[int]:  # fmt: skip
        if self.doc_choice == "named":
            return self._collect_named(s, text, retrieve, looked_up or {}, requests)
        info = s.rounds[-1]
        requested = [int(m) for m in ID_PATTERN.findall(text)]
        info.requested = requested
        new = []
        for d in dict.fromkeys(requested):
            if s.memory.text(d) is None:
                info.unknown.append(d)
            elif d not in s.seen:
                new.append(d)
        if self.doc_choice == "routed":
            new = [d for d in s.ranked if d not in s.seen][: len(set(requested))]
        if retrieve:
            info.retrieved = new
            s.seen.update(new)
        return new

    def _collect_named(self, s: _Sample, text: str, retrieve: bool, looked_up: dict[str, list[int]],
                       requests: list[str] | None = None) -> list[int]:  # fmt: skip
        """``doc_choice="named"``: per request, in order, the best unread document of its lookup (a name)
        or of the round's routing (a numeric request). ``requests``: the text's, already snapped."""
        info = s.rounds[-1]
        if requests is None:
            requests = self._named_requests(s, text, info.snapped)
        info.requested = [int(r) for r in requests if r.isdigit()]
        info.named = [r for r in requests if not r.isdigit()]
        taken, new = set(s.seen), []
        for r in requests:
            ranked = s.ranked if r.isdigit() else looked_up.get(r, [])
            if self.name_match and not r.isdigit():
                ranked = self._mentioning_first(r, ranked)
            pick = next((d for d in ranked if d not in taken), None)
            if pick is not None:
                new.append(pick)
                taken.add(pick)
        if retrieve:
            info.retrieved = new
            s.seen.update(new)
        return new

    def _named_requests(self, s: _Sample, text: str, snapped: dict[str, str] | None = None) -> list[str]:
        """The round's requests, names snapped to the text the model has seen (``snap_names``); the
        replacements go into ``snapped``."""
        requests = _requests(text)
        if not self.snap_names:
            return requests
        visible = "\n".join([s.question, *(s.memory.text(d) or "" for d in sorted(s.seen))])
        out = []
        for r in requests:
            new = r if r.isdigit() else snap_name(r, visible)
            if new != r and snapped is not None:
                snapped[r] = new
            out.append(new)
        return list(dict.fromkeys(out))

    def _mentioning_first(self, name: str, ranked: list[int]) -> list[int]:
        """``ranked`` with the documents that mention ``name`` first, earliest mention first (stable)."""
        memory = getattr(self._reading, "memory", None) or self.bank.snapshot()  # the ask's snapshot
        where = {d: (memory.text(d) or "").find(name) for d in ranked}
        return sorted(ranked, key=lambda d: (where[d] < 0, max(where[d], 0)))

    def _begin_answer(self, s: _Sample, st: DecodeState, forced: bool = False) -> None:
        block = (self.prompt.end_of_retrieval if forced else "") + self.prompt.question_block.format(question=s.question)
        add = self._tok(block)
        s.transcript_ids += add
        st.pending = st.pending + add
        s.answer_phase = True

    def _answer(self, s: _Sample, timer: Timer, batch: int) -> Answer:
        transcript = self.tokenizer.decode(s.transcript_ids, skip_special_tokens=False)
        text = transcript
        if self.prompt.answer_lead in text:
            text = text.rsplit(self.prompt.answer_lead, 1)[1]
        elif self.prompt.question_block.split("{question}")[-1] in text:
            text = text.rsplit(self.prompt.question_block.split("{question}")[-1], 1)[1]
        for stop in (self.prompt.end_of_turn, "<|endoftext|>"):
            text = text.split(stop, 1)[0]
        timings = {k: v / batch for k, v in timer.seconds.items()} if batch > 1 else dict(timer.seconds)
        return Answer(s.question, text.strip(), transcript, s.rounds, timings)


def _requests(text: str) -> list[str]:
    """The requests (``[...]``) in a round's generated text, stripped, in order, without repeats."""
    return list(dict.fromkeys(m.strip() for m in REQUEST_PATTERN.findall(text)))


def snap_name(name: str, visible: str, min_ratio: float = SNAP_MIN_RATIO, match_case: bool = True) -> str:
    """``name`` if it occurs in ``visible``; else the run of as many words of ``visible``, capitalised
    word for word as ``name`` is (``match_case``), most similar to it (difflib ratio, the earliest of
    equals) if that reaches ``min_ratio``; else ``name``. With ``match_case``, words starting lower-case
    at the ends of a name that has capitalised ones are dropped first ("Peromed Holley was").

    >>> snap_name("Daleus Drenus", "In which field did Dareus Drenus earn a degree?")
    'Dareus Drenus'
    """
    if name in visible:
        return name
    if match_case and any(w[:1].isupper() for w in name.split()):
        words = name.split()
        keep = [not w[:1].islower() for w in words]
        first, last = keep.index(True), len(keep) - keep[::-1].index(True)
        name = " ".join(words[first:last])
        if name in visible:
            return name
    shape = [w[:1].isupper() for w in name.split()]
    n = len(shape)
    words = re.findall(r"\w+", visible)
    caps = [w[:1].isupper() for w in words]
    best, best_ratio = name, min_ratio
    for j in range(len(words) - n + 1):
        if match_case and caps[j : j + n] != shape:
            continue
        cand = " ".join(words[j : j + n])
        ratio = SequenceMatcher(None, name, cand).ratio()
        if ratio > best_ratio or (ratio == best_ratio and best is name):
            best, best_ratio = cand, ratio
    return best


def _best_first(selected: list[tuple[int, float]]) -> list[int]:
    """Ids of (id, score) pairs, highest score first."""
    return [d for d, _ in sorted(selected, key=lambda x: -x[1])]
