"""Portable checkpoints: packed under the size limits, exact weights, compact Adam moments, resumable."""

import json
import os
import shutil

import pytest
import torch

from msa.train.portable import pack_checkpoint, unpack_checkpoint
from msa.train.loop import Trainer

from test_train_loop import config, tok_dir  # noqa: F401  (the module fixture)


def test_pack_unpack_resumes_close_to_the_exact_resume(tok_dir, tmp_path):  # noqa: F811
    ck = str(tmp_path / "ck")
    Trainer(config(tok_dir, ckpt=ck, every=2)).fit(until=4)
    shutil.copytree(ck, tmp_path / "ck_exact")
    exact = [r["loss"] for r in Trainer(config(tok_dir, ckpt=str(tmp_path / "ck_exact"), every=0)).fit()]
    manifest = pack_checkpoint(ck, tmp_path / "packed", part_bytes=64 << 10)
    assert manifest["step"] == 4 and len(manifest["model"]) > 1  # split into parts
    assert all(os.path.getsize(tmp_path / "packed" / p["file"]) <= 64 << 10 for p in manifest["model"] + manifest["optim"])
    step_dir = os.path.join(ck, "step_00000004")
    packed_bytes = sum(p["bytes"] for p in manifest["optim"])
    assert packed_bytes < 0.45 * os.path.getsize(os.path.join(step_dir, "optim.pt"))
    fresh = tmp_path / "fresh"
    unpack_checkpoint(tmp_path / "packed", fresh)
    a = torch.load(os.path.join(step_dir, "model.pt"), weights_only=False)
    b = torch.load(fresh / "step_00000004" / "model.pt", weights_only=False)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the weights are bit-exact
    oa = torch.load(os.path.join(step_dir, "optim.pt"), weights_only=False)["state"]
    ob = torch.load(fresh / "step_00000004" / "optim.pt", weights_only=False)["state"]
    for i, s in oa.items():
        m, v = s["exp_avg"], s["exp_avg_sq"]
        assert ob[i]["exp_avg"].dtype == m.dtype and ob[i]["exp_avg"].shape == m.shape
        assert (ob[i]["exp_avg"] - m).abs().max() <= m.abs().max() / 127 + 1e-12
        assert torch.allclose(ob[i]["exp_avg_sq"], v, rtol=2**-8, atol=0)
    resumed = Trainer(config(tok_dir, ckpt=str(fresh), every=0))
    assert resumed.state.step == 4 and resumed.state.data_position == 8
    rest = [r["loss"] for r in resumed.fit()]
    assert rest == pytest.approx(exact, rel=1e-3)


def test_unpack_refuses_a_damaged_part(tok_dir, tmp_path):  # noqa: F811
    ck = str(tmp_path / "ck")
    Trainer(config(tok_dir, steps=2, ckpt=ck, every=2)).fit(until=2)
    manifest = pack_checkpoint(ck, tmp_path / "packed")
    part = tmp_path / "packed" / manifest["optim"][0]["file"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ValueError, match="damaged"):
        unpack_checkpoint(tmp_path / "packed", tmp_path / "fresh")
    with pytest.raises(ValueError, match="no complete training checkpoint"):
        pack_checkpoint(tmp_path / "nothing", tmp_path / "p2")
    assert json.loads((tmp_path / "packed" / "manifest.json").read_text())["schema"] == "msa.train.portable/2"


