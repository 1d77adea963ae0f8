"""Byte-level BPE tokenizer: special tokens, digits, round trips, save/load."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from msa.data import BiosConfig, BiosWorld  # noqa: E402
from msa.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    docs = list(BiosWorld(BiosConfig(num_people=400, seed=1)).iter_documents())
    return train_tokenizer(docs, vocab_size=512, path=path), path, docs


def test_special_tokens_are_single_ids(trained):
    tok, _, _ = trained
    assert len(tok) == 512
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == expected_id
        assert tok(token, add_special_tokens=False)["input_ids"] == [expected_id]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.eos_token == "<|im_end|>"


def test_document_id_tokenization_is_stable(trained):
    tok, path, _ = trained
    text = "<|im_start|>[12]. "
    tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert tokens == ["<|im_start|>", "[", "1", "2", "]", ".", "\u0120"]
    ids = tok("[4217]", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[", "4", "2", "1", "7", "]"]
    assert tok("1931 2024", add_special_tokens=False)["input_ids"].__len__() == 9
    again = load_tokenizer(path)
    assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_round_trip(trained):
    tok, _, docs = trained
    samples = docs[:50] + ["Zoë met 東京 — naïve café 🚀 at 10:45!\n\tTabs  and  spaces ", ""]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    wrapped = f"<|im_start|>[3]. {docs[0]}[3]<|im_end|>"
    ids = tok(wrapped, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == wrapped
    assert tok.decode(ids, skip_special_tokens=True) == f"[3]. {docs[0]}[3]"


def test_save_and_load(trained):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok, path, docs = trained
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in path.iterdir()}
    for loaded in (
        AutoTokenizer.from_pretrained(str(path)),
        load_tokenizer(path),
        load_tokenizer(path / "tokenizer.json"),
    ):
        assert loaded(docs[1])["input_ids"] == tok(docs[1])["input_ids"]
        assert loaded.pad_token_id == 0
    raw = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    assert raw("<|object_ref_end|>")["input_ids"] == [3]
    with pytest.raises(FileNotFoundError):
        load_tokenizer(path / "missing")


def test_vocab_too_small():
    with pytest.raises(ValueError):
        train_tokenizer(["abc"], vocab_size=100)
