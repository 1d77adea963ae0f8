"""Engine and Memory Interleave protocol, driven by a scripted model over a real tiny model's cache."""

import pytest
import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.engine import Engine, InMemoryView
from msa.engine.engine import LOOKUP_K, snap_name
from msa.prompt import QUERY, encode_segments, query_segments
from msa.tokenizer import train_tokenizer

DOCS = [f"Person {i} was born in city{i} and works at firm{i}." for i in range(12)]


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(DOCS * 3 + ["The answer to the question is: Paris"], 400)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      msa=MSAConfig(top_k_docs=3, pooling_kernel_size=8))  # fmt: skip
    model = MSAForCausalLM(cfg).init_weights(0).eval()
    return tok, model, InMemoryView(model, tok, DOCS)


class Scripted:
    """Delegates to the real model (cache, routing) but emits a fixed token script, one per call."""

    def __init__(self, model, script):
        self.model, self.script, self.pos, self.prefills = model, script, 0, 0

    def _force(self, logits):
        out = torch.full_like(logits, -1e9)
        out[..., self.script[min(self.pos, len(self.script) - 1)]] = 0
        self.pos += 1
        return out

    def prefill(self, *a, **k):
        self.prefills += 1
        out = self.model.prefill(*a, **k)
        out.logits = self._force(out.logits)
        return out

    def decode(self, *a, **k):
        return self._force(self.model.decode(*a, **k))

    def __getattr__(self, name):
        return getattr(self.model, name)

    def to(self, device):
        return self

    def eval(self):
        return self


def engine_with(setup, text):
    tok, model, view = setup
    scripted = Scripted(model, tok.encode(text, add_special_tokens=False))
    return Engine(scripted, tok, view, device="cpu"), scripted


def test_interleave_rounds_dedup_unknown_and_answer(setup):
    tok, model, view = setup
    script = "[3]<|object_ref_end|>[7][3][999]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    engine, scripted = engine_with(setup, script)
    ans = engine.ask("Where was person 7 born?", return_routing=True)
    assert [r.retrieved for r in ans.rounds] == [[3], [7], []]
    assert ans.rounds[1].requested == [7, 3, 999] and ans.rounds[1].unknown == [999]
    assert ans.text == "Paris"
    assert scripted.prefills == 3  # one prefill (fresh routing) per round
    assert ans.transcript.count(DOCS[3]) == 1 and ans.transcript.count(DOCS[7]) == 1
    assert "The user's question is: Where was person 7 born?" in ans.transcript
    for info in ans.rounds:
        assert set(info.routing) == set(model.router_layers)
        assert all(len(v) == 3 for v in info.routing.values())
    assert {"route", "fetch", "prefill", "decode"} <= set(ans.timings)
    # each round's own timings; over the rounds they add up to the answer's
    assert all(info.timings["prefill"] > 0 and info.timings["decode"] > 0 for info in ans.rounds)
    for stage, total in ans.timings.items():
        assert sum(info.timings.get(stage, 0.0) for info in ans.rounds) == pytest.approx(total)


def test_round_limit_forces_answer(setup):
    engine, scripted = engine_with(setup, "[3]<|object_ref_end|>The answer to the question is: Paris<|im_end|>")
    ans = engine.ask("q?", max_rounds=1)
    assert ans.text == "Paris" and scripted.prefills == 1
    assert ans.rounds[0].requested == [3] and ans.rounds[0].retrieved == []
    assert "<End-of-Retrieve>" in ans.transcript


def test_without_interleave_single_round(setup):
    engine, scripted = engine_with(setup, "[5]<|object_ref_end|>The answer to the question is: x<|im_end|>")
    ans = engine.ask("q?", interleave=False)
    assert scripted.prefills == 1 and ans.text == "x" and DOCS[5] not in ans.transcript


def test_token_budget_bounds_generation(setup):
    engine, _ = engine_with(setup, "[1" + "1" * 500)
    ans = engine.ask("q?", max_new_tokens=10, max_rounds=2)
    assert len(ans.rounds) == 1


def test_bad_questions(setup):
    engine, _ = engine_with(setup, "x")
    with pytest.raises(ValueError, match="non-empty"):
        engine.ask("   ")
    with pytest.raises(TypeError):
        engine.ask_batch("a question")
    with pytest.raises(ValueError, match="max_rounds"):
        engine.ask("q", max_rounds=0)


