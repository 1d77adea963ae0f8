"""The `msa` command end to end on a tiny checkpoint directory: every bank command, ids as given."""

import json
import re
import shutil

import pytest
import torch
from cli_support import DOCS, make_checkpoint, msa, write_jsonl

from msa import MSAForCausalLM


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def ids_and_texts(capsys, bank) -> list:
    code, out, err = msa(capsys, "bank", "export", bank)
    assert code == 0, err
    return [(r["id"], r["text"]) for r in map(json.loads, out.splitlines())]


def test_bank_lifecycle(tmp_path, checkpoint, capsys):
    bank = tmp_path / "bank"
    code, out, _ = msa(capsys, "bank", "create", bank, "--model", checkpoint)
    assert code == 0 and str(checkpoint.resolve()) in out
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(DOCS)])
    assert msa(capsys, "bank", "add", bank, src)[1].strip() == "added 6, unchanged 0"
    assert msa(capsys, "bank", "add", bank, src)[1].strip() == "added 0, unchanged 6"  # a re-run adds nothing
    txt = tmp_path / "more.txt"
    txt.write_text("First extra paragraph.\n\nSecond extra\nparagraph.\n")
    assert msa(capsys, "bank", "add", bank, txt)[1].strip() == "added 2, unchanged 0"
    assert msa(capsys, "bank", "add", bank, txt)[1].strip() == "added 0, unchanged 2"  # id-less: by content
    code, out, _ = msa(capsys, "bank", "stats", bank, "--json")
    stats = json.loads(out)
    assert stats["documents"] == 8 and stats["chunks"] > 0 and stats["bytes_routing"] > 0 and stats["bytes_content"] > 0
    assert stats["model"] == str(checkpoint.resolve())
    assert f"model: {checkpoint.resolve()}" in msa(capsys, "bank", "stats", bank)[1]
    code, out, _ = msa(capsys, "ask", bank, "Where was person 3 born?", "--json", "--max-new-tokens", "4", "--routing")
    answer = json.loads(out)
    assert answer["question"] == "Where was person 3 born?" and answer["rounds"][0]["routing"]
    assert answer["rounds"][0]["timings"]["prefill"] > 0
    code, out, _ = msa(capsys, "ask", bank, "Where was person 3 born?", "--max-new-tokens", "4")
    assert code == 0 and re.search(r"round 1: .*retrieved \[.*\] \(\d+\.\d\d s\)", out)
    code, out, _ = msa(capsys, "ask", bank, "Where was person 3 born?", "--json", "--routing", "--doc-choice", "routed",
                       "--max-new-tokens", "12")  # fmt: skip
    for r in json.loads(out)["rounds"]:  # routed reads come from the round's routing
        last = max(r["routing"], key=int)
        assert set(r["retrieved"]) <= {d for d, _ in r["routing"][last]}
    assert msa(capsys, "bank", "delete", bank, "3")[1].strip() == "deleted 1 documents"
    assert msa(capsys, "bank", "compact", bank)[0] == 0
    assert json.loads(msa(capsys, "bank", "stats", bank, "--json")[1])["documents"] == 7


def test_string_ids_shown_as_given(tmp_path, checkpoint, capsys):
    bank = tmp_path / "bank"
    assert msa(capsys, "bank", "create", bank, "--model", checkpoint)[0] == 0
    recs = [{"id": f"city-{i:02d}", "text": t} for i, t in enumerate(DOCS)] + [{"id": "7", "text": "Seven is a string."}]
    assert msa(capsys, "bank", "add", bank, write_jsonl(tmp_path / "d.jsonl", recs))[0] == 0
    listed = msa(capsys, "bank", "list", bank)[1].split()  # storage order (within one add: as encoded)
    assert sorted(listed) == sorted(r["id"] for r in recs)
    assert json.loads(msa(capsys, "bank", "list", bank, "--offset", "2", "--limit", "2", "--json")[1]) == listed[2:4]
    assert msa(capsys, "bank", "get", bank, "city-01")[1] == DOCS[1] + "\n"
    assert msa(capsys, "bank", "get", bank, "7")[1] == "Seven is a string.\n"  # "7" stays a string id
    code, out, _ = msa(capsys, "ask", bank, "Where was person 3 born?", "--json", "--routing", "--doc-choice", "routed",
                       "--max-new-tokens", "8")  # fmt: skip
    shown = json.loads(out)["rounds"][0]  # routing ids are the engine's internal ints, shown as given
    routed = [d for sel in shown["routing"].values() for d, _ in sel]
    assert routed and set(routed) <= set(listed) and set(shown["retrieved"]) <= set(listed)
    new = tmp_path / "new.txt"
    new.write_text("\ufeffPerson 1 moved to Lyon.\n")
    assert msa(capsys, "bank", "update", bank, "city-01", new)[1].strip() == "updated city-01"
    assert msa(capsys, "bank", "update", bank, "city-01", new)[1].strip() == "unchanged city-01"
    assert msa(capsys, "bank", "get", bank, "city-01")[1] == "Person 1 moved to Lyon.\n"
    code, out, _ = msa(capsys, "bank", "delete", bank, "city-00", "7")
    assert out.strip() == "deleted 2 documents"
    assert dict(ids_and_texts(capsys, bank)) == {r["id"]: r["text"] for r in recs[1:6]} | {"city-01": "Person 1 moved to Lyon."}


