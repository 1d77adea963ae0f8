"""`make demo`: generate a bios memory, encode it with the shipped ``msa-bios-small``, ask single- and
multi-hop questions with Memory Interleave, then score 100 held-out questions.

The world (seed 3) is not the one the model was trained on (seed 0): every person is new to it, so
answers come from the memory, not from the weights.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine
from msa.eval.metrics import exact_match
from msa.memory import MemoryBank
from msa.model import MSAForCausalLM, shipped_models
from msa.prompt import prompt_format
from msa.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

MODEL = "msa-bios-small"


@dataclass
class DemoConfig:
    """documents: people in the memory (~90 tokens each: 4096 -> ~370K tokens). questions: shown one
    by one; eval_questions: scored (half single-hop, half 2-hop). max_new_tokens: per round."""

    documents: int = 4096
    questions: int = 4
    eval_questions: int = 100
    seed: int = 3
    max_new_tokens: int = 64


def run(cfg: DemoConfig, out=print) -> dict:
    if MODEL not in shipped_models():
        raise RuntimeError(f"the shipped model {MODEL!r} is missing from this installation (msa/assets/{MODEL})")
    torch.manual_seed(cfg.seed)
    model = MSAForCausalLM.from_pretrained(MODEL)
    tok = load_tokenizer(shipped_models()[MODEL])
    out(f"model: {MODEL} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"doc_choice={model.config.policy.doc_choice!r})")  # fmt: skip
    world = BiosWorld(BiosConfig(num_people=cfg.documents, seed=cfg.seed))
    with tempfile.TemporaryDirectory(prefix="msa-demo-") as tmp:
        bank = MemoryBank.create(Path(tmp) / "bank", model, tok, prompt_format(model.config.policy.prompt_format),
                                 model_source=MODEL)  # fmt: skip
        t0 = time.perf_counter()
        bank.add(list(world.iter_documents(0, cfg.documents)), ids=list(range(cfg.documents)), progress=True)
        enc = time.perf_counter() - t0
        stats = bank.stats()
        out(f"memory: {stats['documents']} documents, {stats['tokens']:,} tokens; encoded in {enc:.1f}s "
            f"({stats['tokens'] / enc:,.0f} tokens/s)")  # fmt: skip
        try:
            return _ask(cfg, world, Engine(model, tok, bank), out) | {"tokens": stats["tokens"], "encode_s": enc}
        finally:
            bank.close()


def _ask(cfg: DemoConfig, world: BiosWorld, engine: Engine, out) -> dict:
    qs = list(world.iter_questions(cfg.questions // 2, "single", seed=cfg.seed)) + list(
        world.iter_questions(cfg.questions - cfg.questions // 2, "multi", seed=cfg.seed)
    )
    for q in qs:  # one at a time: each answer's timings are its own
        t0 = time.perf_counter()
        a = engine.ask(q.text, max_new_tokens=cfg.max_new_tokens, return_routing=True)
        seconds = time.perf_counter() - t0
        out(f"\nQ ({q.kind}-hop): {q.text}\n  gold documents {list(q.gold_ids)}, gold answer {q.answer!r}")
        for r, info in enumerate(a.rounds):
            layer = max(info.routing)
            unknown = f", unknown {info.unknown}" if info.unknown else ""
            asked = f"; model asked for {info.requests}{unknown}"
            out(f"  round {r + 1}: router top-8 {[d for d, _ in info.routing[layer][:8]]}{asked}; read {info.retrieved}")
        mark = "right" if exact_match(a.text, q.answer) else "wrong"
        out(f"  answer: {a.text[:80]!r} ({mark})")
        out(f"  {seconds:.2f}s; by stage (s): " + ", ".join(f"{k} {v:.3f}" for k, v in a.timings.items()))
    held = list(world.iter_questions(cfg.eval_questions // 2, "single", seed=cfg.seed + 1)) + list(
        world.iter_questions(cfg.eval_questions - cfg.eval_questions // 2, "multi", seed=cfg.seed + 1)
    )
    t0 = time.perf_counter()
    preds = []
    for i in range(0, len(held), 25):
        preds += engine.ask_batch([q.text for q in held[i : i + 25]], max_new_tokens=cfg.max_new_tokens)
    em = {k: [exact_match(a.text, q.answer) for a, q in zip(preds, held) if q.kind == k] for k in ("single", "multi")}
    summary = {k: sum(v) / max(1, len(v)) for k, v in em.items()}
    out(f"\nexact match on {len(held)} held-out questions (Memory Interleave): single-hop {summary['single']:.0%}, "
        f"2-hop {summary['multi']:.0%} ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return {"documents": cfg.documents, "em": summary}
