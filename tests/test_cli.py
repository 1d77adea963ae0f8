"""The `msa` command end to end on a tiny checkpoint directory."""

import json
import re

import pytest

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.cli import main
from msa.tokenizer import train_tokenizer

DOCS = [f"Person {i} was born in city{i}." for i in range(6)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer(DOCS * 4, 300, d)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      msa=MSAConfig(top_k_docs=2, pooling_kernel_size=8))  # fmt: skip
    MSAForCausalLM(cfg).init_weights(0).save_pretrained(d)
    return d


def test_bank_lifecycle(tmp_path, checkpoint, capsys):
    bank = str(tmp_path / "bank")
    assert main(["bank", "create", bank, "--model", str(checkpoint)]) == 0
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(DOCS)))
    assert main(["bank", "add", bank, str(src)]) == 0
    txt = tmp_path / "more.txt"
    txt.write_text("First extra paragraph.\n\nSecond extra\nparagraph.\n")
    assert main(["bank", "add", bank, str(txt)]) == 0
    capsys.readouterr()
    assert main(["bank", "stats", bank, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents"] == 8 and stats["chunks"] > 0 and stats["bytes_routing"] > 0 and stats["bytes_content"] > 0
    assert main(["ask", bank, "Where was person 3 born?", "--json", "--max-new-tokens", "4", "--routing"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["question"] == "Where was person 3 born?" and out["rounds"][0]["routing"]
    assert out["rounds"][0]["timings"]["prefill"] > 0
    assert main(["ask", bank, "Where was person 3 born?", "--max-new-tokens", "4"]) == 0
    assert re.search(r"round 1: .*retrieved \[.*\] \(\d+\.\d\d s\)", capsys.readouterr().out)
    assert main(["ask", bank, "Where was person 3 born?", "--json", "--routing", "--doc-choice", "routed",
                 "--max-new-tokens", "12"]) == 0  # fmt: skip
    for r in json.loads(capsys.readouterr().out)["rounds"]:  # routed reads come from the round's routing
        last = max(r["routing"], key=int)
        assert set(r["retrieved"]) <= {d for d, _ in r["routing"][last]}
    assert main(["bank", "delete", bank, "3"]) == 0
    assert main(["bank", "compact", bank]) == 0
    capsys.readouterr()
    main(["bank", "stats", bank, "--json"])
    assert json.loads(capsys.readouterr().out)["documents"] == 7


def test_user_errors_exit_2(tmp_path, checkpoint, capsys):
    bank = str(tmp_path / "bank")
    assert main(["bank", "stats", str(tmp_path / "missing")]) == 2
    assert main(["bank", "create", bank, "--model", "no-such-model"]) == 2
    main(["bank", "create", bank, "--model", str(checkpoint)])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    assert main(["bank", "add", bank, str(bad)]) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{nope\n')
    assert main(["bank", "add", bank, str(broken)]) == 2
    assert main(["ask", bank, "anything?"]) == 2  # empty bank
    assert main(["bank", "delete", bank, "42"]) == 2
    err = capsys.readouterr().err
    assert err.count("msa: error:") == 6 and "Traceback" not in err