def test_batch_equals_single(setup):
    tok, model, view = setup
    engine = Engine(model, tok, view)
    qs = ["Where was person 3 born?", "Who works at firm5?"]
    batch = engine.ask_batch(qs, max_new_tokens=6, return_routing=True)
    for q, a in zip(qs, batch):
        single = engine.ask(q, max_new_tokens=6, return_routing=True)
        assert [d for d, _ in single.rounds[0].routing[1]] == [d for d, _ in a.rounds[0].routing[1]]
        assert single.transcript == a.transcript


def test_routed_doc_choice_reads_the_routers_best_unread_documents(setup):
    """doc_choice="routed": the model's ids only say how many documents a round reads; which ones is
    the router's ranking of that round (last router layer, best first), never a document read before."""
    tok, model, view = setup
    script = "[999]<|object_ref_end|>[5][6]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    scripted = Scripted(model, tok.encode(script, add_special_tokens=False))
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="routed")
    ans = engine.ask("Where was person 7 born?", return_routing=True)
    last = max(model.router_layers)

    def ranked(info):
        return [d for d, _ in sorted(info.routing[last], key=lambda x: -x[1])]

    first = ranked(ans.rounds[0])
    assert ans.rounds[0].requested == [999] and ans.rounds[0].unknown == [999]
    assert ans.rounds[0].retrieved == first[:1]
    second = [d for d in ranked(ans.rounds[1]) if d not in first[:1]]
    assert ans.rounds[1].requested == [5, 6] and ans.rounds[1].retrieved == second[:2]
    assert ans.text == "Paris" and scripted.prefills == 3
    read = sum(ans.doc_ids, [])
    assert len(read) == len(set(read)) == 3


def test_doc_choice_default_comes_from_the_config_and_is_checked(setup):
    tok, model, view = setup
    assert Engine(model, tok, view).doc_choice == "generated"
    with pytest.raises(ValueError, match="doc_choice"):
        Engine(model, tok, view, doc_choice="oracle")
    cfg = MSAConfig(doc_choice="routed")
    cfg.validate()
    with pytest.raises(ValueError, match="doc_choice"):
        MSAConfig(doc_choice="best").validate()


def test_named_doc_choice_reads_the_best_unread_document_for_each_name(setup):
    """doc_choice="named": a written name is routed on its own as ``PromptFormat.lookup`` (one batched
    prefill) and its best unread document is read; a numeric request reads the round's routing."""
    tok, model, view = setup

    class Lookups(Scripted):  # lookups run the real model: they generate nothing
        def prefill(self, ids, *a, **k):
            if "Who is" in tok.decode(ids[0]):
                self.lookups += 1
                return self.model.prefill(ids, *a, **k)
            return super().prefill(ids, *a, **k)

    script = "[Person 7]<|object_ref_end|>[Person 7][4]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    scripted = Lookups(model, tok.encode(script, add_special_tokens=False))
    scripted.lookups = 0
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="named", name_match=False, lookup_k=3)
    ans = engine.ask("Where was Person 7 born?", return_routing=True)
    last = max(model.router_layers)

    def lookup(name, top_k=None):  # the engine's lookup, by hand
        ids, dids = encode_segments(tok, query_segments(engine.prompt, engine.prompt.lookup.format(request=name)))
        ids, q = torch.tensor([ids]), torch.tensor([dids]) == QUERY
        r = model.prefill(ids, torch.ones_like(ids), q, memory=view.access(), prefix=view.prefix, last_only=True,
                          top_k=top_k).routings[last]  # fmt: skip
        return [int(view.slot_ids()[d]) for d in r.docs[0][r.scores[0].argsort(descending=True)] if d >= 0]

    ranked = lookup("Person 7")
    assert ans.rounds[0].named == ["Person 7"] and ans.rounds[0].requested == []
    assert ans.rounds[0].retrieved == ranked[:1]
    # round 2: the same name again reads its next best document; [4] reads the round's routing
    assert ans.rounds[1].named == ["Person 7"] and ans.rounds[1].requested == [4]
    first = ranked[1]
    routed = [d for d, _ in sorted(ans.rounds[1].routing[last], key=lambda x: -x[1])]
    assert ans.rounds[1].retrieved == [first, next(d for d in routed if d not in (ranked[0], first))]
    assert ans.text == "Paris" and scripted.lookups == 2 and "lookup" in ans.timings
    read = sum(ans.doc_ids, [])
    assert len(read) == len(set(read)) == 3

    # name_match (default): the lookup's top-k is re-ordered by mention of the name before the pick
    scripted = Lookups(model, tok.encode(script, add_special_tokens=False))
    scripted.lookups = 0
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="named", lookup_k=3)
    engine._mentioning_first = lambda name, ranked: ranked[::-1]
    assert engine.ask("Where was Person 7 born?").rounds[0].retrieved == ranked[-1:]

    # lookup_k: the lookup's candidates are the router's top lookup_k (here 8 of 12, the model's top_k is 3)
    wide = lookup("Person 7", top_k=8)
    assert len(wide) == 8 and wide[:3] == ranked
    scripted = Lookups(model, tok.encode(script, add_special_tokens=False))
    scripted.lookups = 0
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="named", lookup_k=8)
    engine._mentioning_first = lambda name, ranked: ranked[::-1]
    assert engine.ask("Where was Person 7 born?").rounds[0].retrieved == wide[-1:]
    # the default (LOOKUP_K = 256) is more than this memory holds: every document is a candidate
    scripted = Lookups(model, tok.encode(script, add_special_tokens=False))
    scripted.lookups = 0
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="named")
    engine._mentioning_first = lambda name, ranked: ranked[::-1]
    assert engine.lookup_k == LOOKUP_K > len(DOCS)
    assert engine.ask("Where was Person 7 born?").rounds[0].retrieved == lookup("Person 7", top_k=len(DOCS))[-1:]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="lookup_k"):
            Engine(model, tok, view, device="cpu", doc_choice="named", lookup_k=bad)


