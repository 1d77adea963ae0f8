"""Bios world: determinism, prefix stability, unique names, consistent relations, answerable questions."""

from __future__ import annotations

import io
import json
import re

import pytest

from msa.data import ATTRIBUTES, BLOCK, RELATIONS, BiosConfig, BiosWorld, read_jsonl, write_jsonl
from msa.data.bios import _pools
from msa.data.ruler import split_sentences


def world(n: int = 4096, seed: int = 0) -> BiosWorld:
    return BiosWorld(BiosConfig(num_people=n, seed=seed))


def test_same_seed_same_world_and_different_seed_differs():
    a = list(world(2048, seed=7).iter_documents())
    b = list(world(2048, seed=7).iter_documents())
    c = list(world(2048, seed=8).iter_documents())
    assert a == b
    assert sum(x != y for x, y in zip(a, c)) > 2000
    q1 = list(world(2048, seed=7).iter_questions(20, "multi", seed=1))
    assert q1 == list(world(2048, seed=7).iter_questions(20, "multi", seed=1))
    assert q1 != list(world(2048, seed=7).iter_questions(20, "multi", seed=2))


def test_prefix_stability_and_lazy_access():
    small = world(BLOCK, seed=3)
    big = world(20_000_000, seed=3)
    docs = list(small.iter_documents())
    assert len(docs) == BLOCK
    assert docs == list(big.iter_documents(0, BLOCK, batch_size=100))
    for i in (0, 1, 511, BLOCK - 1):
        assert big.document(i) == docs[i]
        assert big.person(i) == small.person(i)
    far = 19_999_989
    assert big.document(far) == list(big.iter_documents(far - 3, far + 1))[-1]


def test_names_unique_over_200k_and_prefix_free_pools():
    w = world(200_000, seed=11)
    names = w.names()
    assert len(set(names)) == len(names) == 200_000
    assert w.capacity >= 2_000_000
    pools = _pools()
    last = sorted(pools.last)
    assert all(not b.startswith(a) for a, b in zip(last, last[1:]))
    for first in pools.first:
        assert first[0].isupper() and first[1:].islower() and first.isalpha()
    assert all(n.count(" ") == 1 for n in names[:1000])
    assert w.names(5, 8) == [w.name(i) for i in range(5, 8)]


def test_relations_are_consistent():
    w = world(2 * BLOCK, seed=5)
    people = [w.person(i) for i in range(2 * BLOCK)]
    married = 0
    for p in people:
        block = p.index // BLOCK
        for rel in RELATIONS:
            j = p.relation(rel)
            if j is not None:
                assert j // BLOCK == block and j != p.index
        if p.spouse is not None:
            married += 1
            s = people[p.spouse]
            assert s.spouse == p.index and s.generation == p.generation
            if p.parent is not None:
                assert s.parent != p.parent
        c = people[p.colleague]
        assert c.colleague == p.index and c.generation == p.generation
        assert (c.employer, c.employer_city) == (p.employer, p.employer_city)
        assert p.colleague != p.spouse
        if p.generation == 0:
            assert p.parent is None and p.mentor is None
        else:
            parent, mentor = people[p.parent], people[p.mentor]
            assert parent.generation == mentor.generation == p.generation - 1
            assert 18 <= p.birth_year - parent.birth_year <= 36
            assert p.mentor != p.parent
    assert 0.5 < married / len(people) < 0.7


