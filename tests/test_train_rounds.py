"""interleave_round: each training sequence is exactly one engine round (routing query and target)."""

from msa.data.bios import BiosConfig
from msa.prompt import OFFICIAL, QUERY, RESPONSE
from msa.train.data import BiosSamples, InterleaveRounds, TrainSample, _world
from msa.train.targets import interleave_named, interleave_round


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


def test_hide_read_keeps_the_read_text_out_of_memory_in_answer_rounds_only():
    inner = BiosSamples(BiosConfig(num_people=1024, seed=0), 6, "multi", seed=3)
    plain, hidden = InterleaveRounds(inner, 0.5), InterleaveRounds(inner, 0.5, hide_read=True)
    kinds = set()
    for i in range(12):
        a, b = plain.sample(i), hidden.sample(i)
        chain, r = a.extra["chain"], a.extra["round"]
        kinds.add(r == len(chain))
        if r < len(chain):  # retrieval rounds are untouched
            assert b.memory == a.memory and interleave_round(b, OFFICIAL) == interleave_round(a, OFFICIAL)
            continue
        assert {d.id for d in b.memory} == {d.id for d in a.memory} - set(chain)
        assert interleave_round(b, OFFICIAL) == interleave_round(a, OFFICIAL)  # same text appended and answered
    assert kinds == {True, False}


def test_named_rounds_request_the_subject_by_name():
    """interleave_named: the same rounds, but a request is ``[NAME]`` of the document's subject; the
    bridge person's name is in the text read in the round before (what the model must copy)."""
    world = BiosConfig(num_people=1024, seed=0)
    src = InterleaveRounds(BiosSamples(world, 6, "multi", seed=3), 0.0)
    people = _world(world.num_people, world.seed, world.marriage_rate)
    for i in range(20):
        s = src.sample(i)
        chain, r = s.extra["chain"], s.extra["round"]
        names = s.extra["names"]
        assert names == {g: people.name(g) for g in chain}
        segs = interleave_named(s, OFFICIAL)
        assert [g.text for g in segs if g.target] == [f"[{names[chain[r]]}]<|object_ref_end|>"]
        assert [g.text for g in segs if g.doc_id == QUERY] == [g.text for g in interleave_round(s, OFFICIAL) if g.doc_id == QUERY]
        if r == 0:
            assert names[chain[0]] in s.question
        else:
            assert f"[{names[chain[0]]}]<|object_ref_end|>" == segs[0].text and names[chain[1]] in segs[1].text
    no_names = TrainSample(s.question, s.memory, s.positives, None, s.answer, {k: v for k, v in s.extra.items() if k != "names"})
    assert interleave_named(no_names, OFFICIAL) == interleave_round(no_names, OFFICIAL)  # ids where no name is known


def test_extra_read_appends_other_documents_in_answer_rounds():
    """extra_read: answer rounds have also read up to N other memory documents, in random order,
    hidden from memory with the chain; retrieval rounds and extra_read=0 are unchanged."""
    inner = BiosSamples(BiosConfig(num_people=1024, seed=0), 8, "multi", seed=3)
    plain, extra = InterleaveRounds(inner, 0.5, hide_read=True), InterleaveRounds(inner, 0.5, hide_read=True, extra_read=3)
    counts = set()
    for i in range(40):
        a, b = plain.sample(i), extra.sample(i)
        chain, r = a.extra["chain"], a.extra["round"]
        if r < len(chain):
            assert b.memory == a.memory and interleave_round(b, OFFICIAL) == interleave_round(a, OFFICIAL)
            continue
        reads = b.extra["reads"]
        assert sorted(g for g in reads if g in chain) == sorted(chain)  # every chain document read
        others = [g for g in reads if g not in chain]
        counts.add(len(others))
        assert len(others) <= 3 and len(set(reads)) == len(reads)
        assert {d.id for d in b.memory} == {d.id for d in a.memory} - set(others)  # hidden too
        appended = [g.text for g in interleave_round(b, OFFICIAL) if g.text.startswith("[") and ". " in g.text]
        assert [t.split("]")[0][1:] for t in appended] == [str(g) for g in reads]  # every read text, in order
        assert interleave_round(b, OFFICIAL)[-1] == interleave_round(a, OFFICIAL)[-1]  # the same answer
    assert len(counts) > 1  # the number of other documents varies


def test_extra_read_chain_order_keeps_the_hops_in_order():
    """chain_order: the chain's documents are read in hop order, the extra reads anywhere among them
    (before, between and after the hops, over many samples); the same documents as the shuffled
    choice, whose stream is unchanged by the option's existence."""
    inner = BiosSamples(BiosConfig(num_people=1024, seed=0), 8, "multi", seed=3)
    shuffled = InterleaveRounds(inner, 1.0, hide_read=True, extra_read=2)
    ordered = InterleaveRounds(inner, 1.0, hide_read=True, extra_read=2, chain_order=True)
    places, out_of_order = set(), 0
    for i in range(60):
        a, b = shuffled.sample(i), ordered.sample(i)
        chain = b.extra["chain"]
        assert sorted(a.extra["reads"]) == sorted(b.extra["reads"])  # the same extra documents drawn
        hops = [g for g in b.extra["reads"] if g in chain]
        assert hops == chain
        out_of_order += [g for g in a.extra["reads"] if g in chain] != chain
        if len(chain) == 2:
            first, second = (b.extra["reads"].index(g) for g in chain)
            places |= {"before" if j < first else "between" if j < second else "after"
                       for j, g in enumerate(b.extra["reads"]) if g not in chain}  # fmt: skip
        assert interleave_round(b, OFFICIAL)[-1] == interleave_round(a, OFFICIAL)[-1]
    assert places == {"before", "between", "after"} and out_of_order > 0
