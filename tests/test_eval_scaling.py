"""The scaling harness end to end at tiny sizes with a tiny random model, and the baselines runner."""

import json

import pytest

from msa.data.bios import BiosConfig, BiosWorld
from msa.eval.scaling import (
    SCHEMA,
    ScalingConfig,
    format_size,
    held_out_questions,
    parse_size,
    people_for_sizes,
    router_recall,
    run_scaling,
)


@pytest.fixture(scope="module")
def bios_model():
    from msa import MSAConfig, MSAForCausalLM, ModelConfig
    from msa.tokenizer import train_tokenizer

    world = BiosWorld(BiosConfig(num_people=400, seed=0))
    tok = train_tokenizer(list(world.iter_documents(0, 400)), 600)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      msa=MSAConfig(top_k_docs=4, pooling_kernel_size=16))  # fmt: skip
    return MSAForCausalLM(cfg).init_weights(0).eval(), tok


def test_sizes_and_router_recall():
    assert parse_size("16K") == 16384 and parse_size("1M") == 1 << 20 and parse_size(2000) == 2000
    assert format_size(100 << 20) == "100M" and format_size(3000) == "3000"
    with pytest.raises(ValueError):
        parse_size("12Q")
    routing = {2: [(1, 0.9), (5, 0.3)], 3: [(7, 0.8), (1, 0.1)]}
    assert router_recall(routing, {1}) == (1.0, 1.0)
    assert router_recall(routing, {5, 7}) == (0.5, 1.0)
    assert router_recall(routing, {9}) == (0.0, 0.0)
    assert router_recall({}, {1}) == (None, None)


def test_people_for_sizes_is_minimal(bios_model):
    _, tok = bios_model
    plan = people_for_sizes(tok, [2048, 8192], world_seed=0, batch=16)
    for size, (n, tokens) in plan.items():
        counts = [len(tok.encode(f"<|im_start|>[{i}]. {t}[{i}]<|im_end|>", add_special_tokens=False))
                  for i, t in enumerate(BiosWorld(BiosConfig(n, 0)).iter_documents(0, n))]  # fmt: skip
        assert sum(counts) == tokens >= size > sum(counts[:-1])


def test_scaling_end_to_end(bios_model, tmp_path):
    model, tok = bios_model
    out = tmp_path / "results" / "scaling.json"
    cfg = ScalingConfig(work_dir=str(tmp_path / "work"), out=str(out), plot=str(tmp_path / "results" / "s.png"),
                        sizes=(2048, 8192), num_single=3, num_multi=2, max_rounds=2, max_new_tokens=6,
                        batch_size=2, ruler_contexts=(600,), ruler_tasks=("niah_single_1", "niah_multikey_2"),
                        ruler_samples=1, ruler_doc_tokens=128, wordings=("paraphrase",), wording_sizes=(8192,))  # fmt: skip
    res = run_scaling(cfg, model, tok)
    disk = json.loads(out.read_text())
    assert disk["schema"] == SCHEMA and disk["router_k"] == 4
    assert [e["label"] for e in disk["bios"]] == ["2K", "8K"]
    small, big = disk["bios"]
    assert small["num_people"] < big["num_people"] and big["memory_tokens"] >= 8192
    assert small["bank"]["documents"] == small["num_people"] and not small["bank"]["reused"]
    for entry in disk["bios"]:
        for section in ("single", "multi_interleave", "multi_no_interleave"):
            s = entry[section]
            for key in ("exact_match", "f1", "contains", "router_recall", "router_recall_any", "retrieval_recall"):
                assert 0.0 <= s[key]["mean"] <= 1.0 and s[key]["n"] == s["n"]
            assert s["latency_s"]["mean"] > 0
        assert "router_recall_first_hop" in entry["multi_interleave"]
    # with only a few documents per memory, top-4 routing at 2K covers a large share of the gold
    assert disk["questions"] == {"single": 3, "multi": 2, "drawn_from_people": small["num_people"],
                                 "question_seed": cfg.question_seed}  # fmt: skip
    (ruler,) = disk["ruler"]
    assert set(ruler["tasks"]) == {"niah_single_1", "niah_multikey_2"}
    assert 0.0 <= ruler["average"] <= 1.0
    recs = [json.loads(x) for x in out.with_suffix(".records.jsonl").read_text().splitlines()]
    assert {r["section"] for r in recs} >= {"bios/single", "bios/multi_interleave", "ruler/niah_single_1"}
    shared = [r for r in recs if r["section"].startswith("bios") and "_own" not in r["section"]]
    assert all(set(r["gold_ids"]) <= set(range(small["num_people"])) for r in shared)
    # the larger memory is also asked about its own people, and reworded (same people, other words)
    assert "single_own" not in small and {"single_own", "multi_interleave_own", "single_own_paraphrase"} <= set(big)
    own = {r["question"]: r for r in recs if r["section"] == "bios/single_own"}
    worded = [r for r in recs if r["section"] == "bios/single_own_paraphrase"]
    assert all(set(r["gold_ids"]) <= set(range(big["num_people"])) for r in own.values())
    assert [r["gold_ids"] for r in worded] == [r["gold_ids"] for r in own.values()]
    assert not {r["question"] for r in worded} & set(own)
    assert all(0.0 <= r["router_top1"] <= 1.0 for r in own.values())
    if res.get("bios") and cfg.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            pass
        else:
            assert (tmp_path / "results" / "s.png").stat().st_size > 1000
    # a second run reuses the banks (same documents, nothing re-encoded)
    again = run_scaling(ScalingConfig(**{**cfg.__dict__, "ruler_contexts": (), "num_multi": 0}), model, tok)
    assert all(e["bank"]["reused"] for e in again["bios"])
    assert again["bios"][0]["single"]["exact_match"] == small["single"]["exact_match"]
    # the larger memory alone asks the same questions (about the people of a 2K memory), same answers
    alone_out = tmp_path / "alone.json"
    alone = run_scaling(ScalingConfig(**{**cfg.__dict__, "sizes": (8192,), "question_pool": 2048, "ruler_contexts": (),
                                         "out": str(alone_out), "plot": None}), model, tok)  # fmt: skip
    assert alone["questions"]["drawn_from_people"] == small["num_people"]
    solo = [json.loads(x) for x in alone_out.with_suffix(".records.jsonl").read_text().splitlines()]
    both = [r for r in recs if r["section"].startswith("bios") and r["memory_tokens"] == big["memory_tokens"]]
    assert [(r["section"], r["question"], r["prediction"]) for r in solo] == [
        (r["section"], r["question"], r["prediction"]) for r in both
    ]


