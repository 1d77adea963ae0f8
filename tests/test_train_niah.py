"""NIAH training samples (RULER's subtasks as TrainSamples), mixing them into the bios stream, recite samples."""

import pytest

from msa.data.bios import BiosConfig
from msa.data.ruler import TASKS
from msa.train.config import DataConfig, TrainConfig
from msa.train.data import BiosSamples, InterleaveRounds, MixedSamples, NiahSamples


def test_niah_samples_hold_their_needles_and_cycle_the_tasks():
    src = NiahSamples(num_docs=8, seed=1, doc_tokens=64)
    kinds = set()
    for i in range(len(TASKS)):
        s = src.sample(i)
        kinds.add(s.extra["kind"])
        assert len(s.memory) <= 8 and s.positives
        text = {d.id: d.text for d in s.memory}
        values = s.answer.split(", ")
        for value in values:  # every expected value is in a positive document
            assert any(value in text[g] for g in s.positives)
        assert all(any(v in text[g] for v in values) for g in s.positives)  # and positives hold one
        assert src.sample(i) == s  # a pure function of the index
    assert kinds == set(TASKS)


def test_niah_samples_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown NIAH tasks"):
        NiahSamples(tasks=("niah_single_9",))
    with pytest.raises(ValueError, match="doc_tokens"):
        NiahSamples(doc_tokens=4)


def test_mixed_samples_take_the_requested_share_and_feed_interleave_rounds():
    bios = BiosSamples(BiosConfig(num_people=512, seed=0), 8, "single")
    mixed = MixedSamples(bios, NiahSamples(8, doc_tokens=64), 0.25)
    kinds = [mixed.sample(i).extra["kind"] for i in range(400)]
    share = sum(k.startswith("niah") for k in kinds) / len(kinds)
    assert 0.18 < share < 0.32
    rounds = InterleaveRounds(mixed, 0.5)
    s = rounds.sample(next(i for i, k in enumerate(kinds) if k.startswith("niah")))
    assert s.extra["chain"] and s.extra["round"] <= len(s.extra["chain"])
    with pytest.raises(ValueError, match="fraction"):
        MixedSamples(bios, bios, 1.5)


def test_config_checks_the_niah_share():
    with pytest.raises(ValueError, match="niah_fraction"):
        TrainConfig(data=DataConfig(niah_fraction=2.0)).validate()


def test_recite_samples_ask_for_the_gold_biography():
    world = BiosConfig(num_people=512, seed=0)
    src = BiosSamples(world, 8, "mixed", recite_fraction=0.3)
    samples = [src.sample(i) for i in range(300)]
    recite = [s for s in samples if s.extra["kind"] == "recite"]
    assert 0.22 < len(recite) / len(samples) < 0.38
    for s in recite[:20]:
        (gold,) = s.positives
        doc = next(d.text for d in s.memory if d.id == gold)
        assert s.answer == doc and src.world.name(gold) in s.question and len(s.memory) == 8
    assert all(s.extra["kind"] != "recite" for s in map(BiosSamples(world, 8, "mixed").sample, range(100)))
    with pytest.raises(ValueError, match="recite_fraction"):
        BiosSamples(world, 8, recite_fraction=-0.1)
    with pytest.raises(ValueError, match="recite_fraction"):
        TrainConfig(data=DataConfig(recite_fraction=1.5)).validate()


def test_niah_rounds_request_the_needle_key_not_the_document_id():
    """A retrieval round of a NIAH sample writes the key it looks for (as a bios round writes a name)."""
    from msa.prompt import prompt_format
    from msa.train.targets import interleave_named

    src = NiahSamples(num_docs=8, seed=3, doc_tokens=64, tasks=("niah_single_1", "niah_multiquery"))
    for i in range(4):
        s = src.sample(i)
        text = {d.id: d.text for d in s.memory}
        for g in s.positives:
            key = s.extra["names"][g]
            assert f"for {key} is: " in text[g] and key in s.question
        retrieval = InterleaveRounds(src, 0.0).sample(i)  # a retrieval round (no answer round)
        written = [seg.text for seg in interleave_named(retrieval, prompt_format("question")) if seg.target]
        assert len(written) == 1 and written[0].split("]")[0][1:] in s.extra["names"].values()
