"""`make demo`: generate a bios memory, encode it, ask single- and multi-hop questions.

Until the shipped model ``msa-bios-tiny`` exists, the demo runs the whole pipeline with a tiny
RANDOM-WEIGHT model (it says so): encoding, routing, Memory Interleave and timings are real, the
answers are noise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from msa.config import MSAConfig, ModelConfig
from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine, InMemoryView
from msa.eval.metrics import exact_match
from msa.model import MSAForCausalLM, shipped_models
from msa.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    documents: int = 2048
    questions: int = 4
    eval_questions: int = 100
    seed: int = 0


def _random_model(vocab: int) -> MSAForCausalLM:
    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, rope_theta=10000.0, msa=MSAConfig(top_k_docs=4, pooling_kernel_size=16),
    )  # fmt: skip
    return MSAForCausalLM(cfg).init_weights(0).eval()


def run(cfg: DemoConfig, out=print) -> dict:
    torch.manual_seed(cfg.seed)
    world = BiosWorld(BiosConfig(num_people=cfg.documents, seed=cfg.seed))
    docs = list(world.iter_documents(0, cfg.documents))
    if "msa-bios-tiny" in shipped_models():
        model = MSAForCausalLM.from_pretrained("msa-bios-tiny")
        from msa.tokenizer import load_tokenizer

        tok = load_tokenizer(shipped_models()["msa-bios-tiny"])
        out("model: msa-bios-tiny (shipped)")
    else:
        tok = train_tokenizer(docs[:2000], 1024)
        model = _random_model(len(tok))
        out("model: tiny RANDOM-WEIGHT model (the trained msa-bios-tiny is not shipped yet): answers are noise,")
        out("       the pipeline (encode -> route -> interleave -> decode) and its timings are real.")
    t0 = time.perf_counter()
    view = InMemoryView(model, tok, docs)
    enc = time.perf_counter() - t0
    tokens = int(view.memory.doc_lengths.sum())
    out(f"memory: {len(docs)} documents, {tokens} tokens, {view.memory.num_chunks} chunks; encoded in {enc:.1f}s "
        f"({tokens / enc:,.0f} tokens/s)")  # fmt: skip
    engine = Engine(model, tok, view)
    qs = list(world.iter_questions(cfg.questions // 2, "single", seed=cfg.seed)) + list(
        world.iter_questions(cfg.questions - cfg.questions // 2, "multi", seed=cfg.seed)
    )
    answers = engine.ask_batch([q.text for q in qs], max_new_tokens=24, return_routing=True)
    for q, a in zip(qs, answers):
        out(f"\nQ ({q.kind}): {q.text}\n  gold docs {list(q.gold_ids)}, gold answer {q.answer!r}")
        for r, info in enumerate(a.rounds):
            layer = max(info.routing)
            out(f"  round {r + 1}: layer {layer} routed to {[d for d, _ in info.routing[layer][:8]]}; "
                f"model asked for {info.requested}, read {info.retrieved}, unknown {info.unknown}")  # fmt: skip
        out(f"  answer: {a.text[:80]!r}")
        out("  timings (s): " + ", ".join(f"{k} {v:.3f}" for k, v in a.timings.items()))
    held = list(world.iter_questions(cfg.eval_questions // 2, "single", seed=cfg.seed + 1)) + list(
        world.iter_questions(cfg.eval_questions - cfg.eval_questions // 2, "multi", seed=cfg.seed + 1)
    )
    t0 = time.perf_counter()
    preds = []
    for i in range(0, len(held), 25):
        preds += engine.ask_batch([q.text for q in held[i : i + 25]], max_new_tokens=24)
    em = {k: [exact_match(a.text, q.answer) for a, q in zip(preds, held) if q.kind == k] for k in ("single", "multi")}
    summary = {k: sum(v) / max(1, len(v)) for k, v in em.items()}
    out(f"\nexact match on {len(held)} held-out questions: single-hop {summary['single']:.1%}, "
        f"2-hop {summary['multi']:.1%} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return {"documents": len(docs), "tokens": tokens, "encode_s": enc, "em": summary}
