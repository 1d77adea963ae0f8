"""Engine and Memory Interleave protocol, driven by a scripted model over a real tiny model's cache."""

import pytest
import torch

from msa import EnginePolicy, MSAConfig, MSAForCausalLM, ModelConfig
from msa.engine import Engine, InMemoryView
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

    def resume(self, *a, **k):  # a later round continuing the last one: a prefill too
        self.prefills += 1
        out = self.model.resume(*a, **k)
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


def _route_alone(tok, model, view, prompt, text):
    """The engine's routing of one request, by hand: the text as a round-1 question, last router layer."""
    ids, dids = encode_segments(tok, query_segments(prompt, text))
    ids, q = torch.tensor([ids]), torch.tensor([dids]) == QUERY
    r = model.prefill(ids, torch.ones_like(ids), q, memory=view, prefix=view.prefix, last_only=True)
    r = r.routings[max(model.router_layers)]
    return [int(view.slot_ids[d]) for d in r.docs[0][r.scores[0].argsort(descending=True)] if d >= 0]


def test_routed_doc_choice_routes_each_request_and_reads_its_best_unread_document(setup):
    """doc_choice="routed": each request the model writes is routed on its own (one batched prefill
    for the round) and its best document not read before is read; ids are requests like any other."""
    tok, model, view = setup

    class Counting(Scripted):  # the requests' routing runs the real model: it generates nothing
        def prefill(self, ids, *a, **k):
            if ids.shape[0] > 1 or "born" not in tok.decode(ids[0]):
                self.routings += 1
                return self.model.prefill(ids, *a, **k)
            return super().prefill(ids, *a, **k)

    script = "[Person 7]<|object_ref_end|>[Person 7][4]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    scripted = Counting(model, tok.encode(script, add_special_tokens=False))
    scripted.routings = 0
    engine = Engine(scripted, tok, view, device="cpu", doc_choice="routed")
    ans = engine.ask("Where was Person 7 born?")
    alone = _route_alone(tok, model, view, engine.prompt, "Person 7")
    assert ans.rounds[0].requests == ["Person 7"] and ans.rounds[0].requested == []
    assert ans.rounds[0].retrieved == alone[:1]
    # round 2: the same request reads its next best document; "4" is routed like any other request
    four = _route_alone(tok, model, view, engine.prompt, "4")
    assert ans.rounds[1].requests == ["Person 7", "4"] and ans.rounds[1].requested == [4]
    second = alone[1]
    assert ans.rounds[1].retrieved == [second, next(d for d in four if d not in (alone[0], second))]
    assert ans.text == "Paris" and scripted.routings == 2 and "choose" in ans.timings
    read = sum(ans.doc_ids, [])
    assert len(read) == len(set(read)) == 3


class _Oracle:
    """A user strategy: always reads document 5 (the engine takes any object with choose())."""

    name = "oracle"

    def choose(self, ctx, requests, seen):
        from msa.engine.choice import Choice

        return [Choice(read=[5] if 5 not in s else []) for s in seen]


def test_engine_takes_a_strategy_object(setup):
    tok, model, view = setup
    script = "[x]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    scripted = Scripted(model, tok.encode(script, add_special_tokens=False))
    ans = Engine(scripted, tok, view, device="cpu", doc_choice=_Oracle()).ask("q?")
    assert ans.rounds[0].retrieved == [5] and ans.rounds[0].requests == ["x"] and DOCS[5] in ans.transcript
    with pytest.raises(TypeError, match="choose"):
        Engine(model, tok, view, doc_choice=object())


def test_the_engine_knows_no_corpus():
    """The answer path holds no corpus-specific code: the engine package imports no corpus module
    and no strategy matches strings of documents; the defaults are general protocols."""
    import ast
    import pathlib

    import msa.engine

    root = pathlib.Path(msa.engine.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if m.startswith(("msa.data", "msa.eval", "msa.parallel", "difflib"))], path
    assert EnginePolicy().doc_choice == "generated"
    from msa.engine import DOC_CHOICES

    assert set(DOC_CHOICES) == {"generated", "routed"}
    from msa.config import DOC_CHOICES as VALID  # what configs accept (config sits below the engine)

    assert set(VALID) == set(DOC_CHOICES)


def test_stop_rules_are_token_ids_compiled_once(setup):
    from msa.engine.stops import StopRules, ends_with

    tok, model, view = setup
    rules = Engine(model, tok, view).stops
    assert rules == StopRules.compile(tok, Engine(model, tok, view).prompt)
    assert rules.round_end == (tok.convert_tokens_to_ids("<|object_ref_end|>"),)
    assert rules.end_of_retrieval == tuple(tok.encode("<End-of-Retrieve>", add_special_tokens=False))
    assert tok.convert_tokens_to_ids("<|im_end|>") in rules.eos
    assert ends_with([9, *rules.end_of_retrieval], rules.end_of_retrieval)
    assert not ends_with(list(rules.end_of_retrieval[:-1]), rules.end_of_retrieval)


def test_on_token_streams_every_generated_token(setup):
    tok, model, view = setup
    script = "[3]<|object_ref_end|><End-of-Retrieve>The answer to the question is: Paris<|im_end|>"
    scripted = Scripted(model, tok.encode(script, add_special_tokens=False))
    seen = []
    ans = Engine(scripted, tok, view, device="cpu").ask("q?", on_token=lambda i, t: seen.append((i, t)))
    assert {i for i, _ in seen} == {0} and ans.text == "Paris"
    streamed = "".join(t for _, t in seen)
    assert streamed.startswith("[3]<|object_ref_end|>") and streamed.endswith("Paris<|im_end|>")


def test_doc_choice_default_comes_from_the_config_and_is_checked(setup):
    tok, model, view = setup
    assert Engine(model, tok, view).doc_choice == "generated"
    with pytest.raises(ValueError, match="doc_choice"):
        Engine(model, tok, view, doc_choice="oracle")
    assert Engine(model, tok, view, doc_choice="named").doc_choice == "routed"  # saved by msa-bios-tiny
    EnginePolicy(doc_choice="named").validate()
    cfg = EnginePolicy(doc_choice="routed")
    cfg.validate()
    with pytest.raises(ValueError, match="doc_choice"):
        EnginePolicy(doc_choice="best").validate()
