"""recipes/msa4b_cpt.py: the paper's two phases and 8K -> 64K curriculum, and a CPU smoke run of it at a
tiny shape (a transformers-saved Qwen3 base, JSONL samples): steps of both phases, token limit applied,
checkpoint written; a missing base is one clear error."""

import json

import pytest

from msa.train import load_recipe, main
from msa.train.data import Document, TrainSample, sample_to_json

pytest.importorskip("transformers")


def test_the_recipe_holds_the_papers_schedule():
    cfg = load_recipe("msa4b_cpt")
    warm, main_phase = cfg.schedule.phases
    assert (warm.lr, warm.lm_weight, warm.aux_weight) == (1e-4, 0.1, 1.0)
    assert (main_phase.lr, main_phase.lm_weight, main_phase.aux_weight) == (6e-6, 1.0, 0.1)
    assert [s.max_tokens for s in cfg.data.curriculum] == [8192, 65536]
    assert cfg.model.config.num_hidden_layers == 36 and cfg.model.config.router_layers == tuple(range(18, 36))
    assert cfg.speed.path == "fast" and cfg.speed.checkpoint == "block" and cfg.model.dtype == "float32"


def test_a_tiny_smoke_run_of_the_recipe(tmp_path):
    from test_from_base_qwen3 import DOCS, qwen_dir

    base = tmp_path / "base"
    qwen_dir(base, tied=True)
    data = tmp_path / "train.jsonl"
    with data.open("w") as f:
        for j in range(8):
            s = TrainSample(question=f"Where was person {j} born?", memory=[Document(i, DOCS[i]) for i in range(8)],
                            positives=[j], answer=f"city{j}")  # fmt: skip
            f.write(json.dumps(sample_to_json(s)) + "\n")
    ck = tmp_path / "ck"
    hist = main("msa4b_cpt", [
        f"model.init={base}", f"data.tokenizer={base}", f"data.path={data}", "parallel.device=cpu", "speed.compile=false",
        "model.config.msa.pooling_kernel_size=8", "data.micro_batch_size=2", "data.grad_accum=1",
        "schedule.phases.0.steps=2", "schedule.phases.0.warmup_steps=1", "schedule.phases.1.steps=1",
        "data.curriculum.0.steps=2", "data.curriculum.0.max_tokens=300", f"checkpoint.dir={ck}", "checkpoint.every=0",
        "logging.metrics_file=", "logging.every=1",
    ])  # fmt: skip
    assert [r["phase"] for r in hist] == ["warmup", "warmup", "main"]
    assert [r["lr"] for r in hist] == [1e-4, 1e-4, 6e-6]
    assert all(r["tokens"] <= 2 * 300 for r in hist[:2]) and hist[2]["tokens"] > 2 * 300  # 8K -> 64K, in small
    assert all(r["loss"] == r["loss"] for r in hist)  # finite, not NaN
    assert any(p.name.startswith("step_") for p in ck.iterdir())


def test_a_missing_base_is_one_clear_error(tmp_path, capsys):
    from msa.cli import main as cli

    code = cli(["train", "msa4b_cpt", f"model.init={tmp_path / 'nope'}", f"data.tokenizer={tmp_path / 'nope'}",
                "parallel.device=cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("msa: error:") and "tokenizer.json" in err and "Traceback" not in err


def test_max_tokens_leaves_distractors_out_last_first_and_keeps_positives():
    from test_from_base_qwen3 import DOCS

    from msa.tokenizer import train_tokenizer
    from msa.train.collator import Collator
    from msa.train.targets import answer_only

    tok = train_tokenizer(DOCS * 3, 320)
    col = Collator(tok, 64, answer_only)
    s = TrainSample(question="Where was person 1 born?", memory=[Document(i, DOCS[i]) for i in range(6)], positives=[5, 1],
                    answer="city1")  # fmt: skip
    full = col.encode(s)
    doc_len = [full.doc_ids.count(i) for i in range(1, 7)]
    cut = col.encode(s, max_tokens=len(full.input_ids) - doc_len[4])  # room for all but one document
    assert cut.aux_labels == [0, 1, 0, 0, 1]  # document 4 (the last distractor) left out, positives kept
    assert len(cut.input_ids) == len(full.input_ids) - doc_len[4] and max(cut.doc_ids) == 5
    tight = col.encode(s, max_tokens=1)
    assert tight.aux_labels == [1, 1]  # only the positives are left


def test_every_recipe_loads_and_validates():
    """Every file of recipes/ builds a valid TrainConfig (a typo in a recipe fails here, not on a GPU lease)."""
    from pathlib import Path

    from msa.train import load_recipe

    names = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes").glob("*.py") if not p.stem.startswith("_"))
    assert "bios_small_d" in names
    for name in names:
        cfg = load_recipe(name)
        cfg.validate()
        assert cfg.schedule.total_steps > 0, name
