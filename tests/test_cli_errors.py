"""Every user mistake of the `msa` command: exit 2, one line `msa: error: ...`, no traceback, and the bank
unchanged (document ids and texts compared before and after the whole table)."""

import json
import subprocess
import sys

import pytest
import torch
from cli_support import DOCS, make_checkpoint, msa, write_jsonl

LONG = " ".join(f"word{i}" for i in range(400))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A checkpoint, a bank holding DOCS under string ids, and the files the table's cases read."""
    d = tmp_path_factory.mktemp("errors")
    ckpt = make_checkpoint(d / "model")
    files = {
        "docs.jsonl": [{"id": f"city-{i:02d}", "text": t} for i, t in enumerate(DOCS)],
        "mixed.jsonl": [{"id": "a", "text": "one"}, {"text": "two"}],
        "float_id.jsonl": [{"id": 1.5, "text": "one"}],
        "no_text.jsonl": [{"id": "a", "body": "one"}],
        "changed.jsonl": [{"id": "city-00", "text": "Person 0 moved to a new city."}],
        "long.jsonl": [{"id": "long", "text": LONG}],
    }
    for name, recs in files.items():
        write_jsonl(d / name, recs)
    (d / "mixed.json").write_text(json.dumps(["a text", {"id": "x", "text": "b"}]))
    (d / "object.json").write_text(json.dumps({"text": "not an array"}))
    (d / "latin1.txt").write_bytes(b"caf\xe9\n")
    (d / "broken.jsonl").write_text('{"text": "ok"}\n{nope\n')
    (d / "empty.txt").write_text("\n\n")
    (d / "plain.txt").write_text("Alpha paragraph.\n\nBeta paragraph.\n")
    (d / "a_file").write_text("x")
    (d / "train_ckpt").mkdir()
    torch.save({}, d / "train_ckpt" / "model.pt")
    bank = d / "city.bank"
    assert msa_ok(["bank", "create", bank, "--model", ckpt])
    assert msa_ok(["bank", "add", bank, d / "docs.jsonl"])
    assert msa_ok(["bank", "add", bank, d / "plain.txt"])
    empty = d / "empty.bank"
    assert msa_ok(["bank", "create", empty, "--model", ckpt])
    return {"d": d, "ckpt": ckpt, "bank": bank, "empty": empty}


def msa_ok(argv) -> bool:
    from msa.cli import main

    return main([str(a) for a in argv]) == 0


def snapshot(bank) -> list:
    from msa.memory import MemoryBank

    with MemoryBank.open(bank, readonly=True) as b:
        return list(b.documents())


NO_CUDA = not torch.cuda.is_available()

# (case, argv with {bank} {empty} {d} {ckpt} placeholders, a word the one-line message must hold)
CASES = [
    ("stats of a missing bank", "bank stats {d}/missing", "not a memory bank"),
    ("unknown model", "bank create {d}/new.bank --model no-such-model", "no-such-model"),
    ("create over an existing bank", "bank create {bank} --model {ckpt}", "already exists"),
    ("create over a file", "bank create {d}/a_file --model {ckpt}", "already exists"),
    ("create from a training checkpoint without model files", "bank create {d}/n.bank --model {d}/train_ckpt",
     "msa export"),
    ("add: no such file", "bank add {bank} {d}/nope.jsonl", "no such file"),
    ("add: not UTF-8", "bank add {bank} {d}/latin1.txt", "UTF-8"),
    ("add: malformed JSONL", "bank add {bank} {d}/broken.jsonl", "broken.jsonl:2"),
    ("add: ids on some lines only", "bank add {bank} {d}/mixed.jsonl", "mixed.jsonl:2"),
    ("add: ids on some .json items only", "bank add {bank} {d}/mixed.json", "mixed.json[0]"),
    ("add: .json that is not an array", "bank add {bank} {d}/object.json", "array"),
    ("add: an id that is neither int nor string", "bank add {bank} {d}/float_id.jsonl", "1.5"),
    ("add: an object without text", "bank add {bank} {d}/no_text.jsonl", '"text"'),
    ("add: no documents", "bank add {bank} {d}/empty.txt", "no documents"),
    ("add: a changed text under a stored id", "bank add {bank} {d}/changed.jsonl", "city-00"),
    ("add: longer than --max-tokens", "bank add {bank} {d}/long.jsonl --max-tokens 64", "long"),
    ("add: --on-duplicate error on a re-add", "bank add {bank} {d}/plain.txt --on-duplicate error", "plain"),
    ("add to a bank that does not exist", "bank add {d}/missing {d}/plain.txt", "not a memory bank"),
    ("delete a negative id", "bank delete {bank} -- -5", "-5"),
    ("delete an unknown id", "bank delete {bank} 42", "42"),
    ("delete a known and an unknown id", "bank delete {bank} city-01 nope", "nope"),
    ("get an unknown id", "bank get {bank} city-99", "city-99"),
    ("update an unknown id", "bank update {bank} city-99 {d}/plain.txt", "city-99"),
    ("update from a missing file", "bank update {bank} city-00 {d}/nope.txt", "no such file"),
    ("list with a negative offset", "bank list {bank} --offset -1", "offset"),
    ("export over an existing file", "bank export {bank} --out {d}/plain.txt", "exists"),
    ("ask an empty bank", "ask {empty} anything?", "empty"),
    ("ask with a model that is not there", "ask {bank} anything? --model {d}/nowhere", "nowhere"),
    ("an unknown device", "ask {bank} anything? --device tpu9", "device"),
    ("train an unknown recipe", "train no_such_recipe", "no_such_recipe"),
    ("train with an unknown key", "train cpu_routing data.no_such_key=1", "no_such_key"),
    ("train with a value of the wrong type", "train cpu_routing data.micro_batch_size=many", "micro_batch_size"),
    ("train with an override that is not KEY=VALUE", "train cpu_routing schedule", "KEY=VALUE"),
    ("export what is not a checkpoint", "export {d}/a_file {d}/out", "a_file"),
]
if NO_CUDA:
    CASES += [
        ("create --device cuda without CUDA", "bank create {d}/c.bank --model {ckpt} --device cuda", "CUDA"),
        ("add --device cuda without CUDA", "bank add {bank} {d}/plain.txt --device cuda", "CUDA"),
        ("ask --device cuda without CUDA", "ask {bank} anything? --device cuda", "CUDA"),
        ("train --device cuda without CUDA", "train cpu_routing --device cuda", "CUDA"),
    ]


def test_user_mistakes_exit_2_with_one_line(env, capsys):
    before = snapshot(env["bank"])
    assert [i for i, _ in before][:2] == ["city-00", "city-01"]
    failures = []
    for case, argv, word in CASES:
        args = [a.format(**env) for a in argv.split()]
        code, out, err = msa(capsys, *args)
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("msa: error: ") or word not in lines[0]:
            failures.append(f"{case}: exit {code}, stderr {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(env["bank"]) == before  # nothing lost, nothing changed
    assert not (env["d"] / "new.bank").exists() and not (env["d"] / "c.bank").exists()


def test_closed_pipe_ends_quietly(env):
    """`msa bank list BANK | head -1`: the reader leaves early; no traceback, no error line."""
    cmd = [sys.executable, "-m", "msa", "bank", "list", str(env["bank"])]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the process writes: its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait() == 0 and err == "", err
