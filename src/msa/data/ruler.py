"""RULER needle-in-a-haystack (NIAH) subtasks, generated offline and deterministically.

The eight subtasks of RULER (Hsieh et al., 2024) with its needle sentence, question and
per-task configuration:

=================  ========  =======  =======  ====  ======  =======
task               haystack  key      value    keys  values  queries
=================  ========  =======  =======  ====  ======  =======
niah_single_1      noise     words    numbers  1     1       1
niah_single_2      essay     words    numbers  1     1       1
niah_single_3      essay     words    uuids    1     1       1
niah_multikey_1    essay     words    numbers  4     1       1
niah_multikey_2    needle    words    numbers  1     1       1
niah_multikey_3    needle    uuids    uuids    1     1       1
niah_multivalue    essay     words    numbers  1     4       1
niah_multiquery    essay     words    numbers  4     1       4
=================  ========  =======  =======  ====  ======  =======

Formats
    needle:   ``"One of the special magic {type_needle_v} for {key} is: {value}."``
    question: ``"What are all the special magic {type_needle_v} for {query} mentioned in the
    provided text?"`` where ``type_needle_v`` is ``"numbers"`` / ``"uuids"`` / ``"words"`` and
    ``query`` is one key, or for several keys ``"k1, k2, k3, and k4"``.
    keys and values: words are ``"{adjective}-{noun}"`` from :mod:`msa.data.words`; numbers are
    7-digit decimals (1000000-9999999); uuids are version-4 UUID strings.

Haystacks
    noise:  ``"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
            again."`` repeated.
    essay:  RULER uses Paul Graham's essays; offline we use the **bios essay**: consecutive
            biographies of the :class:`msa.data.bios.BiosWorld` with seed :data:`ESSAY_WORLD_SEED`,
            starting at a person drawn from the sample seed.
    needle: the haystack is made of distractor needles with other keys and values of the task's
            types (multikey_2 / multikey_3).
    Needles are inserted between haystack sentences at distinct depths drawn from 40 evenly spaced
    depths (0 %..100 %), as RULER does; multikey_1's three extra keys are distractor needles.

Scoring (RULER's ``string_match_all``): the fraction of expected values that occur in the
prediction, case-insensitively; single-value tasks score 0 or 1.

Lengths are measured with a ``token_count_fn(text) -> int``; the default,
:func:`approx_token_count`, counts words, single digits and punctuation marks.
"""

from __future__ import annotations

import logging
import math
import random
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from msa.data.bios import BiosConfig, BiosWorld
from msa.data.words import ADJECTIVES, NOUNS

logger = logging.getLogger(__name__)

__all__ = [
    "ESSAY_WORLD_SEED",
    "NEEDLE_TEMPLATE",
    "NOISE_HAYSTACK",
    "PREAMBLE_TEMPLATE",
    "QUESTION_TEMPLATE",
    "ANSWER_PREFIX_TEMPLATE",
    "TASKS",
    "NiahSample",
    "NiahTask",
    "approx_token_count",
    "make_sample",
    "render_prompt",
    "score",
    "segment_context",
    "split_sentences",
]

TokenCountFn = Callable[[str], int]

NEEDLE_TEMPLATE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE_HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PREAMBLE_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards."
)
QUESTION_TEMPLATE = "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
ANSWER_PREFIX_TEMPLATE = "The special magic {type_needle_v} for {query} mentioned in the provided text are"

ESSAY_WORLD_SEED = 20240406
"""Seed of the bios world whose biographies form the offline "essay" haystack."""

_ESSAY_START_RANGE = 10_000_000
_NUM_DEPTHS = 40


@dataclass(frozen=True)
class NiahTask:
    """Configuration of one NIAH subtask.

    Attributes:
        haystack: ``"noise"``, ``"essay"`` or ``"needle"``.
        key_type / value_type: ``"words"``, ``"numbers"`` or ``"uuids"``.
        num_keys: needles' distinct keys (the non-queried ones are distractors).
        num_values: values per key (one needle per key and value).
        num_queries: keys asked about at once (the first ``num_queries`` of a shuffled key list).
    """

    haystack: str
    key_type: str
    value_type: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1


