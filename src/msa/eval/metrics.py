"""Offline metrics: answer matching, document retrieval, RULER scoring and aggregation.

Answer matching follows the SQuAD convention. ``normalize_answer`` lower-cases, replaces every
punctuation character by nothing, drops the English articles ``a``, ``an``, ``the`` as whole words and
collapses runs of whitespace to one space:

* ``exact_match(pred, ref)`` is 1.0 when the normalised strings are equal, else 0.0;
* ``token_f1(pred, ref)`` is the harmonic mean of precision and recall of the multiset of
  whitespace tokens of the normalised strings (1.0 when both are empty, 0.0 when one is);
* ``contains_answer(pred, ref)`` is 1.0 when the normalised reference occurs in the normalised
  prediction as a whole-token sequence (a lenient score for verbose answers).

With several references the best score over the references is taken.

Retrieval (``retrieval_scores``): ``retrieved`` is a ranked list of document ids (duplicates keep
their first position), ``gold`` a set. With ``k`` the list is cut to its first ``k`` unique ids.
recall = |R ∩ G| / |G|, precision = |R ∩ G| / |R| (0 when R is empty), f1 their harmonic mean,
hit = 1 when R ∩ G is not empty.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from msa.data.ruler import score as _ruler_score

__all__ = [
    "normalize_answer",
    "exact_match",
    "token_f1",
    "contains_answer",
    "best_over_references",
    "retrieval_scores",
    "recall_at_k",
    "ruler_score",
    "summarize",
    "bootstrap_ci",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_refs(reference: str | Sequence[str]) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("at least one reference answer is needed")
    return refs


def best_over_references(fn, prediction: str, reference: str | Sequence[str]) -> float:
    """max over the references of ``fn(prediction, ref)``."""
    return max(fn(prediction, r) for r in _as_refs(reference))


def _em(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _f1(prediction: str, reference: str) -> float:
    p = normalize_answer(prediction).split()
    r = normalize_answer(reference).split()
    if not p and not r:
        return 1.0
    if not p or not r:
        return 0.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _contains(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction), normalize_answer(reference)
    if not r:
        return float(not p)
    return float(f" {r} " in f" {p} ")


def exact_match(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference, else 0.0."""
    return best_over_references(_em, prediction, reference)


def token_f1(prediction: str, reference: str | Sequence[str]) -> float:
    """SQuAD token F1 between normalised prediction and reference (best over references)."""
    return best_over_references(_f1, prediction, reference)


def contains_answer(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 if a normalised reference occurs token-aligned inside the normalised prediction."""
    return best_over_references(_contains, prediction, reference)


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def retrieval_scores(retrieved: Iterable[int], gold: Iterable[int], k: int | None = None) -> dict[str, float]:
    """recall, precision, f1 and hit of retrieved ids (first ``k`` unique ones) against gold ids."""
    g = set(int(i) for i in gold)
    if not g:
        raise ValueError("gold must hold at least one document id")
    r = _unique(retrieved)
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        r = r[:k]
    inter = len(g.intersection(r))
    recall = inter / len(g)
    precision = inter / len(r) if r else 0.0
    f1 = 2 * recall * precision / (recall + precision) if inter else 0.0
    return {"recall": recall, "precision": precision, "f1": f1, "hit": float(inter > 0)}


def recall_at_k(ranked: Iterable[int], gold: Iterable[int], k: int) -> float:
    """|top-k unique ranked ∩ gold| / |gold|."""
    return retrieval_scores(ranked, gold, k)["recall"]


def ruler_score(prediction: str, references: Sequence[str]) -> float:
    """RULER ``string_match_all``: fraction of references found in the prediction (case-insensitive)."""
    return _ruler_score(prediction, references)


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap confidence interval of the mean (seeded, so reports are reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def summarize(values: Iterable[float | None], ci: bool = False, **ci_kwargs) -> dict[str, float | int | list | None]:
    """``{"mean", "n", "missing"}`` (+ ``"ci95"`` when ``ci``). ``None`` values are counted as
    missing and left out of the mean, never treated as 0; the mean of nothing is None."""
    vals = list(values)
    kept = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    out: dict[str, float | int | list | None] = {
        "mean": (sum(kept) / len(kept)) if kept else None,
        "n": len(kept),
        "missing": len(vals) - len(kept),
    }
    if ci:
        out["ci95"] = list(bootstrap_ci(kept, **ci_kwargs)) if kept else None
    return out