def test_export_round_trip_and_duplicate_policies(tmp_path, checkpoint, capsys):
    bank, copy = tmp_path / "a.bank", tmp_path / "b.bank"
    for b in (bank, copy):
        assert msa(capsys, "bank", "create", b, "--model", checkpoint)[0] == 0
    mixed = [{"id": "k", "text": "keyed"}, {"id": 5, "text": "five"}]
    assert msa(capsys, "bank", "add", bank, write_jsonl(tmp_path / "m.jsonl", mixed))[0] == 0
    para = tmp_path / "p.txt"
    para.write_text("Alpha.\n\nBeta.\n")
    assert msa(capsys, "bank", "add", bank, para)[0] == 0
    out = tmp_path / "export.jsonl"
    code, _, err = msa(capsys, "bank", "export", bank, "--out", out)
    assert code == 0 and "exported 4 documents" in err
    assert msa(capsys, "bank", "add", copy, out)[1].strip() == "added 4, unchanged 0"
    exported = ids_and_texts(capsys, bank)
    assert {(type(i), i, t) for i, t in ids_and_texts(capsys, copy)} == {(type(i), i, t) for i, t in exported}
    assert {type(i) for i, _ in exported} == {int, str}
    # --on-duplicate on id-less re-adds (content hash) and on a changed text under an id
    assert msa(capsys, "bank", "add", bank, para, "--on-duplicate", "skip")[1].strip() == "added 0, unchanged 2"
    assert msa(capsys, "bank", "add", bank, para, "--on-duplicate", "error")[0] == 2
    changed = write_jsonl(tmp_path / "c.jsonl", [{"id": "k", "text": "keyed, again"}])
    assert msa(capsys, "bank", "add", bank, changed)[0] == 2
    assert msa(capsys, "bank", "add", bank, changed, "--on-duplicate", "replace")[1].strip() == "added 0, unchanged 0, replaced 1"
    assert msa(capsys, "bank", "get", bank, "k")[1] == "keyed, again\n"
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(["Gamma.", "Delta."]))
    assert msa(capsys, "bank", "add", bank, arr)[1].strip() == "added 2, unchanged 0"  # a .json array: 2 documents


def test_long_documents_split_visibly_or_rejected(tmp_path, checkpoint, capsys):
    bank = tmp_path / "bank"
    assert msa(capsys, "bank", "create", bank, "--model", checkpoint, "--max-doc-tokens", "64")[0] == 0
    long_text = " ".join(f"word{i}" for i in range(100))  # a few tokens a word: well over 64
    src = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": long_text}, {"id": "short", "text": "Short."}])
    code, _, err = msa(capsys, "bank", "add", bank, src, "--max-tokens", "64")
    assert code == 2 and "long" in err
    assert msa(capsys, "bank", "list", bank)[1] == ""  # rejected before anything was stored
    code, out, _ = msa(capsys, "bank", "add", bank, src)
    m = re.fullmatch(r"added 2, unchanged 0, split 1 long documents into (\d+) pieces \(long\)\n", out)
    assert m and int(m.group(1)) >= 2, out
    assert msa(capsys, "bank", "list", bank)[1].split() == ["long", "short"]  # whole documents, not pieces
    assert msa(capsys, "bank", "get", bank, "long")[1] == long_text + "\n"


def test_ask_model_override_when_the_model_moved(tmp_path, checkpoint, capsys):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    bank = tmp_path / "bank"
    assert msa(capsys, "bank", "create", bank, "--model", model)[0] == 0
    assert msa(capsys, "bank", "add", bank, write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in DOCS]))[0] == 0
    model.rename(tmp_path / "moved")
    code, _, err = msa(capsys, "ask", bank, "Where was person 3 born?", "--max-new-tokens", "4")
    assert code == 2 and "--model" in err and len(err.splitlines()) == 1
    assert msa(capsys, "ask", bank, "Where was person 3 born?", "--max-new-tokens", "4", "--model", tmp_path / "moved")[0] == 0
    other = MSAForCausalLM.from_pretrained(tmp_path / "moved")  # same shape, one weight changed
    with torch.no_grad():
        other.model.embed_tokens.weight[0, 0] += 1
    shutil.copytree(tmp_path / "moved", tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    code, _, err = msa(capsys, "ask", bank, "Where was person 3 born?", "--model", tmp_path / "other")
    assert code == 2 and "re-encode" in err and len(err.splitlines()) == 1


def test_train_help_lists_recipes_and_keys(capsys):
    from msa.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("cpu_routing", "bios_tiny", "schedule.", "phases.N.steps", "micro_batch_size", "parallel.", "device"):
        assert word in out, word
