"""Stages 2 and 3 of MSA: route, assemble, generate; Memory Interleave across rounds.

One round = one prefill with fresh routing in every router layer, then greedy decoding until the
model ends the round (``round_end`` after its requests), ends retrieval (``end_of_retrieval``), or the
answer is complete. Between rounds the engine appends the ORIGINAL TEXT of the documents the round's
``doc_choice`` picks (``msa.engine.choice``) and routes again with the question plus that text as the
routing query (MSA_SPEC Part B 7), with a round limit, de-duplication, and unknown ids dropped and
reported. Stop rules are token ids (``msa.engine.stops``); nothing here knows a corpus.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from msa.config import EnginePolicy
from msa.engine.answer import Answer, RoundInfo
from msa.engine.choice import ChoiceContext, DocChoice, choice_strategy, requested_ids, requests_in
from msa.engine.generation import DecodeState, Sampler, Timer, decode_step, left_pad, pick_tokens
from msa.engine.graphed_prefill import GraphedPrefill
from msa.engine.static_decode import StaticDecoder
from msa.engine.stops import StopRules, ends_with
from msa.model import KVCache, MemoryAccess, MSAForCausalLM, PrefixCache, Routing
from msa.model.carry import Carry, carry_rows
from msa.model.static_cache import StaticKVCache
from msa.prompt import QUERY, RESPONSE, TEMPLATE, PromptFormat, encode_segments, prompt_format, query_segments

logger = logging.getLogger(__name__)

OnToken = Callable[[int, str], None]


class MemorySnapshot(MemoryAccess, Protocol):
    """One consistent state of a memory: routing and fetching (``MemoryAccess``), the id of every
    routing slot (``slot_ids``, [N] long) and the documents' texts, all of the same state."""

    slot_ids: Tensor

    def text(self, doc_id: int) -> str | None:
        """Original text of a document of this state, None if unknown."""
        ...


class MemoryView(Protocol):
    """What the engine asks: the template prefix, a snapshot per batch of questions, a size."""

    prefix: PrefixCache

    def snapshot(self) -> MemorySnapshot: ...

    def __len__(self) -> int: ...


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


@dataclass
class _Sample:
    index: int  # position in the batch asked
    question: str
    ids: list[int]
    doc_ids: list[int]
    rounds: list[RoundInfo] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    transcript_ids: list[int] = field(default_factory=list)
    finished: bool = False
    answer_phase: bool = False
    sampler: Sampler | None = None  # None: greedy
    carry: Carry | None = None  # what the next round reuses (``msa.model.carry``)


def _selected(r: Routing, i: int, slot_ids: Tensor) -> list[tuple[int, float]]:
    """Sample ``i``'s selected documents of one router layer as (user id, score) pairs."""
    keep = r.docs[i] >= 0
    return list(zip(slot_ids[r.docs[i][keep].cpu()].tolist(), r.scores[i][keep].cpu().tolist()))


def _best_first(selected: list[tuple[int, float]]) -> list[int]:
    """Ids of (id, score) pairs, highest score first."""
    return [d for d, _ in sorted(selected, key=lambda x: -x[1])]


