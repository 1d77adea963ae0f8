"""Which documents a Memory Interleave round reads: a small strategy, general over corpora.

After a retrieval round the model has written its requests (``[...]`` before the round end). A
``DocChoice`` turns them into the documents whose original text is appended before the next round:

* ``generated`` (the official protocol): the requests are document ids; known, unread ones are read.
* ``routed``: each request is routed on its own, as a question in the model's prompt layout, and the
  best unread document of that routing is read. The model writes what it looks for (an id, a name, a
  phrase); the router, not string matching, finds it.

A strategy sees only the requests, the documents already read, the memory's texts and a router over
the memory (``ChoiceContext``); nothing about a particular corpus. Pass an object with the same
``choose`` method as ``Engine(doc_choice=...)`` to plug in another one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from msa.config import LEGACY_DOC_CHOICES

REQUEST_PATTERN = re.compile(r"\[([^\[\]]+)\]")


def requests_in(text: str) -> list[str]:
    """The bracketed requests of a round's generated text, stripped, in order, without repeats."""
    return list(dict.fromkeys(m.strip() for m in REQUEST_PATTERN.findall(text) if m.strip()))


def requested_ids(requests: list[str]) -> list[int]:
    """The requests that are document ids."""
    return [int(r) for r in requests if r.isdigit()]


@dataclass
class ChoiceContext:
    """What a strategy may use. text: a document's original text in the memory being asked (None if
    unknown); route: routes each text as a question over that memory and returns, per text, the ids of
    its selected documents, best first."""

    text: Callable[[int], str | None]
    route: Callable[[list[str]], list[list[int]]]


@dataclass
class Choice:
    """One question's choice after a round: ids it requested, those unknown, the documents to read."""

    requested: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    read: list[int] = field(default_factory=list)


class DocChoice(Protocol):
    name: str

    def choose(self, ctx: ChoiceContext, requests: list[list[str]], seen: list[set[int]]) -> list[Choice]:
        """Per question of a batch: its round's requests and the documents it has read -> its Choice."""
        ...


class GeneratedIds:
    """The official protocol: read the ids the model wrote that exist in memory and were not read."""

    name = "generated"

    def choose(self, ctx: ChoiceContext, requests: list[list[str]], seen: list[set[int]]) -> list[Choice]:
        out = []
        for rs, done in zip(requests, seen):
            c = Choice(requested=requested_ids(rs))
            for d in c.requested:
                if ctx.text(d) is None:
                    c.unknown.append(d)
                elif d not in done:
                    c.read.append(d)
            out.append(c)
        return out


class RoutedRequests:
    """Route each request on its own (one batched routing for the whole batch); read its best
    document not read before (nor chosen for an earlier request of the same round)."""

    name = "routed"

    def choose(self, ctx: ChoiceContext, requests: list[list[str]], seen: list[set[int]]) -> list[Choice]:
        asks = [(i, r) for i, rs in enumerate(requests) for r in rs]
        ranked = ctx.route([r for _, r in asks]) if asks else []
        out = [Choice(requested=requested_ids(rs)) for rs in requests]
        taken = [set(s) for s in seen]
        for (i, _), docs in zip(asks, ranked):
            pick = next((d for d in docs if d not in taken[i]), None)
            if pick is not None:
                out[i].read.append(pick)
                taken[i].add(pick)
        return out


DOC_CHOICES: dict[str, type] = {"generated": GeneratedIds, "routed": RoutedRequests}


def choice_strategy(choice: str | DocChoice) -> DocChoice:
    """The strategy called ``choice`` (``MSAConfig.doc_choice``), or ``choice`` itself if it is one."""
    if not isinstance(choice, str):
        if not callable(getattr(choice, "choose", None)):
            raise TypeError(f"doc_choice must be one of {sorted(DOC_CHOICES)} or have a choose() method")
        return choice
    try:
        return DOC_CHOICES[LEGACY_DOC_CHOICES.get(choice, choice)]()
    except KeyError:
        raise ValueError(f"doc_choice must be one of {sorted(DOC_CHOICES)}, got {choice!r}") from None