def test_baselines_runner(bios_model, tmp_path):
    from msa.eval.baselines import RagConfig, run_baselines

    model, tok = bios_model
    out = tmp_path / "rag.json"
    cfg = RagConfig(work_dir=str(tmp_path / "w"), out=str(out), sizes=(2048, 8192), num_single=2, num_multi=1,
                    ks=(1, 5), embedder="hashing", hashing_dim=1024, max_new_tokens=3, full_context_tokens=600,
                    batch_size=2)  # fmt: skip
    run_baselines(cfg, model, tok)
    res = json.loads(out.read_text())
    assert res["schema"] == "msa.eval.rag/1" and len(res["sizes"]) == 2
    for entry in res["sizes"]:
        assert set(entry["rag"]) == {"k1", "k5"}
        assert entry["rag"]["k5"]["single"]["retrieval_recall"]["mean"] >= entry["rag"]["k1"]["single"]["retrieval_recall"]["mean"]
        assert entry["full_context"]["single"]["n"] == 2
    recs = [json.loads(x) for x in out.with_suffix(".records.jsonl").read_text().splitlines()]
    assert all(r["prompt_tokens"] > 0 for r in recs)
    # the larger memory is also asked its own questions: the scaling run's *_own questions
    small, big = res["sizes"]
    assert "single_own" not in small["rag"]["k1"] and big["rag"]["k1"]["single_own"]["n"] == 2
    own = held_out_questions(cfg.world_seed, big["num_people"], 2, 1, cfg.question_seed)["single"]
    asked = [r["question"] for r in recs if r["section"] == "rag/k1/single_own"]
    assert asked == [q.text for q in own]


@pytest.mark.parametrize("choice", ["generated", "routed"])
def test_retrieved_counts_what_was_read_and_named_ids_only_for_generated(choice):
    from msa.engine.engine import Answer, RoundInfo
    from msa.eval.scaling import evaluate_questions

    rounds = [RoundInfo(requested=[7], retrieved=[3] if choice == "routed" else [7]),
              RoundInfo(requested=[9, 4], unknown=[4])]  # last round: names 9, reads nothing  # fmt: skip

    class Stub:
        doc_choice = choice

        def ask_batch(self, questions, **kw):
            return [Answer(q, "x", "x", rounds, {}) for q in questions]

    rec = evaluate_questions(Stub(), [{"question": "q?", "answers": ["y"], "gold_ids": [3, 9]}], True, 4, 8, 1)[0]
    if choice == "generated":
        assert rec["retrieved"] == [7, 9] and rec["retrieval_recall"] == 0.5
    else:
        assert rec["retrieved"] == [3] and rec["retrieval_recall"] == 0.5


def test_plot_against_baselines_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from msa.eval.scaling_plot import plot_against_baselines

    em = lambda v: {"exact_match": {"mean": v}}  # noqa: E731
    scaling = {"bios": [{"target_tokens": 2048, "label": "2K", "single": em(0.9), "multi_interleave": em(0.8)},
                        {"target_tokens": 8192, "label": "8K", "single_own": em(0.7), "multi_interleave_own": em(0.6)}]}
    rag = {"sizes": [{"target_tokens": 2048, "label": "2K", "rag": {"k1": {"single": em(0.5), "multi": em(0.1)}}},
                     {"target_tokens": 8192, "label": "8K", "rag": {"k1": {"single_own": em(0.4), "multi_own": em(0.0)}}}]}
    out = tmp_path / "p.png"
    assert plot_against_baselines(scaling, rag, out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