def test_pack_is_four_files_and_a_schema_1_pack_without_rng_files_still_resumes(tok_dir, tmp_path, caplog):  # noqa: F811
    """The RNG states travel inside the optimizer part (the device machines return at most 8 files). An
    older pack (schema 1: RNG states as files of their own) whose RNG file was left behind unpacks with
    a warning and resumes at its step."""
    import io

    from msa.train import portable

    ck = str(tmp_path / "ck")
    Trainer(config(tok_dir, steps=4, ckpt=ck, every=2)).fit(until=2)
    manifest = pack_checkpoint(ck, tmp_path / "packed")
    assert sorted(os.listdir(tmp_path / "packed")) == ["manifest.json", "meta.json", "model.pt.000", "optim.pt.000"]
    assert manifest["rng"] == ["rng_rank0.pt"]
    unpack_checkpoint(tmp_path / "packed", tmp_path / "fresh")
    rng = open(os.path.join(ck, "step_00000002", "rng_rank0.pt"), "rb").read()
    assert (tmp_path / "fresh" / "step_00000002" / "rng_rank0.pt").read_bytes() == rng
    # the same checkpoint as a schema-1 pack, its RNG file lost on the way
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "packed", old)
    blob = torch.load(io.BytesIO(portable._read_parts(old, manifest["optim"])), weights_only=False)
    for p in manifest["optim"]:
        os.remove(old / p["file"])
    manifest["optim"] = portable._write_parts(portable._torch_bytes(blob["optim"]), old, "optim.pt", 16 << 20)
    manifest["schema"] = "msa.train.portable/1"
    (old / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        unpack_checkpoint(old, tmp_path / "fresh_old")
        resumed = Trainer(config(tok_dir, steps=4, ckpt=str(tmp_path / "fresh_old"), every=0))
    assert "lacks RNG state files ['rng_rank0.pt']" in caplog.text and "fresh random numbers" in caplog.text
    assert resumed.state.step == 2 and resumed.fit()[0]["step"] == 3


def test_cli_packs_and_unpacks(tok_dir, tmp_path, capsys):  # noqa: F811
    from msa.cli import main

    ck = str(tmp_path / "ck")
    Trainer(config(tok_dir, steps=2, ckpt=ck, every=2)).fit(until=2)
    assert main(["checkpoint", "pack", ck, str(tmp_path / "p"), "--part-mb", "0.05"]) == 0
    assert "packed step 2" in capsys.readouterr().out
    assert main(["checkpoint", "unpack", str(tmp_path / "p"), str(tmp_path / "c2")]) == 0
    assert (tmp_path / "c2" / "latest").read_text() == "step_00000002"
    assert main(["checkpoint", "pack", ck, str(tmp_path / "p"), "--part-mb", "0"]) == 2
    assert "--part-mb must be > 0" in capsys.readouterr().err


def test_a_lease_exports_a_model_that_loads_with_its_tokenizer(tok_dir, tmp_path):  # noqa: F811
    """bench/train_shipped.save_model (what bench/train_leases.py --export writes): weights and the
    training tokenizer, so the directory loads as a model by itself."""
    import sys
    from pathlib import Path

    from msa.model import MSAForCausalLM
    from msa.tokenizer import load_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from train_shipped import save_model

    trainer = Trainer(config(tok_dir, steps=2))
    trainer.fit(until=1)
    save_model(trainer, tmp_path / "model")
    model = MSAForCausalLM.from_pretrained(tmp_path / "model")
    tok = load_tokenizer(tmp_path / "model")
    assert model.config.vocab_size == len(tok) and tok.encode("Where was") == trainer.tokenizer.encode("Where was")


def test_a_pack_names_its_recipe_and_a_lease_refuses_another_recipes_pack(tok_dir, tmp_path):  # noqa: F811
    import sys
    from pathlib import Path

    ck = str(tmp_path / "ck")
    Trainer(config(tok_dir, steps=2, ckpt=ck, every=2)).fit(until=2)
    assert pack_checkpoint(ck, tmp_path / "p", label="bios_small_c")["label"] == "bios_small_c"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from train_leases import main

    with pytest.raises(SystemExit, match="a checkpoint of recipe 'bios_small_c', not 'bios_small_d'"):
        main(["--recipe", "bios_small_d", "--minutes", "0.01", "--packed-in", str(tmp_path / "p"),
              "--ckpt", str(tmp_path / "lease")])  # fmt: skip
    assert not (tmp_path / "lease").exists()  # refused before anything was unpacked
