"""interleave_round: each training sequence is exactly one engine round (routing query and target)."""

from msa.data.bios import BiosConfig
from msa.prompt import OFFICIAL, QUERY, RESPONSE
from msa.train.data import BiosSamples, InterleaveRounds
from msa.train.targets import interleave_round


def test_rounds_cover_the_chain_and_route_like_the_engine():
    src = InterleaveRounds(BiosSamples(BiosConfig(num_people=1024, seed=0), 6, "multi", seed=3))
    seen = set()
    for s in src.iterate(0):
        chain, r = s.extra["chain"], s.extra["round"]
        assert len(chain) == 2
        seen.add(r)
        segs = interleave_round(s, OFFICIAL)
        targets = [g.text for g in segs if g.target]
        if r < 2:
            assert s.positives == [chain[r]] and targets == [f"[{chain[r]}]<|object_ref_end|>"]
        else:
            assert s.positives == [] and targets == ["<End-of-Retrieve>", f"The answer to the question is: {s.answer}<|im_end|>"]
        routed = [g.text for g in segs if g.doc_id == QUERY]
        if r == 0:
            assert routed == []  # round 1 routes with the question alone
        else:  # later rounds: the latest appended document text
            assert routed == [f"[{chain[r - 1]}]. " + next(d.text for d in s.memory if d.id == chain[r - 1]) + "\n"]
        assert all(g.doc_id in (QUERY, RESPONSE) for g in segs)
        if len(seen) == 3:
            break


def test_answer_fraction_sets_the_share_of_answer_rounds():
    inner = BiosSamples(BiosConfig(num_people=1024, seed=0), 6, "multi", seed=3)
    for frac in (0.1, 0.5):
        rounds = [InterleaveRounds(inner, frac).sample(i).extra["round"] for i in range(2000)]
        assert abs(rounds.count(2) / 2000 - frac) < 0.04
        assert abs(rounds.count(0) - rounds.count(1)) < 0.1 * 2000  # retrieval rounds stay balanced
    src = InterleaveRounds(inner, None)
    assert [s.extra["round"] for s, _ in zip(src.iterate(5), range(4))] == [src.sample(i).extra["round"] for i in range(5, 9)]
