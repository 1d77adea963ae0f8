"""RULER NIAH: pinned formats, per-task configuration, lengths, segmentation and scoring."""

from __future__ import annotations

import re

import pytest

from msa.data import TASKS, approx_token_count, make_sample, render_prompt, score, segment_context
from msa.data.ruler import NEEDLE_TEMPLATE, NOISE_HAYSTACK, split_sentences
from msa.data.words import ADJECTIVES, NOUNS

NEEDLE_RE = re.compile(r"One of the special magic (numbers|uuids|words) for (\S+) is: (\S+)\.")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def check_type(kind: str, item: str) -> None:
    if kind == "numbers":
        assert re.fullmatch(r"[1-9]\d{6}", item), item
    elif kind == "uuids":
        assert UUID_RE.fullmatch(item), item
    else:
        adj, noun = item.split("-")
        assert adj in ADJECTIVES and noun in NOUNS


def test_pinned_formats():
    assert NEEDLE_TEMPLATE == "One of the special magic {type_needle_v} for {key} is: {value}."
    assert NOISE_HAYSTACK == (
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    )
    s = make_sample("niah_single_1", 600, seed=0)
    (needle,) = s.needles
    _, key, value = NEEDLE_RE.fullmatch(needle).groups()
    assert needle == f"One of the special magic numbers for {key} is: {value}."
    assert s.question == f"What are all the special magic numbers for {key} mentioned in the provided text?"
    assert s.answers == (value,)
    assert render_prompt(s) == (
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.\n" + s.context + "\n" + s.question
    )
    assert split_sentences(s.context.replace(needle, ""))[0] == "The grass is green."
    q = make_sample("niah_multiquery", 600, seed=0)
    keys = q.query.split(", ")
    assert len(keys) == 4 and keys[3].startswith("and ")
    assert q.question == f"What are all the special magic numbers for {q.query} mentioned in the provided text?"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_configuration(task):
    cfg = TASKS[task]
    s = make_sample(task, 3000, seed=1)
    assert s.task == task and s.type_needle_v == cfg.value_type
    assert 2800 <= approx_token_count(s.context) <= 3000
    assert len(s.needles) == cfg.num_keys * cfg.num_values
    assert len(s.answers) == cfg.num_queries * cfg.num_values
    keys = set()
    for needle in s.needles:
        assert s.context.count(needle) == 1
        kind, key, value = NEEDLE_RE.fullmatch(needle).groups()
        assert kind == cfg.value_type
        check_type(cfg.key_type, key)
        check_type(cfg.value_type, value)
        keys.add(key)
    assert len(keys) == cfg.num_keys
    assert score(s.context, s.answers) == 1.0
    sentences = split_sentences(s.context)
    hay = [x for x in sentences if x not in s.needles]
    if cfg.haystack == "noise":
        assert set(hay) <= set(split_sentences(NOISE_HAYSTACK))
    elif cfg.haystack == "needle":
        assert len(hay) > 20 and all(NEEDLE_RE.fullmatch(x) for x in hay)
        assert not any(NEEDLE_RE.fullmatch(x).group(2) in keys for x in hay)
    else:
        assert all("magic" not in x for x in hay) and len({x for x in hay}) > 20
    assert s == make_sample(task, 3000, seed=1)
    assert s.context != make_sample(task, 3000, seed=2).context


def test_multikey_distractors_and_multivalue():
    s = make_sample("niah_multikey_1", 2000, seed=4)
    answer_needles = [n for n in s.needles if NEEDLE_RE.fullmatch(n).group(2) == s.query]
    assert len(answer_needles) == 1 and len(s.needles) == 4
    m = make_sample("niah_multivalue", 2000, seed=4)
    assert {NEEDLE_RE.fullmatch(n).group(2) for n in m.needles} == {m.query}
    assert sorted(m.answers) == sorted(NEEDLE_RE.fullmatch(n).group(3) for n in m.needles)


def test_custom_token_count_and_depths():
    s = make_sample("niah_single_2", 5000, seed=3, token_count_fn=len)
    assert 4800 <= len(s.context) <= 5000
    starts = []
    for seed in range(30):
        t = make_sample("niah_single_1", 800, seed=seed)
        starts.append(t.context.index(t.needles[0]) / len(t.context))
    assert min(starts) < 0.25 and max(starts) > 0.75


def test_segment_context_keeps_needles_whole():
    s = make_sample("niah_multiquery", 4000, seed=5)
    docs = segment_context(s.context, doc_tokens=100)
    assert " ".join(docs) == s.context
    for needle in s.needles:
        assert sum(needle in d for d in docs) == 1
    for d in docs:
        sents = split_sentences(d)
        assert len(sents) == 1 or sum(approx_token_count(x) for x in sents) <= 100
    assert segment_context("A b. C d! E f? G", doc_tokens=4, token_count_fn=lambda x: len(x.split())) == [
        "A b. C d!",
        "E f? G",
    ]
    assert segment_context("one two three four five.", doc_tokens=2) == ["one two three four five."]
    with pytest.raises(ValueError):
        segment_context("x", doc_tokens=0)


def test_score():
    assert score("The special magic numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert score("Only 1234567 here", ["1234567", "7654321"]) == 0.5
    assert score("none", ["1234567", "7654321", "1", "2"]) == 0.0
    assert score("UUID: A640AACE-E6DC-42C9-9F49-FBEB748BED48", ["a640aace-e6dc-42c9-9f49-fbeb748bed48"]) == 1.0
    assert score("1234567", ["1234567", "7654321", "1234", "9"]) == 0.5
    with pytest.raises(ValueError):
        score("x", [])


def test_long_context_quickly():
    s = make_sample("niah_single_3", 200_000, seed=0)
    assert 199_000 <= approx_token_count(s.context) <= 200_000
    assert len(segment_context(s.context)) > 300
