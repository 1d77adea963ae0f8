"""What an ask returns: the answer, the transcript and, per Memory Interleave round, what was read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundInfo:
    """One retrieval round of one question.

    requests: the bracketed requests the model wrote this round, in order, without repeats (``[4]``
    -> "4"); requested: those that are document ids; retrieved: the documents read after the round
    (their text appended), chosen by the engine's ``doc_choice``; unknown: requested ids not in
    memory (dropped); routing: router layer -> selected (id, score) pairs of the round's prefill (with
    ``return_routing``); timings: seconds per stage of this round (a batched round's time shared by
    the questions in it).
    """

    requests: list[str] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)
    retrieved: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    routing: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Answer:
    """text: the answer; transcript: everything generated and appended (special tokens kept,
    deliberately); rounds: per retrieval round what was requested / read / routed; timings: seconds per
    stage (route, fetch, prefill — prefill includes route and fetch —, choose, decode)."""

    question: str
    text: str
    transcript: str
    rounds: list[RoundInfo]
    timings: dict[str, float]

    @property
    def doc_ids(self) -> list[list[int]]:
        """The documents read, per round."""
        return [r.retrieved for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "transcript": self.transcript,
            "rounds": [r.__dict__ for r in self.rounds],
            "timings": self.timings,
        }