def test_snap_name_replaces_a_name_the_model_could_not_have_copied():
    question = "In which field did Dareus Drenus earn a degree?"
    assert snap_name("Daleus Drenus", question) == "Dareus Drenus"
    assert snap_name("Dareus Drenus", question) == "Dareus Drenus"  # present: kept
    assert snap_name("Dareus", question + " Dareus's mentor") == "Dareus"
    assert snap_name("Marovys Holmore", question) == "Marovys Holmore"  # nothing alike: kept
    # the earliest of equally similar runs; the documents read count as seen text
    assert snap_name("Ann Bx", "Ann Bz and Ann By") == "Ann Bz"
    # only runs capitalised like the name: "Fenoved earned" is closer, but not a name
    bio = "Fenoved Brackova was born in Trefield. Fenoved earned a degree. His father was Aloan Rennstrom."
    assert snap_name("Fenoved Rennster", bio) == "Aloan Rennstrom"
    assert snap_name("Aloan Rennstrom was", bio) == "Aloan Rennstrom"  # copied a word too far
    assert snap_name("the Alon Rennstrom", bio) == "Aloan Rennstrom"
    assert snap_name("Anerele Sarnsen", question + "\nHer mentor was Anerelle Sarnsen.") == "Anerelle Sarnsen"


def test_engine_snaps_miscopied_names_before_the_lookup(setup):
    tok, model, view = setup
    script = "[Persn 7]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    runs = {}
    for snap in (True, False):
        scripted = Scripted(model, tok.encode(script, add_special_tokens=False))
        engine = Engine(scripted, tok, view, device="cpu", doc_choice="named", lookup_k=len(DOCS), snap_names=snap)
        runs[snap] = engine.ask("Where was Person 7 born?").rounds[0]
    assert runs[True].snapped == {"Persn 7": "Person 7"} and runs[True].named == ["Person 7"]
    assert runs[False].snapped == {} and runs[False].named == ["Persn 7"]
    # snapped, the lookup is about the person of the question: name_match (all 12 documents are candidates)
    # reads the one document naming them
    assert runs[True].retrieved == [7]


def test_name_match_puts_documents_that_mention_the_name_first(setup):
    tok, model, view = setup
    engine = Engine(model, tok, view, device="cpu", doc_choice="named")
    assert engine._mentioning_first("Person 7", [3, 7, 5]) == [7, 3, 5]
    # "firm1" is in documents 1, 10 and 11; document 1 names it earliest; ties keep the router's order
    assert engine._mentioning_first("firm1", [11, 2, 10, 1]) == [1, 11, 10, 2]
