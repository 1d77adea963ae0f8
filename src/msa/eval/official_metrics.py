"""The release's retrieval metrics and record shape (MSA_SPEC Part B 8), and ours beside them.

The release's numbers, computed from the generated text alone:

* ``pred_id`` = the set of EVERY ``[n]`` (``\\[(\\d+)\\]``) in the generated text: the ids the model
  wrote, but also the ids echoed in front of appended documents (``[4]. {doc}``) and any bracketed
  number inside a document or the question. ``generated_text`` is the release's response string:
  from the query template (``"\\nPlease answer the question based ..."``) to the end, documents and
  blocks included, ``<|endoftext|>`` removed (:func:`release_text`).
* per query, against the gold id set G and the predicted set P: precision = |P∩G| / |P|,
  recall = |P∩G| / |G|, F1 = 2·p·r / (p + r), IoU = |P∩G| / |P∪G|; each 0 when its denominator is 0.
  ``precision.metrics`` holds their means over the queries.
* ``pred_answer`` = the text after the LAST ``"The answer to the question is:"`` up to the first
  ``<|im_end|>`` after it (or the end), stripped; "" when the marker is missing (the release's
  behaviour there is not documented; we do not take text that is not marked as the answer).

Ours (records JSONL): the documents the engine actually READ per round (``Answer.rounds[i].retrieved``)
scored against the gold set, and the router's recall@k in the first round (mean over router layers,
and the last router layer) when routing was returned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from msa.eval.metrics import exact_match, token_f1

__all__ = [
    "ANSWER_MARKER",
    "END_MARKER",
    "pred_ids",
    "pred_answer",
    "set_scores",
    "mean_scores",
    "release_text",
    "release_record",
    "release_report",
    "read_scores",
    "recall_by_round",
    "router_recall",
    "answer_scores",
]

ANSWER_MARKER = "The answer to the question is:"
END_MARKER = "<|im_end|>"
_ID = re.compile(r"\[(\d+)\]")
SCORE_KEYS = ("precision", "recall", "f1", "iou")


def pred_ids(generated_text: str) -> list[int]:
    """Every ``[n]`` of the text as a sorted list of unique ints (the release's ``pred_id``)."""
    return sorted({int(m) for m in _ID.findall(generated_text)})


def pred_answer(generated_text: str) -> str:
    """Text after the last :data:`ANSWER_MARKER` up to :data:`END_MARKER`, stripped; "" without the marker."""
    if ANSWER_MARKER not in generated_text:
        return ""
    return generated_text.rsplit(ANSWER_MARKER, 1)[1].split(END_MARKER, 1)[0].strip()


def set_scores(pred: Iterable[int], gold: Iterable[int]) -> dict[str, float]:
    """precision, recall, f1, iou of a predicted id set against a gold id set (0 for 0/0)."""
    p, g = set(pred), set(gold)
    inter, union = len(p & g), len(p | g)
    precision = inter / len(p) if p else 0.0
    recall = inter / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "iou": inter / union if union else 0.0}


def mean_scores(rows: Sequence[dict[str, float]], keys: Sequence[str] = SCORE_KEYS) -> dict[str, float]:
    """Per-key mean over rows (0.0 for no rows), as ``precision.metrics`` reports them."""
    n = len(rows)
    return {k: (sum(r[k] for r in rows) / n if n else 0.0) for k in keys}


def release_text(prompt, question: str, transcript: str) -> str:
    """The release's ``generated_text`` for an engine transcript: the query side of the prompt
    (``prompt``: a :class:`msa.prompt.PromptFormat`) + the transcript, without ``<|endoftext|>``."""
    head = prompt.question_head + question + prompt.question_tail + prompt.turn_end + prompt.response_head
    return (head + transcript).replace("<|endoftext|>", "")


def release_record(question: str, answer: Any, gold: Sequence[int], generated_text: str,
                   texts: dict[int, str], references: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """One ``record_list`` entry with the release's keys. ``texts``: id -> document text of the memory
    (``predict_context``: the texts of the predicted ids that are in memory); ``gt_context``: the
    gold texts as given in the query file."""
    ids = pred_ids(generated_text)
    return {
        "labels_id": sorted(set(int(g) for g in gold)),
        "pred_id": ids,
        "question": question,
        "true_answer": answer,
        "pred_answer": pred_answer(generated_text),
        "generated_text": generated_text,
        "predict_context": [texts[i] for i in ids if i in texts],
        "gt_context": list(references),
    }


def release_report(records: Sequence[dict[str, Any]], case_name: str = "anonymous") -> dict[str, Any]:
    """``{case_name: {"precision": {"metrics": {precision, recall, f1, iou}}, "record_list": records}}``."""
    scores = [set_scores(r["pred_id"], r["labels_id"]) for r in records]
    return {case_name: {"precision": {"metrics": mean_scores(scores)}, "record_list": list(records)}}


def read_scores(rounds_retrieved: Sequence[Sequence[int]], gold: Sequence[int]) -> dict[str, float]:
    """Ours: set scores of the documents the engine read (all rounds) against the gold set, plus
    ``rounds`` (rounds that read something) and ``read`` (documents read)."""
    read = [d for r in rounds_retrieved for d in r]
    return set_scores(read, gold) | {"rounds": float(sum(1 for r in rounds_retrieved if r)), "read": float(len(read))}


def recall_by_round(rounds_retrieved: Sequence[Sequence[int]], gold: Sequence[int], rounds: int) -> list[float]:
    """Ours: recall of the documents read up to and including each round 1..``rounds`` (a question
    that stopped earlier keeps its last value)."""
    g, seen, out = set(gold), set(), []
    for r in range(rounds):
        if r < len(rounds_retrieved):
            seen.update(rounds_retrieved[r])
        out.append(len(g & seen) / len(g) if g else 0.0)
    return out


def router_recall(routing: dict[int, list[tuple[int, float]]], gold: Sequence[int],
                  ks: Sequence[int] = (1, 5, 16)) -> dict[str, float]:  # fmt: skip
    """Ours: recall@k of one round's routing (router layer -> selected (id, score)), best first per
    layer; ``recall@k`` is the mean over layers, ``last_recall@k`` the last router layer's."""
    g = set(gold)
    if not routing or not g:
        return {}
    per_layer = {}
    for layer, sel in routing.items():
        ranked = [d for d, _ in sorted(sel, key=lambda x: -x[1])]
        per_layer[layer] = {k: len(g.intersection(ranked[:k])) / len(g) for k in ks}
    last = per_layer[max(per_layer)]
    out = {f"recall@{k}": sum(v[k] for v in per_layer.values()) / len(per_layer) for k in ks}
    return out | {f"last_recall@{k}": last[k] for k in ks}


def _references(answer: Any) -> list[str]:
    if isinstance(answer, (list, tuple)):
        return [str(a) for a in answer] or [""]
    return [str(answer)]


def answer_scores(prediction: str, answer: Any) -> dict[str, float]:
    """Offline answer scores: EM and token F1 (SQuAD, best over the answers when there are several)."""
    refs = _references(answer)
    return {"em": exact_match(prediction, refs), "token_f1": token_f1(prediction, refs)}
