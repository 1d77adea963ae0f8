"""Train -> export -> bank -> ask on the CPU: 5 steps of recipes/cpu_routing.py through `msa train`."""

import json
import logging
import shutil

import pytest
import torch
from cli_support import msa, write_jsonl
from safetensors.torch import load_file

from msa import MSAForCausalLM
from msa.data.bios import BiosConfig, BiosWorld

STEPS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return d


@pytest.fixture(scope="module")
def trained(run_dir):
    """Run `msa train cpu_routing` for 5 steps (checkpoint every 2 steps); returns (checkpoint dir, log)."""
    from msa.cli import main

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("msa.train").addHandler(handler)
    try:
        code = main(["train", "cpu_routing", f"schedule.phases.0.steps={STEPS}", "schedule.phases.0.warmup_steps=1",
                     f"checkpoint.dir={run_dir / 'ckpt'}", "checkpoint.every=2", f"data.tokenizer={run_dir / 'tok'}",
                     f"logging.metrics_file={run_dir / 'metrics.jsonl'}", "logging.every=2", "parallel.threads=1"])  # fmt: skip
    finally:
        logging.getLogger("msa.train").removeHandler(handler)
    assert code == 0
    return run_dir / "ckpt", records


def test_train_shows_progress_and_summary(trained, run_dir):
    _, log = trained
    steps = [m for m in log if m.startswith("step ")]
    assert [m.split()[1] for m in steps] == ["1/5", "2/5", "4/5", "5/5"]  # every 2, first and last
    assert all("loss" in m and "recall@1/layer1" in m and "eta" in m for m in steps)
    assert any(m.startswith(f"done: {STEPS} steps in") for m in log)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == STEPS


def test_every_checkpoint_is_a_model_directory(trained):
    ckpt, _ = trained
    steps = sorted(p.name for p in ckpt.glob("step_*"))
    assert steps == ["step_00000004", "step_00000005"]  # keep=2
    for name in steps:
        d = ckpt / name
        model = MSAForCausalLM.from_pretrained(d)
        trained_state = torch.load(d / "model.pt", weights_only=True)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, trained_state[k], rtol=0, atol=0, msg=k)
        assert (d / "tokenizer.json").is_file()


def test_export_latest_and_legacy_checkpoint(trained, tmp_path, capsys):
    ckpt, _ = trained
    code, out, err = msa(capsys, "export", ckpt, tmp_path / "model")
    assert code == 0, err
    assert "step_00000005" in out or str(tmp_path / "model") in out
    exported = load_file(tmp_path / "model" / "model.safetensors")
    # a checkpoint from before step directories held config.json: the config comes from meta.json
    legacy = tmp_path / "legacy"
    shutil.copytree(ckpt / "step_00000005", legacy)
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        (legacy / f).unlink()
    code, _, err = msa(capsys, "bank", "create", tmp_path / "x.bank", "--model", legacy)
    assert code == 2 and "msa export" in err
    code, _, err = msa(capsys, "export", legacy, tmp_path / "model2", "--tokenizer", ckpt.parent / "tok")
    assert code == 0, err
    again = load_file(tmp_path / "model2" / "model.safetensors")
    assert exported.keys() == again.keys() and all(torch.equal(exported[k], again[k]) for k in exported)
    cfg1 = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg1 == json.loads((tmp_path / "model2" / "config.json").read_text())
    assert cfg1["msa_config"]["query_reduce_method"] == "mean"  # the recipe's, not a default
    code, _, err = msa(capsys, "export", tmp_path / "nothing-here", tmp_path / "m3")
    assert code == 2 and err.startswith("msa: error:") and len(err.splitlines()) == 1


def test_bank_from_exported_model_answers(trained, tmp_path, capsys):
    ckpt, _ = trained
    assert msa(capsys, "export", ckpt, tmp_path / "model")[0] == 0
    world = BiosWorld(BiosConfig(num_people=64, seed=0))
    docs = write_jsonl(tmp_path / "people.jsonl",
                       [{"id": f"person-{i}", "text": t} for i, t in enumerate(world.iter_documents(0, 8))])  # fmt: skip
    bank = tmp_path / "people.bank"
    for argv in (["bank", "create", bank, "--model", tmp_path / "model"], ["bank", "add", bank, docs]):
        code, out, err = msa(capsys, *argv)
        assert code == 0, err
    assert "added 8, unchanged 0" in out
    code, out, err = msa(capsys, "ask", bank, "Where was the first person born?", "--json", "--max-new-tokens", "4",
                         "--no-interleave", "--routing")  # fmt: skip
    assert code == 0, err
    routed = [d for sel in json.loads(out)["rounds"][0]["routing"].values() for d, _ in sel]
    assert len(routed) == 4 and all(isinstance(i, str) and i.startswith("person-") for i in routed)  # top_k_docs=4
    # the training checkpoint directory itself also works as the model (its newest step)
    code, _, err = msa(capsys, "bank", "create", tmp_path / "b2.bank", "--model", ckpt)
    assert code == 0, err


def test_checkpoint_of_a_trainer_given_a_tokenizer_object(tmp_path):
    """A Trainer handed a tokenizer (not a directory) saves that tokenizer beside the weights."""
    from msa.tokenizer import load_tokenizer, train_tokenizer
    from msa.train import CheckpointConfig, DataConfig, LoggingConfig, ParallelConfig, Phase, ScheduleConfig, TrainConfig
    from msa.train import ModelSpec, tiny_model_config
    from msa.train.loop import Trainer

    world = BiosConfig(num_people=16, seed=0)
    tok = train_tokenizer(BiosWorld(world).iter_documents(0, 16), 400)
    cfg = TrainConfig(
        model=ModelSpec(config=tiny_model_config(400)), data=DataConfig(world=world, target_format="ids_only",
                                                                       micro_batch_size=2, max_doc_tokens=32),
        schedule=ScheduleConfig([Phase("warmup", 1, 1e-3, 0.1, 1.0)]), logging=LoggingConfig(every=0),
        checkpoint=CheckpointConfig(dir=str(tmp_path / "ck")), parallel=ParallelConfig(device="cpu"),
    )  # fmt: skip
    Trainer(cfg, tokenizer=tok).fit()
    step = tmp_path / "ck" / "step_00000001"
    text = next(BiosWorld(world).iter_documents(0, 1))
    assert load_tokenizer(step).encode(text) == tok.encode(text)
    assert MSAForCausalLM.from_pretrained(step).config.vocab_size == 400
