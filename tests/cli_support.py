"""Helpers shared by the CLI tests: a tiny checkpoint directory and running `msa` in-process."""

from __future__ import annotations

import json

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.cli import main
from msa.tokenizer import train_tokenizer

DOCS = [f"Person {i} was born in city{i}." for i in range(6)]


def make_checkpoint(d):
    """A 2-layer random-weight MSA model with its tokenizer, saved in ``d`` (a model directory)."""
    tok = train_tokenizer(DOCS * 4, 300, d)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      msa=MSAConfig(top_k_docs=2, pooling_kernel_size=8))  # fmt: skip
    MSAForCausalLM(cfg).init_weights(0).save_pretrained(d)
    return d


def msa(capsys, *argv) -> tuple[int, str, str]:
    """Run ``msa ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)
