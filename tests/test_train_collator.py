"""Collator: the official packed layout, pinned on a hand-written example (issue 4 part 3)."""

import re

import pytest
import torch

from msa.data.bios import BiosConfig
from msa.train import Collator, Document, TrainSample, sample_from_json, sample_to_json
from msa.train.collator import IGNORE
from msa.train.data import BiosSamples, JsonlSamples
from msa.train.targets import ids_only, ids_then_answer, interleave_transcript


class CharTokenizer:
    """Special tokens <|...|> are one token each, every other character is one token."""

    def __init__(self):
        self.vocab = {}

    def tokens(self, text):
        return re.findall(r"<\|[a-z_]+\|>|.", text, flags=re.S)

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(t, len(self.vocab) + 1) for t in self.tokens(text)]


def sample():
    return TrainSample(
        question="Who cooks?",
        memory=[Document(7, "Ann sings."), Document(3, "Bob cooks.")],
        positives=[3],
        answer="Bob",
    )


def test_interleave_layout_is_the_official_one():
    tok = CharTokenizer()
    col = Collator(tok, query_offset=19, target_format=interleave_transcript)
    enc = col.encode(sample())
    # Hand-written: (text, doc_id, is_target)
    expected = [
        ("<|im_start|>user\n", -2, False),
        ("<|im_start|>[7]. Ann sings.[7]<|im_end|>", 1, False),
        ("<|im_start|>[3]. Bob cooks.[3]<|im_end|>", 2, False),
        ("\nPlease answer the question based on the above historical document information\n\n"
         "Who cooks?\nPlease return all documents related to the question\n", 0, False),
        ("<|im_end|>\n", -2, False),
        ("<|im_start|>", -1, False),
        ("[3]<|object_ref_end|>", -1, True),
        ("[3]. Bob cooks.\n", 0, False),
        ("<|object_ref_end|>", -1, False),
        ("<End-of-Retrieve>", -1, True),
        ("<|im_start|>The user's question is: Who cooks?\n<|object_ref_end|>", -1, False),
        ("The answer to the question is: Bob<|im_end|>", -1, True),
    ]  # fmt: skip
    ids, dids, pos, labels = [], [], [], []
    p = 19
    for i, (text, did, target) in enumerate(expected):
        t = tok.encode(text)
        ids += t
        dids += [did] * len(t)
        labels += t if target else [IGNORE] * len(t)
        if i == 0 or did > 0:  # the template prefix and every document start at position 0
            pos += list(range(len(t)))
        else:
            pos += list(range(p, p + len(t)))
            p += len(t)
    assert tok.tokens("<|im_start|>user\n") == ["<|im_start|>", "u", "s", "e", "r", "\n"]
    assert enc.input_ids == ids
    assert enc.doc_ids == dids
    assert enc.position_ids == pos
    assert enc.labels == labels
    assert enc.aux_labels == [0, 1]
    # spot checks of the convention, independent of the loop above
    n_prefix = 6
    assert enc.position_ids[:n_prefix] == list(range(6)) and enc.doc_ids[:n_prefix] == [-2] * 6
    first_query = enc.doc_ids.index(0)
    assert enc.position_ids[first_query] == 19 and enc.position_ids[-1] == 19 + len(enc.input_ids) - first_query - 1
    doc2 = enc.doc_ids.index(2)
    assert enc.position_ids[doc2] == 0 and enc.position_ids[doc2 - 1] > 0


def test_batch_padding_and_lm_targets():
    tok = CharTokenizer()
    col = Collator(tok, query_offset=19, target_format=ids_only, pad_id=0)
    short = TrainSample("Q?", [Document(1, "a")], [1])
    batch = col([sample(), short])
    b, l = batch.labels.shape
    assert b == 2 and batch.packed.attention_mask[1].sum() < l
    row = batch.packed.attention_mask[1]
    assert (batch.packed.doc_ids[1][~row] == -1).all() and (batch.labels[1][~row] == IGNORE).all()
    index, targets = batch.lm_targets()
    # logits at t-1 predict the target at t; the targets are "[3]<|object_ref_end|>" and "[1]<|object_ref_end|>"
    assert targets.tolist() == tok.encode("[3]<|object_ref_end|>") + tok.encode("[1]<|object_ref_end|>")
    flat = batch.packed.input_ids.flatten()
    assert torch.equal(flat[index + 1], targets)
    assert [a.tolist() for a in batch.aux_labels] == [[0, 1], [1]]


def test_target_formats():
    s = sample()
    fmt = Collator(CharTokenizer(), 19).fmt
    assert [g.text for g in ids_then_answer(s, fmt)] == ["[3]<|object_ref_end|>The answer to the question is: Bob<|im_end|>"]
    multi = TrainSample("Q", [Document(4, "four"), Document(9, "nine")], [4, 9], answer="A")
    segs = interleave_transcript(multi, fmt)
    routed = [g.text for g in segs if g.doc_id == 0]
    assert routed == ["[9]. nine\n"]  # only the latest appended document routes (official regenerate prompt)
    assert "".join(g.text for g in segs) == (
        "[4]<|object_ref_end|>[4]. four\n<|object_ref_end|>[9]<|object_ref_end|>[9]. nine\n<|object_ref_end|>"
        "<End-of-Retrieve><|im_start|>The user's question is: Q\n<|object_ref_end|>The answer to the question is: A<|im_end|>"
    )


def test_jsonl_format_round_trip(tmp_path):
    world = BiosConfig(num_people=1024, seed=3)
    src = BiosSamples(world, num_docs=5, kind="multi", seed=1)
    samples = [src.sample(i) for i in range(4)]
    for s in samples:
        assert len(s.memory) == 5 and len(s.positives) == 2 and sum(s.labels()) == 2
    path = tmp_path / "train.jsonl"
    import json

    with open(path, "w") as f:
        for i, s in enumerate(samples):
            f.write(json.dumps(sample_to_json(s, world if i % 2 else None)) + "\n")
    back = list(JsonlSamples(path))
    assert [(b.question, b.memory, b.positives, b.answer) for b in back] == [
        (s.question, s.memory, s.positives, s.answer) for s in samples
    ]
    resumed = next(JsonlSamples(path).iterate(5))  # cycles: position 5 = record 2
    assert resumed.question == samples[1].question
    with pytest.raises(ValueError, match="not in the sample's memory"):
        sample_from_json({"question": "q", "memory": [{"id": 1, "text": "x"}], "positives": [2]})


def test_question_prompt_format_routes_with_the_question_alone():
    from msa.prompt import QUESTION_ONLY, prompt_format

    assert prompt_format("question") is QUESTION_ONLY
    with pytest.raises(ValueError, match="unknown prompt format"):
        prompt_format("chatml")
    tok = CharTokenizer()
    inv = lambda ids: "".join({v: k for k, v in tok.vocab.items()}[i] for i in ids)
    for fmt, routed in ((None, "Please answer"), (QUESTION_ONLY, "\nWho cooks?\n")):
        col = Collator(tok, query_offset=8, target_format=ids_only, **({"fmt": fmt} if fmt else {}))
        enc = col.encode(sample())
        query = inv([t for t, d in zip(enc.input_ids, enc.doc_ids) if d == 0])
        assert query == routed if fmt else query.startswith("\n" + routed)
