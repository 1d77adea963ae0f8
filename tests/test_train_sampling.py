"""Bios training samples: hard negatives, the id range, name lookups and question wordings."""

import pytest

from msa.data.bios import BiosConfig, BiosWorld
from msa.data.bios_text import HELDOUT_LEADS, TRAIN_LEADS, question_templates
from msa.train.config import BiosSampling
from msa.train.data import BiosSamples

WORLD = BiosConfig(num_people=1 << 14, seed=0)


def test_hard_negatives_share_a_first_or_last_name_with_the_gold_person():
    world = BiosWorld(WORLD)
    src = BiosSamples(WORLD, 32, "single", sampling=BiosSampling(hard_negative_fraction=0.5))
    plain = BiosSamples(WORLD, 32, "single")
    for i in range(5):
        s, p = src.sample(i), plain.sample(i)
        gold = world.name(s.positives[0]).split()
        share = [d for d in s.memory if d.id not in s.positives and (set(world.name(d.id).split()) & set(gold))]
        assert len(share) >= min(15, len(world.namesakes(s.positives[0])))  # 0.5 of 31 distractors, or all there are
        gold_p = world.name(p.positives[0]).split()
        assert len([d for d in p.memory if set(world.name(d.id).split()) & set(gold_p)]) <= 3
    assert set(world.namesakes(5)).isdisjoint({5})


def test_ids_cover_every_length_up_to_max_doc_id():
    src = BiosSamples(WORLD, 64, "mixed", sampling=BiosSampling(max_doc_id=10**7))
    lengths = set()
    for i in range(20):
        s = src.sample(i)
        ids = [d.id for d in s.memory]
        assert len(set(ids)) == len(ids) and all(0 <= d < 10**7 for d in ids)
        assert set(s.positives) <= set(ids) and set(s.extra["names"]) == set(s.positives)
        lengths |= {len(str(d)) for d in ids}
    assert lengths == set(range(1, 8))


def test_name_lookups_and_training_wordings():
    src = BiosSamples(WORLD, 8, "single", sampling=BiosSampling(lookup_fraction=0.5, wording="train",
                                                                lead_fraction=0.5, lower_fraction=0.5))  # fmt: skip
    kinds, leads, lowers = set(), 0, 0
    for i in range(80):
        s = src.sample(i)
        kinds.add(s.extra["kind"])
        if s.extra["kind"] == "lookup":
            assert s.question == s.extra["names"][s.positives[0]] and s.answer == s.memory[[d.id for d in s.memory].index(s.positives[0])].text
        leads += any(s.question.startswith(lead.split("{q}")[0]) for lead in TRAIN_LEADS)
        assert not any(s.question.startswith(lead.split("{q}")[0]) for lead in HELDOUT_LEADS)
        name = s.extra["names"][s.positives[0]]
        assert name in s.question  # the request copies the name as the question writes it
        lowers += name.islower()
    assert kinds == {"lookup", "single"} and leads > 10 and lowers > 10
    with pytest.raises(ValueError, match="wording"):
        BiosSampling(wording="paraphrase")  # held out: never trained on


def test_heldout_wordings_ask_the_same_questions_in_other_words():
    world = BiosWorld(WORLD)
    base = list(world.iter_questions(30, "single", seed=1))
    for wording in ("paraphrase", "polite", "lowercase"):
        other = list(world.iter_questions(30, "single", seed=1, wording=wording))
        assert [(q.gold_ids, q.answer) for q in other] == [(q.gold_ids, q.answer) for q in base]
        assert all(a.text != b.text for a, b in zip(base, other))
    train = {t for a in ("birth_city", "occupation") for t in question_templates(a, "train")}
    held = {t for a in ("birth_city", "occupation") for t in question_templates(a, "paraphrase")}
    assert not train & held
