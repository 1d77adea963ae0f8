"""Metrics on hand-made cases."""

import math

import pytest

from msa.eval.metrics import (
    bootstrap_ci,
    contains_answer,
    exact_match,
    normalize_answer,
    recall_at_k,
    retrieval_scores,
    ruler_score,
    summarize,
    token_f1,
)


def test_normalize_answer():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theater") == "theater"  # articles only as whole words
    assert normalize_answer("") == ""


def test_exact_match_and_f1():
    assert exact_match("the Paris.", "Paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("Lyon", ["Paris", "lyon"]) == 1.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert token_f1("June 5, 1940", "June 5 1940") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0
    assert token_f1("x b b", "b b c") == pytest.approx(2 / 3)  # multiset overlap 2 of 3 and 3
    assert token_f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article, dropped
    assert contains_answer("She was born in Hartfield in 1940.", "Hartfield") == 1.0
    assert contains_answer("Hartfieldshire", "Hartfield") == 0.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_retrieval_scores():
    r = retrieval_scores([3, 1, 3, 7], {1, 2})
    assert r == {"recall": 0.5, "precision": 1 / 3, "f1": pytest.approx(0.4), "hit": 1.0}
    assert retrieval_scores([], [1])["precision"] == 0.0
    assert retrieval_scores([5, 1], [1], k=1)["recall"] == 0.0
    assert recall_at_k([5, 5, 1], [1], k=2) == 1.0  # duplicates do not use up k
    with pytest.raises(ValueError):
        retrieval_scores([1], [])


def test_ruler_and_summaries():
    assert ruler_score("the numbers are 123 and 456", ["123", "456", "789"]) == pytest.approx(2 / 3)
    s = summarize([1.0, 0.0, None, 1.0])
    assert s == {"mean": pytest.approx(2 / 3), "n": 3, "missing": 1}
    assert summarize([])["mean"] is None
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert 0.35 < lo < 0.5 < hi < 0.65
    assert summarize([1.0, 1.0], ci=True)["ci95"] == [1.0, 1.0]
    assert all(math.isnan(v) for v in bootstrap_ci([]))