TASKS: dict[str, NiahTask] = {
    "niah_single_1": NiahTask("noise", "words", "numbers"),
    "niah_single_2": NiahTask("essay", "words", "numbers"),
    "niah_single_3": NiahTask("essay", "words", "uuids"),
    "niah_multikey_1": NiahTask("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahTask("needle", "words", "numbers"),
    "niah_multikey_3": NiahTask("needle", "uuids", "uuids"),
    "niah_multivalue": NiahTask("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahTask("essay", "words", "numbers", num_keys=4, num_queries=4),
}
"""RULER's eight NIAH subtasks, by RULER's names."""


@dataclass(frozen=True)
class NiahSample:
    """One NIAH example.

    Attributes:
        context: haystack with needles; sentences joined by single spaces.
        question: the RULER question (see :data:`QUESTION_TEMPLATE`).
        answers: expected values, in query order (all values of every queried key).
        task: subtask name (a key of :data:`TASKS`).
        needles: the inserted needle sentences (queried and distractor keys), in context order.
        query: the key or joined keys that the question names.
        type_needle_v: ``"numbers"``, ``"uuids"`` or ``"words"``.
    """

    context: str
    question: str
    answers: tuple[str, ...]
    task: str
    needles: tuple[str, ...] = ()
    query: str = ""
    type_needle_v: str = "numbers"


_TOKEN_RE = re.compile(r"\d|[^\W\d_]+|[^\w\s]|_")


def approx_token_count(text: str) -> int:
    """Rough BPE-like length: words, single digits and punctuation marks each count one."""
    return len(_TOKEN_RE.findall(text))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split after ``.``, ``!`` or ``?`` followed by whitespace; the whitespace is dropped.

    Needle sentences have no such break inside, so a needle is always one sentence.
    """
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def segment_context(text: str, doc_tokens: int = 512, token_count_fn: TokenCountFn | None = None) -> list[str]:
    """Cut a long context into memory documents on sentence boundaries.

    Rule: split into sentences with :func:`split_sentences`; walk them in order, appending each to
    the current document while the sum of ``token_count_fn(sentence)`` over the document stays
    ``<= doc_tokens``; otherwise start a new document. A sentence longer than ``doc_tokens`` is a
    document of its own (never cut), so no needle is ever split. Sentences of a document are joined
    with one space, so ``" ".join(segment_context(ctx)) == ctx`` for contexts made by
    :func:`make_sample`.
    """
    if doc_tokens <= 0:
        raise ValueError(f"doc_tokens must be positive, got {doc_tokens}")
    count = token_count_fn or approx_token_count
    docs: list[str] = []
    current: list[str] = []
    used = 0
    for sentence in split_sentences(text):
        n = count(sentence)
        if current and used + n > doc_tokens:
            docs.append(" ".join(current))
            current, used = [], 0
        current.append(sentence)
        used += n
    if current:
        docs.append(" ".join(current))
    return docs


def score(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` found in ``prediction`` (case-insensitive substring match)."""
    if not references:
        raise ValueError("references must not be empty")
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def render_prompt(sample: NiahSample) -> str:
    """RULER's full prompt: preamble, newline, context, newline, question."""
    preamble = PREAMBLE_TEMPLATE.format(type_needle_v=sample.type_needle_v)
    return f"{preamble}\n{sample.context}\n{sample.question}"


def _join_query(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _draw(kind: str, rng: random.Random) -> str:
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def _draw_unique(kind: str, rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    for _ in range(1000 * n + 1000):
        if len(out) == n:
            break
        item = _draw(kind, rng)
        if item not in taken:
            taken.add(item)
            out.append(item)
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct {kind}")
    return out


def _essay_sentences(rng: random.Random) -> Iterator[str]:
    world = BiosWorld(BiosConfig(num_people=0, seed=ESSAY_WORLD_SEED))
    start = rng.randrange(_ESSAY_START_RANGE)
    for doc in world.iter_documents(start, world.capacity, batch_size=256):
        yield from split_sentences(doc)


def _noise_sentences() -> Iterator[str]:
    noise = split_sentences(NOISE_HAYSTACK)
    while True:
        yield from noise


def _needle_sentences(task: NiahTask, rng: random.Random, type_needle_v: str, real_keys: set[str]) -> Iterator[str]:
    while True:
        key = _draw(task.key_type, rng)
        if key in real_keys:
            continue
        yield NEEDLE_TEMPLATE.format(type_needle_v=type_needle_v, key=key, value=_draw(task.value_type, rng))


def make_sample(
    task: str,
    context_tokens: int,
    seed: int = 0,
    token_count_fn: TokenCountFn | None = None,
) -> NiahSample:
    """Generate one sample of ``task`` whose context has at most ``context_tokens`` tokens.

    The haystack is filled up to the budget (needles included) by summing per-sentence counts;
    the whole context is then counted once more and trailing haystack sentences are dropped until
    ``token_count_fn(context) <= context_tokens``. The result depends only on
    ``(task, context_tokens, seed, token_count_fn)``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    cfg = TASKS[task]
    count = token_count_fn or approx_token_count
    rng = random.Random(f"msa.ruler/{task}/{seed}")
    type_needle_v = cfg.value_type

    taken: set[str] = set()
    keys = _draw_unique(cfg.key_type, rng, cfg.num_keys, taken)
    values = [_draw_unique(cfg.value_type, rng, cfg.num_values, taken) for _ in keys]
    needles = [
        NEEDLE_TEMPLATE.format(type_needle_v=type_needle_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs
    ]
    rng.shuffle(needles)
    order = list(range(cfg.num_keys))
    rng.shuffle(order)
    queried = order[: cfg.num_queries]
    query = _join_query([keys[q] for q in queried])
    answers = tuple(v for q in queried for v in values[q])

    if cfg.haystack == "noise":
        source: Iterator[str] = _noise_sentences()
    elif cfg.haystack == "essay":
        source = _essay_sentences(rng)
    elif cfg.haystack == "needle":
        source = _needle_sentences(cfg, rng, type_needle_v, set(keys))
    else:
        raise ValueError(f"unknown haystack {cfg.haystack!r}")

    cache: dict[str, int] = {}

    def cached_count(s: str) -> int:
        n = cache.get(s)
        if n is None:
            n = cache[s] = count(s)
        return n

    budget = context_tokens - sum(cached_count(n) for n in needles)
    haystack: list[str] = []
    used = 0
    for sentence in source:
        n = cached_count(sentence)
        if used + n > budget:
            break
        haystack.append(sentence)
        used += n

    depths = sorted(rng.sample(range(_NUM_DEPTHS), len(needles)))

    def assemble(hay: list[str]) -> tuple[str, tuple[str, ...]]:
        positions = [round(len(hay) * d / (_NUM_DEPTHS - 1)) for d in depths]
        parts: list[str] = []
        prev = 0
        for pos, needle in zip(positions, needles):
            parts.extend(hay[prev:pos])
            parts.append(needle)
            prev = pos
        parts.extend(hay[prev:])
        return " ".join(parts), tuple(needles)

    context, placed = assemble(haystack)
    total = count(context)
    for _ in range(64):
        if total <= context_tokens or not haystack:
            break
        mean = max(1.0, used / max(1, len(haystack)))
        drop = max(1, math.ceil((total - context_tokens) / mean))
        haystack = haystack[: max(0, len(haystack) - drop)]
        used = sum(cached_count(s) for s in haystack)
        context, placed = assemble(haystack)
        total = count(context)
    if total > context_tokens:
        logger.warning("%s: needles alone exceed %d tokens (context has %d)", task, context_tokens, total)
    question = QUESTION_TEMPLATE.format(type_needle_v=type_needle_v, query=query)
    return NiahSample(context, question, answers, task, placed, query, type_needle_v)
