"""Shared fixtures: a tiny random MSA model and a tiny byte-level BPE tokenizer (built in memory)."""

from __future__ import annotations

import pytest

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_end|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice was born in Paris and works as a chemist.",
    "Bob lives in Berlin; his sister is a pilot.",
    "Please answer the question based on the above historical document information.",
    "Memory sparse attention routes every question to the best documents.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and [brackets]. Question? Answer!",
]


def build_tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences, wrapped as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )  # fmt: skip


def build_tiny_model(seed: int = 0, **msa_overrides):
    from msa import ModelConfig, MSAConfig, MSAForCausalLM

    cfg = ModelConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, msa=MSAConfig(top_k_docs=4, pooling_kernel_size=8, **msa_overrides),
    )  # fmt: skip
    return MSAForCausalLM(cfg).init_weights(seed=seed).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_config(tiny_model):
    return tiny_model.config


ROUTING_TEXTS = [f"Doc {i}: Alice {i} was born in Paris, works as chemist number {i * 7}." * (1 + i % 3) for i in range(40)]


def routing_case(b: int, tq: int, hq: int, hkv: int, d: int, c: int, seed: int, device: str = "cpu"):
    """Random routing inputs: q [B, Tq, Hq, D], k [C, Hkv, D], chunk_doc [C] (documents of 1-4 chunks),
    N documents, mask [B, Tq] (the last question has no routing token when B > 1)."""
    import torch

    from msa.kernels import chunk_doc_from_offsets

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5, (c,), generator=g)
    offs = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    n = int((offs < c).sum())
    offs = offs[: n + 1].clone()
    offs[-1] = c
    q = torch.randn(b, tq, hq, d, generator=g)
    k = torch.randn(c, hkv, d, generator=g)
    mask = torch.rand(b, tq, generator=g) > 0.3
    mask[:, 0] = True
    if b > 1:
        mask[-1] = False
    return q.to(device), k.to(device), chunk_doc_from_offsets(offs).long().to(device), n, mask.to(device)


def assert_same_routing(a, b, score_tol: float) -> None:
    """Two routings (``docs`` and ``scores`` [B, k], best first) agree up to rounding: scores within
    ``score_tol``, and the same document at every rank, except where that rank's score lies within
    ``2 * score_tol`` of another rank's (a near tie may swap places) or is the last kept one (a near tie
    with the first left out)."""
    import torch

    sa, sb = a.scores.float().cpu(), b.scores.float().cpu()
    torch.testing.assert_close(sa, sb, atol=score_tol, rtol=0)
    da, db = a.docs.cpu(), b.docs.cpu()
    k = sa.shape[1]
    for r in range(sa.shape[0]):
        for i in range(k):
            if da[r, i] == db[r, i]:
                continue
            near = (sa[r] - sa[r, i]).abs() <= 2 * score_tol
            near[i] = i == k - 1
            assert bool(near.any()), f"row {r}, rank {i}: documents {da[r].tolist()} against {db[r].tolist()}"