class Engine:
    """Ask questions against a memory with a model and its tokenizer.

    Args:
        model: the MSA model (moved to ``device``).
        tokenizer: a HF fast tokenizer with the template's special tokens.
        bank: a MemoryBank or any MemoryView (``InMemoryView``; Memory Parallel's sharded view, see
            ``msa.parallel.distributed_engine``).
        policy: the protocol and the limits of an answer (``msa.EnginePolicy``); default: the model's
            own (``model.config.policy``: what it was trained for).
        prompt: the prompt layout; default: the policy's ``prompt_format``.
        doc_choice: which documents a round reads: "generated" (official: the ids the model writes),
            "routed" (each request the model writes routed on its own, its best unread document), or a
            strategy object (``msa.engine.choice.DocChoice``); default: the policy's ``doc_choice``.
        static_cache: decode into preallocated buffers kept across calls (``msa.engine.static_decode``);
            False: the reference path, a cache grown by concatenation every step. Equal up to rounding.
        cuda_graphs: replay one-token steps from CUDA graphs (default: on CUDA with ``static_cache``).
        interleave_reuse: a Memory Interleave round continues the last one below the first router
            layer (``msa.model.carry``) instead of prefilling everything again. Equal up to rounding.
        graphed_prefill: replay a round's prefill from CUDA graphs when the snapshot routes and fetches
            on the device (``BankSnapshot.on_device``: content made resident; ``msa.engine.graphed_prefill``),
            captured per snapshot; default: on CUDA with ``static_cache``. Equal up to rounding.
    """

    def __init__(self, model: MSAForCausalLM, tokenizer, bank: MemoryView, device: str | torch.device | None = None,
                 prompt: PromptFormat | None = None, doc_choice: str | DocChoice | None = None,
                 policy: EnginePolicy | None = None, *, static_cache: bool = True,
                 cuda_graphs: bool | None = None, interleave_reuse: bool = True,
                 graphed_prefill: bool | None = None):  # fmt: skip
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.bank = bank
        self.policy = policy = policy if policy is not None else model.config.policy
        policy.validate()
        self.prompt = prompt = prompt if prompt is not None else prompt_format(policy.prompt_format)
        self.choice = choice_strategy(doc_choice if doc_choice is not None else policy.doc_choice)
        self.stops = StopRules.compile(tokenizer, prompt, getattr(model.config, "eos_token_id", None))
        self._tok = lambda s: tokenizer.encode(s, add_special_tokens=False)
        self._static = StaticDecoder(self.model, cuda_graphs) if static_cache else None
        self._reuse = interleave_reuse and model.carry_layer is not None
        if graphed_prefill and (self.device.type != "cuda" or not static_cache):
            raise ValueError("graphed_prefill needs a model on a CUDA device and static_cache=True")
        on = self.device.type == "cuda" and static_cache if graphed_prefill is None else graphed_prefill
        self._graphed = GraphedPrefill(self.model) if on else None

    @functools.cached_property
    def _answer_ends(self) -> list[str]:
        """The answer ends at the first end-of-turn or end-of-sequence text."""
        return [self.prompt.end_of_turn] + [self._text([i]) for i in sorted(self.stops.eos)]

    @property
    def doc_choice(self) -> str:
        return self.choice.name

    # -- public -------------------------------------------------------------------------------------
    def ask(self, question: str, interleave: bool = True, max_rounds: int | None = None,
            max_new_tokens: int | None = None, return_routing: bool = False, *, on_token: OnToken | None = None,
            top_k: int | None = None, sampler: Sampler | None = None) -> Answer:  # fmt: skip
        """Answer one question (see ``ask_batch``)."""
        return self.ask_batch([question], interleave, max_rounds, max_new_tokens, return_routing, on_token=on_token,
                              top_k=top_k, samplers=[sampler])[0]  # fmt: skip

    def ask_batch(self, questions: list[str], interleave: bool = True, max_rounds: int | None = None,
                  max_new_tokens: int | None = None, return_routing: bool = False, *, on_token: OnToken | None = None,
                  top_k: int | None = None, samplers: list[Sampler | None] | None = None,
                  max_batch: int | None = None) -> list[Answer]:  # fmt: skip
        """Answer a batch of questions against one snapshot of the memory; rounds are batched across
        the questions still retrieving.

        Args:
            interleave: Memory Interleave (read the chosen documents' text, route again); False = one
                round, the model answers straight after its requests.
            max_rounds: retrieval rounds at most; then the engine ends retrieval itself (default: the
                policy's).
            max_new_tokens: generated tokens per round at most (default: the policy's).
            return_routing: fill ``RoundInfo.routing`` (router layer -> selected (id, score)).
            on_token: called as ``on_token(i, text)`` with the text of every token generated for
                question ``i`` (streaming; special tokens kept, retrieval rounds included); the
                transcript's appended blocks are not passed. An exception it raises ends the call.
            top_k: documents each router layer selects per round (default: the model's ``msa.top_k``).
            samplers: per question a ``Sampler`` (seeded temperature sampling) or None (greedy, default).
            max_batch: questions in a round at most (default: all). A question that finishes leaves
                after its round and a waiting one joins the next round (its first), prefilled and
                decoded with the others; the answers are those of one-by-one asking.
        """
        if isinstance(questions, str):
            raise TypeError("ask_batch() takes a list of questions; use ask() for one")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise ValueError("a question must be a non-empty string")
        max_rounds = self.policy.max_rounds if max_rounds is None else max_rounds
        max_new_tokens = self.policy.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")
        if samplers is not None and len(samplers) != len(questions):
            raise ValueError(f"{len(samplers)} samplers for {len(questions)} questions")
        if len(self.bank) == 0:
            raise ValueError("the memory bank is empty: add documents before asking")
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        timer = Timer()
        samples = []
        for i, q in enumerate(questions):
            ids, dids = encode_segments(self.tokenizer, query_segments(self.prompt, q))
            samples.append(_Sample(i, q, ids, dids, sampler=samplers[i] if samplers else None))
        snap = self.bank.snapshot()
        access = _TimedAccess(snap, timer, self.device)
        slot_ids = snap.slot_ids
        ctx = ChoiceContext(snap.text, lambda texts: self._route_texts(texts, access, slot_ids, top_k))
        waiting, active = list(samples), []
        while waiting or active:
            joining = max(0, len(waiting) if max_batch is None else max_batch - len(active))
            active, waiting = active + waiting[:joining], waiting[joining:]
            last = [len(s.rounds) == max_rounds - 1 or not interleave for s in active]
            before = dict(timer.seconds)
            self._round(active, access, slot_ids, ctx, timer, max_new_tokens, last, return_routing, on_token, top_k)
            spent = {k: (v - before.get(k, 0.0)) / len(active) for k, v in timer.seconds.items()
                     if v > before.get(k, 0.0)}  # fmt: skip
            for s, is_last in zip(active, last):
                s.rounds[-1].timings = dict(spent)
                s.finished = s.finished or is_last  # the round limit: the answer ends here
            active = [s for s in active if not s.finished]
        for s in samples:
            s.finished = True
        return [self._answer(s, timer, len(samples)) for s in samples]

    # -- one round ------------------------------------------------------------------------------------
    def _round(self, active: list[_Sample], access, slot_ids: Tensor, ctx: ChoiceContext, timer: Timer,
               max_new_tokens: int, last: list[bool], return_routing: bool, on_token: OnToken | None,
               top_k: int | None) -> None:  # fmt: skip
        with self._graphed.holding() if self._graphed is not None else contextlib.nullcontext():
            self._round_held(active, access, slot_ids, ctx, timer, max_new_tokens, last, return_routing, on_token, top_k)

    def _round_held(self, active: list[_Sample], access, slot_ids: Tensor, ctx: ChoiceContext, timer: Timer,
                    max_new_tokens: int, last: list[bool], return_routing: bool, on_token: OnToken | None,
                    top_k: int | None) -> None:  # fmt: skip
        """``_round`` while this thread holds the graphed prefill's outputs (they are read until decoding)."""
        t0 = time.perf_counter()
        keep = self._reuse and not all(last)  # a later round may continue from this one
        if keep and all(s.carry is not None for s in active):
            out, prompt_tokens = self._resume(active, access, top_k), max(len(s.ids) for s in active)
        else:
            out, prompt_tokens = self._prefill([s.ids for s in active], [s.doc_ids for s in active], access, top_k, keep)
        for s in active:
            s.carry = None
        timer.add("prefill", t0, self.device)
        for i, s in enumerate(active):
            info = RoundInfo()
            if return_routing:
                info.routing = {layer: _selected(r, i, slot_ids) for layer, r in out.routings.items()}
            s.rounds.append(info)
        # Room in a static cache: every step, plus a question block (it grows if several need more).
        room = lambda: max_new_tokens + 64 + max(  # noqa: E731
            len(self._tok(self.prompt.end_of_retrieval + self.prompt.question_block.format(question=s.question)))
            for s in active)  # fmt: skip
        with self._decoding(out.cache, prompt_tokens, room) as (step, cache):
            states, round_ids = self._decode_round(active, out.logits, step, max_new_tokens, last, on_token, timer)
            if keep:
                self._keep_carries(active, states, cache())
        self._read_chosen([(s, st, round_ids[i]) for i, (s, st) in enumerate(zip(active, states)) if not s.finished],
                          ctx, timer)  # fmt: skip

    def _decode_round(self, active: list[_Sample], logits: Tensor, step: Callable, max_new_tokens: int, last: list[bool],
                      on_token: OnToken | None, timer: Timer) -> tuple[list[DecodeState], list[list[int]]]:  # fmt: skip
        """Greedy (or sampled) decoding of a round until every sample is done; its states and ids."""
        states = [DecodeState(pending=[]) for _ in active]
        round_ids: list[list[int]] = [[] for _ in active]
        samplers = [s.sampler for s in active] if any(s.sampler for s in active) else None
        nxt = pick_tokens(logits, samplers)
        t0 = time.perf_counter()
        stops = self.stops
        for _ in range(max_new_tokens + 64):
            for i, (s, st) in enumerate(zip(active, states)):
                if st.done:
                    continue
                tok = int(nxt[i])
                st.generated.append(tok)
                s.transcript_ids.append(tok)
                round_ids[i].append(tok)
                if on_token is not None:
                    on_token(s.index, self._text([tok]))
                st.pending = [tok]
                if s.answer_phase:
                    if tok in stops.eos or ends_with(round_ids[i], stops.end_of_turn):
                        st.done = s.finished = True
                elif ends_with(round_ids[i], stops.end_of_retrieval):
                    self._begin_answer(s, st)
                elif ends_with(round_ids[i], stops.round_end):
                    if last[i]:  # the round limit: record the requests, then answer
                        s.rounds[-1].requests = requests_in(self._text(round_ids[i]))
                        s.rounds[-1].requested = requested_ids(s.rounds[-1].requests)
                        self._begin_answer(s, st, forced=True)
                    else:
                        st.done = True
                elif tok in stops.eos:  # answered without the retrieval protocol
                    st.done = s.finished = True
                if not st.done and len(st.generated) >= max_new_tokens:
                    st.done = s.finished = True
            if all(st.done for st in states):
                break
            nxt = step(states, samplers)
        timer.add("decode", t0, self.device)
        return states, round_ids

    @contextlib.contextmanager
    def _decoding(self, cache: KVCache, prompt_tokens: int, room: Callable[[], int]) -> Iterator[tuple[Callable, Callable]]:
        """The step function of a round, ``(states, samplers) -> next tokens`` (see ``decode_step``),
        and a function returning the cache it decodes into (a static cache may grow). A static cache
        is loaded at the first step (after the first tokens are out), with ``room()`` token slots more."""
        if self._static is None:
            yield functools.partial(decode_step, self.model, cache), lambda: cache
            return
        with contextlib.ExitStack() as stack:
            held: list = []

            def stepper():
                if not held:
                    held.append(stack.enter_context(self._static.session(cache, prompt_tokens, room())))  # type: ignore[union-attr]
                return held[0]

            yield (lambda states, samplers: stepper().decode_step(states, samplers)), lambda: stepper().cache

    def _keep_carries(self, active: list[_Sample], states: list[DecodeState], cache: KVCache | StaticKVCache) -> None:
        """Samples that continue keep what their next round reuses: everything fed but the last token."""
        rows = [i for i, s in enumerate(active) if not s.finished]
        for i, c in zip(rows, carry_rows(cache, rows) if rows else []):
            fed = len(active[i].ids) + len(states[i].generated) - 1
            active[i].carry = c if c.tokens == fed else None

    def _resume(self, active: list[_Sample], access, top_k: int | None):
        """A later round's prefill continuing every sample's carry (``MSAForCausalLM.resume``)."""
        suffix, suffix_mask = left_pad([s.ids[s.carry.tokens :] for s in active])  # type: ignore[union-attr]
        _, mask = left_pad([s.ids for s in active])
        dids, _ = left_pad([s.doc_ids for s in active], pad=RESPONSE)
        return self.model.resume([s.carry for s in active], suffix, suffix_mask, (dids == QUERY) & mask, memory=access,  # type: ignore[misc]
                                 prefix=self.bank.prefix, last_only=True, top_k=top_k)  # fmt: skip

    def _read_chosen(self, retrieving: list[tuple[_Sample, DecodeState, list[int]]], ctx: ChoiceContext,
                     timer: Timer) -> None:  # fmt: skip
        """After a round: the strategy's documents are appended (routing query of the next round), or,
        with nothing new to read, retrieval ends and the question block follows."""
        if not retrieving:
            return
        t0 = time.perf_counter()
        requests = [requests_in(self._text(ids)) for _, _, ids in retrieving]
        choices = self.choice.choose(ctx, requests, [s.seen for s, _, _ in retrieving])
        timer.add("choose", t0, self.device)
        for (s, st, _), rs, c in zip(retrieving, requests, choices):
            info = s.rounds[-1]
            info.requests, info.requested, info.unknown = rs, c.requested, c.unknown
            new = [d for d in dict.fromkeys(c.read) if d not in s.seen]
            info.retrieved = new
            s.seen.update(new)
            s.ids = s.ids + st.generated
            s.doc_ids = self._restore_question_routing(s) + [RESPONSE] * len(st.generated)
            if new:
                add = self._tok(self.prompt.retrieved_text([(d, ctx.text(d) or "") for d in new]))
                s.ids += add
                s.doc_ids += [QUERY] * len(add)
            else:  # nothing new to read: end retrieval now and answer in the next round
                add = self._tok(self.prompt.end_of_retrieval + self.prompt.question_block.format(question=s.question))
                s.ids += add
                s.doc_ids += [RESPONSE] * len(add)
                s.answer_phase = True
            s.transcript_ids += add

    def _restore_question_routing(self, s: _Sample) -> list[int]:
        """Routing query of a later round: the question (as in round 1) plus the latest appended text."""
        q_ids, q_dids = encode_segments(self.tokenizer, query_segments(self.prompt, s.question))
        n = len(q_ids)
        head = [QUERY if d == QUERY else d for d in q_dids]
        rest = [TEMPLATE if d == TEMPLATE else RESPONSE for d in s.doc_ids[n:]]
        return head + rest

    def _prefill(self, ids: list[list[int]], doc_ids: list[list[int]], access, top_k: int | None = None,
                 keep_carry: bool = False):  # fmt: skip
        """Left-padded prefill of a batch of sequences, routing with their QUERY tokens; last logits only.
        -> (output, the prompt's slots in its cache: the padded length), replayed from a graph where it can be."""
        ids_t, mask = left_pad(ids)
        dids, _ = left_pad(doc_ids, pad=RESPONSE)
        snap = access.inner if isinstance(access, _TimedAccess) else access
        if self._graphed is not None and self._graphed.usable(snap, len(ids)):
            k = self.model.config.msa.top_k if top_k is None else top_k
            got = self._graphed.prefill(snap, ids_t, mask, (dids == QUERY) & mask, self.bank.prefix, k, keep_carry)
            if got is not None:
                return got
        out = self.model.prefill(ids_t, mask, (dids == QUERY) & mask, memory=access, prefix=self.bank.prefix,
                                 last_only=True, top_k=top_k, keep_carry=keep_carry)  # fmt: skip
        return out, ids_t.shape[1]

    def _route_texts(self, texts: list[str], access, slot_ids: Tensor, top_k: int | None = None) -> list[list[int]]:
        """Route each text as a round-1 question (one batched prefill); per text the selected ids of
        the last router layer, best first."""
        seqs = [encode_segments(self.tokenizer, query_segments(self.prompt, t)) for t in texts]
        out, _ = self._prefill([q for q, _ in seqs], [d for _, d in seqs], access, top_k)
        if not out.routings:
            return [[] for _ in texts]
        r = out.routings[max(out.routings)]
        return [_best_first(_selected(r, row, slot_ids)) for row in range(len(texts))]

    def _begin_answer(self, s: _Sample, st: DecodeState, forced: bool = False) -> None:
        block = (self.prompt.end_of_retrieval if forced else "") + self.prompt.question_block.format(question=s.question)
        add = self._tok(block)
        s.transcript_ids += add
        st.pending = st.pending + add
        s.answer_phase = True

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _answer(self, s: _Sample, timer: Timer, batch: int) -> Answer:
        transcript = self._text(s.transcript_ids)
        text = transcript
        tail = self.prompt.question_block.split("{question}")[-1]
        if self.prompt.answer_lead in text:
            text = text.rsplit(self.prompt.answer_lead, 1)[1]
        elif tail in text:
            text = text.rsplit(tail, 1)[1]
        for end in self._answer_ends:
            text = text.split(end, 1)[0]
        timings = {k: v / batch for k, v in timer.seconds.items()} if batch > 1 else dict(timer.seconds)
        return Answer(s.question, text.strip(), transcript, s.rounds, timings)