def test_documents_format():
    w = world(3000, seed=2)
    for i, doc in enumerate(w.iter_documents()):
        p = w.person(i) if i < 200 else None
        assert "\n" not in doc and "  " not in doc
        # Periods only end sentences, so RULER's sentence splitter never cuts inside a fact.
        assert re.fullmatch(r"([^.!?]+\.)( [^.!?]+\.)+", doc), doc
        assert 4 <= len(split_sentences(doc)) <= 8
        assert 25 <= len(doc.split()) <= 75
        if p is not None:
            assert doc.startswith(p.name) or doc.startswith("On ")
            for a in ATTRIBUTES:
                assert p.attribute(a) in doc
            for rel in RELATIONS:
                j = p.relation(rel)
                if j is not None:
                    assert w.name(j) in doc
    intros = set()
    for i in range(300):
        p = w.person(i)
        first = split_sentences(w.document(i))[0]
        intros.add(first.replace(p.name, "N").replace(p.birth_date, "D").replace(p.birth_city, "C"))
    assert len(intros) >= 4  # several intro templates are used


@pytest.mark.parametrize("n", [5000, 4096])
def test_every_question_is_answerable_from_its_gold_documents(n):
    w = world(n, seed=9)
    docs = list(w.iter_documents())
    names = w.names()
    seen_single, seen_multi = set(), set()
    for q in w.iter_questions(1500, "single", seed=1):
        assert q.kind == "single" and len(q.gold_ids) == 1 and q.relation is None
        assert q.answer in docs[q.gold_ids[0]]
        assert q.text.endswith(("?", "."))
        assert q == w.question(q.gold_ids[0], "single")
        seen_single.add(q.attribute)
    for q in w.iter_questions(1500, "multi", seed=1):
        i, j = q.gold_ids
        assert q.kind == "multi" and i != j and max(i, j) < n
        assert w.person(i).relation(q.relation) == j  # gold order: the asked person first
        assert names[j] in docs[i]
        assert q.answer in docs[j]
        assert q.answer == w.person(j).attribute(q.attribute)
        assert names[i] + "'s " in q.text
        assert q == w.question(i, "multi")  # batched generation equals the lazy path
        seen_multi.add((q.relation, q.attribute))
    assert seen_single == set(ATTRIBUTES) | set(RELATIONS)
    assert len(seen_multi) == 4 * len(ATTRIBUTES) - 2


def test_explicit_question_text():
    w = world(BLOCK, seed=0)
    i = next(k for k in range(BLOCK) if w.person(k).mentor is not None)
    p = w.person(i)
    q = w.question(i, "multi", attribute="birth_city", relation="mentor", variant=1)
    assert q.text == f"In which city was {p.name}'s mentor born?"
    assert q.gold_ids == (i, p.mentor) and q.answer == w.person(p.mentor).birth_city
    q = w.question(i, "single", attribute="birth_city", variant=0)
    assert q.text == f"Where was {p.name} born?" and q.answer == p.birth_city and q.gold_ids == (i,)
    with pytest.raises(ValueError):
        w.question(i, "multi", attribute="employer", relation="colleague")
    with pytest.raises(ValueError):
        w.question(BLOCK, "single")


def test_jsonl_round_trip(tmp_path):
    w = world(300, seed=4)
    path = tmp_path / "docs.jsonl"
    assert w.write_documents_jsonl(path) == 300
    rows = list(read_jsonl(path))
    assert rows == [{"id": i, "text": t} for i, t in enumerate(w.iter_documents())]
    gz = tmp_path / "q.jsonl.gz"
    assert w.write_questions_jsonl(gz, 50, kind="multi", seed=3) == 50
    back = list(read_jsonl(gz))
    assert back == [q.to_json() for q in w.iter_questions(50, "multi", seed=3)]
    assert set(back[0]) >= {"question", "answer", "gold_ids", "kind"}
    buf = io.StringIO()
    assert w.write_documents_jsonl(buf, n=3, start=10) == 3
    assert [json.loads(line)["id"] for line in buf.getvalue().splitlines()] == [10, 11, 12]


def test_jsonl_stdout_and_malformed(tmp_path, capsys):
    write_jsonl("-", [{"a": 1}, {"b": "é"}])
    assert capsys.readouterr().out == '{"a": 1}\n{"b": "é"}\n'
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: malformed JSON"):
        list(read_jsonl(bad))
