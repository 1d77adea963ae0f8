"""Stop rules of generation as token ids, compiled once from the prompt format and the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

from msa.prompt import PromptFormat


@dataclass(frozen=True)
class StopRules:
    """The markers that end a round, retrieval or the answer, as token-id sequences.

    Markers are matched as a suffix of the generated ids in their stand-alone tokenization, which is
    how training targets write them (each marker is its own segment, or a special token).

    round_end: ends a retrieval round (after the requests); end_of_retrieval: the model needs no more
    documents; end_of_turn: ends the answer; eos: any single id that ends generation (the tokenizer's
    and the model config's end-of-sequence ids and a one-token end_of_turn).
    """

    round_end: tuple[int, ...]
    end_of_retrieval: tuple[int, ...]
    end_of_turn: tuple[int, ...]
    eos: frozenset[int]

    @classmethod
    def compile(cls, tokenizer, prompt: PromptFormat, eos_token_id: int | list[int] | None = None) -> "StopRules":
        def ids(text: str) -> tuple[int, ...]:
            out = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not out:
                raise ValueError(f"the marker {text!r} encodes to no tokens")
            return out

        end_of_turn = ids(prompt.end_of_turn)
        eos = {i for i in _as_list(getattr(tokenizer, "eos_token_id", None)) + _as_list(eos_token_id) if i >= 0}
        if len(end_of_turn) == 1:
            eos.add(end_of_turn[0])
        return cls(ids(prompt.round_end), ids(prompt.end_of_retrieval), end_of_turn, frozenset(eos))


def ends_with(ids: list[int], marker: tuple[int, ...]) -> bool:
    """Whether ``ids`` ends with the token sequence ``marker``."""
    n = len(marker)
    return len(ids) >= n and tuple(ids[-n:]) == marker


def _as_list(x: int | list[int] | None) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]
