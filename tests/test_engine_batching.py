"""Continuous batching in ``Engine.ask_batch`` (``max_batch``): a question that finishes leaves after
its round and a waiting one joins the next round, beside questions in later rounds; every answer is
the one-by-one answer. The shipped msa-bios-tiny follows the retrieval protocol, so its questions
take different numbers of rounds."""

import pytest

from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine, InMemoryView
from msa.model import MSAForCausalLM, resolve_model_path
from msa.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def bios():
    model = MSAForCausalLM.from_pretrained("msa-bios-tiny").eval()
    tok = load_tokenizer(resolve_model_path("msa-bios-tiny"))
    world = BiosWorld(BiosConfig(num_people=48, seed=7))
    engine = Engine(model, tok, InMemoryView(model, tok, list(world.iter_documents(0, 48))))
    questions = [q.text for kind in ("multi", "single") for q in world.iter_questions(3, kind, seed=11)]
    return engine, questions


def test_continuous_batching_equals_one_by_one(bios, monkeypatch):
    engine, questions = bios
    single = [engine.ask(q, max_new_tokens=32) for q in questions]
    assert len({len(a.rounds) for a in single}) > 1  # the questions take different numbers of rounds
    rounds = []  # every round's questions: (index, rounds done before it)
    real = engine._round_held

    def spy(active, *a, **kw):
        rounds.append([(s.index, len(s.rounds)) for s in active])
        return real(active, *a, **kw)

    monkeypatch.setattr(engine, "_round_held", spy)
    got = engine.ask_batch(questions, max_new_tokens=32, max_batch=2)
    assert [a.transcript for a in got] == [a.transcript for a in single]
    assert [len(a.rounds) for a in got] == [len(a.rounds) for a in single]
    assert all(len(r) <= 2 for r in rounds) and {i for r in rounds for i, _ in r} == set(range(len(questions)))
    assert any(len({n for _, n in r}) > 1 for r in rounds)  # one joined beside one in a later round
    with pytest.raises(ValueError, match="max_batch"):
        engine.ask_batch(questions, max_batch=0)
