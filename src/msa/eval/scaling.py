"""Scaling run: QA quality, routing recall and latency from 16K to 100M tokens of memory (paper Fig. 1).

Memories. One bios world (``world_seed``); the memory of a size S holds the first N_S people, where N_S
is the smallest number of people whose formatted documents (``<|im_start|>[i]. {text}[i]<|im_end|>``,
the model's tokenizer) reach S tokens. Bios worlds are prefix-stable, so every memory contains the
smaller ones. Each memory is a MemoryBank on disk under ``work_dir`` named by world seed, people and
model fingerprint; a run reuses a complete bank and finishes an interrupted one (missing ids only).

Questions. Held-out questions (``question_seed``) about people drawn uniformly from the people of a
memory of ``question_pool`` tokens (default 16K, or the smallest memory run if smaller): their gold
documents are in every memory, so every size asks these same (``single``, ``multi_*``) questions, and a
run of any sizes (100M alone, say) asks the same ones as a run of all of them. With ``own_questions``
each larger memory is also asked questions about people drawn uniformly from all of ITS people
(``single_own``, ``multi_interleave_own``): what a user meets, the right document anywhere in memory.
``wordings`` asks those own questions again reworded (held-out paraphrases, lead-ins, lower-cased
names: ``msa.data.bios_text``; same people and attributes), at ``wording_sizes``.

Metrics per size (``metric_definitions`` in the JSON repeats these):

* ``exact_match`` / ``f1`` / ``contains``: SQuAD-normalised, see :mod:`msa.eval.metrics`; single-hop
  asked with Memory Interleave, multi-hop with (``multi_interleave``) and without
  (``multi_no_interleave``, one round) interleave.
* ``router_top1``: per router layer whether the first round's best-scored document is the first gold
  document, averaged over layers.
* ``router_recall``: routing of the FIRST round (question-only routing query). For router layer l with
  selected set R_l (its top-k documents, k = the model's ``top_k``; 16 for MSA-4B) and gold set G:
  recall_l = |G ∩ R_l| / |G|; a question's router recall is the mean of recall_l over the router layers;
  the reported value is the mean over questions. ``router_recall_any`` uses the union of R_l over
  layers instead. For multi-hop, ``router_recall_first_hop`` uses G = {first gold document} (the one
  the question names; the second hop is only reachable after interleave).
* ``retrieval_recall`` / ``_precision`` / ``_f1``: the document ids the model generated over all
  rounds that exist in the memory (de-duplicated; with or without interleave) against G.
* ``latency_s``: wall time of ``Engine.ask_batch`` divided by the batch size, per question
  (``batch_size=1``: the latency of one ``ask``); mean, p50, p90.

RULER NIAH. For each context length and subtask, ``ruler_samples`` samples are generated
(``msa.data.ruler.make_sample`` with the model tokenizer as token counter), cut into memory documents
with ``segment_context`` (``ruler_doc_tokens`` per document), stored in a bank, and the RULER question
is asked through the engine. Score = RULER ``string_match_all`` of the answer; router recall with
G = documents holding a queried needle value. ``average`` = mean over subtasks of the subtask means.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from msa.data.bios import BiosConfig, BiosWorld, Question
from msa.data.ruler import TASKS, make_sample, segment_context
from msa.eval.scaling_plot import plot_scaling
from msa.eval.metrics import contains_answer, exact_match, retrieval_scores, ruler_score, summarize, token_f1

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA",
    "DEFAULT_SIZES",
    "ScalingConfig",
    "parse_size",
    "format_size",
    "people_for_sizes",
    "question_pool",
    "held_out_questions",
    "ensure_bank",
    "router_recall",
    "evaluate_questions",
    "run_scaling",
    "plot_scaling",
]

SCHEMA = "msa.eval.scaling/1"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
DEFAULT_SIZES = (16 << 10, 128 << 10, 1 << 20, 10 << 20, 100 << 20)
DEFAULT_RULER_CONTEXTS = (32 << 10, 128 << 10, 1 << 20)

METRIC_DEFINITIONS = {
    "exact_match": "SQuAD-normalised prediction == gold answer (lowercase, no punctuation/articles, single spaces)",
    "f1": "SQuAD token F1 of normalised prediction vs gold answer",
    "contains": "normalised gold answer occurs token-aligned in the normalised prediction",
    "router_recall": "round-1 routing: mean over router layers of |gold ∩ top-k(layer)| / |gold|, averaged over questions",
    "router_recall_any": "round-1 routing: |gold ∩ union over layers of top-k(layer)| / |gold|, averaged over questions",
    "router_recall_first_hop": "router_recall with gold = {first gold document} (multi-hop only)",
    "retrieval_recall": "|gold ∩ retrieved| / |gold|; retrieved = documents read over all rounds, plus (doc_choice "
                        "'generated') ids the model named that exist in memory",
    "retrieval_precision": "|gold ∩ retrieved| / |retrieved| (0 when nothing retrieved)",
    "latency_s": "ask_batch wall time / batch size, per question",
    "ruler_score": "RULER string_match_all: fraction of expected values found in the answer (case-insensitive)",
}


def parse_size(s: str | int) -> int:
    """``"16K"`` -> 16384, ``"1M"`` -> 1048576 (binary units), ``"2000"`` -> 2000."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)\s*", s.upper())
    if not m:
        raise ValueError(f"bad size {s!r}: use e.g. 16K, 1M, 100M or a number of tokens")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_size(n: int) -> str:
    """Inverse of parse_size for round sizes (16384 -> "16K"), else the number."""
    for unit in ("G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


@dataclass
class ScalingConfig:
    """Everything a scaling run needs (sizes in tokens; see the module docstring)."""

    work_dir: str
    out: str
    model: str | None = None
    plot: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    world_seed: int = 0
    question_seed: int = 1_000_003
    num_single: int = 100
    num_multi: int = 100
    max_rounds: int = 4
    max_new_tokens: int = 64
    batch_size: int = 1
    ruler_contexts: tuple[int, ...] = DEFAULT_RULER_CONTEXTS
    ruler_tasks: tuple[str, ...] = tuple(TASKS)
    ruler_samples: int = 4
    ruler_doc_tokens: int = 512
    device: str | None = None
    add_batch_docs: int = 8192
    records: bool = True
    question_pool: int = DEFAULT_SIZES[0]  # tokens: the shared questions are about the people of a memory this size
    own_questions: bool = True  # also questions drawn uniformly from each memory's own people (sections *_own)
    wordings: tuple[str, ...] = ()  # held-out wordings (msa.data.bios_text.WORDINGS) asked on the own questions
    wording_sizes: tuple[int, ...] = ()  # sizes the wordings are asked at (empty: every size)
    doc_choice: str | None = None  # Engine(doc_choice=...); None: the model's policy.doc_choice


# -- memories -------------------------------------------------------------------------------------------
def _doc_token_counts(tokenizer, world: BiosWorld, start: int, stop: int) -> list[int]:
    from msa.prompt import OFFICIAL

    docs = [OFFICIAL.format_document(start + j, t) for j, t in enumerate(world.iter_documents(start, stop))]
    return [len(x) for x in tokenizer(docs, add_special_tokens=False)["input_ids"]]


def _cached_people(tokenizer, sizes: list[int], world_seed: int, work: Path) -> dict[int, tuple[int, int]]:
    """people_for_sizes, remembered in ``work`` per (world seed, tokenizer) so 100M-token plans are counted once."""
    from msa.memory.encode import tokenizer_fingerprint

    path = work / f"plan-w{world_seed}-{(tokenizer_fingerprint(tokenizer) or 'tok')[:12]}.json"
    plan = {int(k): tuple(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    missing = [s for s in sizes if s not in plan]
    if missing:
        plan.update(people_for_sizes(tokenizer, missing, world_seed))
        path.write_text(json.dumps({str(k): list(v) for k, v in sorted(plan.items())}))
    return {s: plan[s] for s in sizes}  # type: ignore[misc]


def people_for_sizes(tokenizer, sizes: list[int], world_seed: int, batch: int = 8192) -> dict[int, tuple[int, int]]:
    """size -> (people, tokens): the fewest first people whose formatted documents reach ``size`` tokens."""
    world = BiosWorld(BiosConfig(num_people=0, seed=world_seed))
    out: dict[int, tuple[int, int]] = {}
    todo = sorted(set(sizes))
    total, n = 0, 0
    while todo:
        counts = _doc_token_counts(tokenizer, world, n, n + batch)
        cum = np.cumsum(counts) + total
        while todo and cum[-1] >= todo[0]:
            j = int(np.searchsorted(cum, todo[0]))  # first index with cum >= size
            out[todo.pop(0)] = (n + j + 1, int(cum[j]))
        total, n = int(cum[-1]), n + len(counts)
        if n >= world.capacity:
            raise ValueError(f"the bios world cannot reach {todo[0]} tokens")
    return out


def ensure_bank(path: Path, model, tokenizer, texts_fn, num_docs: int, add_batch_docs: int = 8192,
                device: str | None = None, model_source: str | None = None) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Open the bank at ``path`` holding documents 0..num_docs-1 (``texts_fn(start, stop) -> texts``),
    creating it or adding only the missing ids. Returns (bank, info: stats + reused + build_seconds)."""
    from msa.memory import MemoryBank

    t0 = time.perf_counter()
    if path.exists():
        bank = MemoryBank.open(path, model=model, tokenizer=tokenizer, device=device)
    else:
        bank = MemoryBank.create(path, model, tokenizer, device=device, model_source=model_source)
    have = bank.stats()["documents"]
    reused = have == num_docs
    if have > num_docs:
        bank.close()
        raise ValueError(f"{path} holds {have} documents, more than the {num_docs} expected; remove it")
    if not reused:
        present = set(bank.ids()) if have else set()
        for start in range(0, num_docs, add_batch_docs):
            stop = min(num_docs, start + add_batch_docs)
            ids = [i for i in range(start, stop) if i not in present]
            if not ids:
                continue
            texts = texts_fn(start, stop)
            bank.add([texts[i - start] for i in ids], ids=ids, progress=False)
            logger.info("%s: %d/%d documents", path.name, stop, num_docs)
    info = dict(bank.stats())
    info.update(path=str(path), reused=reused, build_seconds=time.perf_counter() - t0)
    return bank, info


def question_pool(sizes: list[int], pool: int) -> int:
    """The memory size (tokens) whose people the questions are about: ``pool``, or the smallest size if smaller."""
    return min([pool, *sizes])


def held_out_questions(world_seed: int, num_people: int, n_single: int, n_multi: int, seed: int,
                       wording: str = "base") -> dict[str, list[Question]]:  # fmt: skip
    """Questions about people drawn uniformly among the first ``num_people`` (so their gold documents
    are in every memory at least that large), in a ``wording`` of ``msa.data.bios_text.WORDINGS``
    (every wording asks about the same people and attributes)."""
    world = BiosWorld(BiosConfig(num_people=num_people, seed=world_seed))
    out = {"single": list(world.iter_questions(n_single, "single", seed, wording))}
    try:
        out["multi"] = list(world.iter_questions(n_multi, "multi", seed, wording))
    except ValueError:
        logger.warning("the smallest memory (%d people) has too few related people for multi-hop questions", num_people)
        out["multi"] = []
    return out


# -- evaluation -----------------------------------------------------------------------------------------
def router_recall(routing: dict[int, list[tuple[int, float]]], gold: set[int]) -> tuple[float | None, float | None]:
    """(mean over layers of |gold ∩ R_l| / |gold|, |gold ∩ ∪ R_l| / |gold|); (None, None) without routing."""
    if not routing or not gold:
        return None, None
    sets = [{d for d, _ in sel} for sel in routing.values()]
    per_layer = [len(gold & s) / len(gold) for s in sets]
    union = set().union(*sets)
    return sum(per_layer) / len(per_layer), len(gold & union) / len(gold)


def evaluate_questions(engine, questions: list[dict[str, Any]], interleave: bool, max_rounds: int,
                       max_new_tokens: int, batch_size: int, scorer: str = "qa") -> list[dict[str, Any]]:  # fmt: skip
    """Ask every question; one record per question with its scores.

    questions: dicts with "question", "answers" (list of str), "gold_ids" (list of int).
    scorer: "qa" (exact match, F1, contains) or "ruler" (RULER string_match_all).
    """
    records = []
    for j in range(0, len(questions), batch_size):
        batch = questions[j : j + batch_size]
        t0 = time.perf_counter()
        answers = engine.ask_batch([q["question"] for q in batch], interleave=interleave, max_rounds=max_rounds,
                                   max_new_tokens=max_new_tokens, return_routing=True)  # fmt: skip
        latency = (time.perf_counter() - t0) / len(batch)
        for q, a in zip(batch, answers):
            gold = [int(g) for g in q["gold_ids"]]
            rec: dict[str, Any] = {"question": q["question"], "answers": q["answers"], "prediction": a.text,
                                   "gold_ids": gold, "latency_s": latency}  # fmt: skip
            if scorer == "qa":
                rec["exact_match"] = exact_match(a.text, q["answers"])
                rec["f1"] = token_f1(a.text, q["answers"])
                rec["contains"] = contains_answer(a.text, q["answers"])
            else:
                rec["ruler_score"] = ruler_score(a.text, q["answers"])
            routing = a.rounds[0].routing if a.rounds else {}
            rec["router_recall"], rec["router_recall_any"] = router_recall(routing, set(gold))
            if routing and gold:
                rec["router_top1"] = sum(max(sel, key=lambda x: x[1])[0] == gold[0] for sel in routing.values() if sel) / len(routing)
            if len(gold) > 1:
                rec["router_recall_first_hop"] = router_recall(routing, {gold[0]})[0]
            # documents read, plus (generated ids) ids the model named that exist in memory: the last
            # round names ids but fetches nothing, so Answer.doc_ids alone would miss them without interleave
            named = [d for r in a.rounds for d in r.requested if d not in r.unknown]
            read = [d for r in a.rounds for d in r.retrieved]
            generated = getattr(engine, "doc_choice", "generated") == "generated"
            retrieved = list(dict.fromkeys(read + (named if generated else [])))
            rec["retrieved"] = retrieved
            if gold:
                r = retrieval_scores(retrieved, gold)
                rec["retrieval_recall"], rec["retrieval_precision"], rec["retrieval_f1"] = r["recall"], r["precision"], r["f1"]
            rec["rounds"] = len(a.rounds)
            rec["timings"] = {k: round(v, 6) for k, v in a.timings.items()}
            rec["transcript"] = a.transcript
            records.append(rec)
    return records


_SUMMARY_KEYS = ("exact_match", "f1", "contains", "ruler_score", "router_recall", "router_top1", "router_recall_any",
                 "router_recall_first_hop", "retrieval_recall", "retrieval_precision", "retrieval_f1")  # fmt: skip


def summarize_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/n/CI of every metric present in the records, and latency percentiles."""
    out: dict[str, Any] = {"n": len(records)}
    for key in _SUMMARY_KEYS:
        vals = [r[key] for r in records if key in r]
        if vals:
            out[key] = summarize(vals, ci=True)
    lat = [r["latency_s"] for r in records]
    if lat:
        out["latency_s"] = {"mean": float(np.mean(lat)), "p50": float(np.percentile(lat, 50)),
                            "p90": float(np.percentile(lat, 90))}  # fmt: skip
    return out


def _question_dicts(qs: list[Question]) -> list[dict[str, Any]]:
    return [{"question": q.text, "answers": [q.answer], "gold_ids": list(q.gold_ids), "kind": q.kind} for q in qs]


def _load(cfg: ScalingConfig, model, tokenizer):
    if model is not None and tokenizer is not None:
        return model, tokenizer
    if cfg.model is None:
        raise ValueError("give a model directory or name (cfg.model), or pass model and tokenizer")
    from msa.model import MSAForCausalLM, resolve_model_path
    from msa.tokenizer import load_tokenizer

    path = resolve_model_path(cfg.model)
    return MSAForCausalLM.from_pretrained(path, device=cfg.device or "cpu"), load_tokenizer(path)


def _environment(model) -> dict[str, Any]:
    import torch

    import msa

    dev = model.device
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "msa": msa.__version__,
        "python": platform.python_version(),
    }


def _write_records(path: Path, section: str, records: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"section": section, **extra, **r}) + "\n")


def _engine(cfg: ScalingConfig, model, tokenizer, bank):
    from msa.engine import Engine

    return Engine(model, tokenizer, bank, device=cfg.device, doc_choice=cfg.doc_choice)


def run_scaling(cfg: ScalingConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """Run the scaling benchmark, write ``cfg.out`` (JSON), records (``*.records.jsonl``) and the plot."""
    model, tokenizer = _load(cfg, model, tokenizer)
    if cfg.device is not None:
        model = model.to(cfg.device)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(cfg.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path = out_path.with_suffix(".records.jsonl")
    if cfg.records:
        rec_path.write_text("")
    fp = model.fingerprint()[:12]
    sizes = sorted(cfg.sizes)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": cfg.model, "fingerprint": model.fingerprint(), "router_layers": list(model.router_layers)},
        "environment": _environment(model),
        "config": asdict(cfg),
        "router_k": model.config.msa.top_k,
        "metric_definitions": METRIC_DEFINITIONS,
        "bios": [],
        "ruler": [],
    }
    pool = question_pool(sizes, cfg.question_pool)
    people = _cached_people(tokenizer, sorted(set(sizes) | {pool}), cfg.world_seed, work) if sizes else {}
    if sizes:
        n0 = people[pool][0]
        qs = held_out_questions(cfg.world_seed, n0, cfg.num_single, cfg.num_multi, cfg.question_seed)
        single, multi = _question_dicts(qs["single"]), _question_dicts(qs["multi"])
        result["questions"] = {"single": len(single), "multi": len(multi), "drawn_from_people": n0,
                               "question_seed": cfg.question_seed}  # fmt: skip
    world = BiosWorld(BiosConfig(num_people=0, seed=cfg.world_seed))
    for size in sizes:
        n, tokens = people[size]
        logger.info("memory %s: %d people, %d tokens", format_size(size), n, tokens)
        bank, info = ensure_bank(work / f"bios-w{cfg.world_seed}-n{n}-{fp}", model, tokenizer,
                                 lambda a, b: list(world.iter_documents(a, b)), n, cfg.add_batch_docs,
                                 cfg.device, cfg.model)  # fmt: skip
        try:
            engine = _engine(cfg, model, tokenizer, bank)
            entry: dict[str, Any] = {"target_tokens": size, "label": format_size(size), "num_people": n,
                                     "memory_tokens": info["tokens"], "bank": info}  # fmt: skip
            runs = [("single", single, True), ("multi_interleave", multi, True), ("multi_no_interleave", multi, False)]
            if cfg.own_questions and n != n0:  # questions about anyone in this memory, drawn uniformly
                own = held_out_questions(cfg.world_seed, n, cfg.num_single, cfg.num_multi, cfg.question_seed)
                runs += [("single_own", _question_dicts(own["single"]), True),
                         ("multi_interleave_own", _question_dicts(own["multi"]), True)]  # fmt: skip
            if cfg.wordings and (not cfg.wording_sizes or size in cfg.wording_sizes):
                for w in cfg.wordings:
                    worded = held_out_questions(cfg.world_seed, n, cfg.num_single, cfg.num_multi, cfg.question_seed, w)
                    runs += [(f"single_own_{w}", _question_dicts(worded["single"]), True),
                             (f"multi_interleave_own_{w}", _question_dicts(worded["multi"]), True)]  # fmt: skip
            for name, questions, interleave in runs:
                if not questions:
                    continue
                recs = evaluate_questions(engine, questions, interleave, cfg.max_rounds, cfg.max_new_tokens, cfg.batch_size)
                entry[name] = summarize_records(recs)
                if cfg.records:
                    _write_records(rec_path, f"bios/{name}", recs, {"memory_tokens": info["tokens"]})
                logger.info("%s %s: %s", format_size(size), name, _brief(entry[name]))
            result["bios"].append(entry)
        finally:
            bank.close()
        _dump(result, out_path)
    for ctx in sorted(cfg.ruler_contexts):
        result["ruler"].append(_run_ruler(cfg, ctx, model, tokenizer, work, fp, rec_path))
        _dump(result, out_path)
    _dump(result, out_path)
    if cfg.plot:
        plot_scaling(result, cfg.plot)
    return result


def _brief(summary: dict[str, Any]) -> str:
    parts = []
    for key in ("exact_match", "router_recall", "ruler_score"):
        if key in summary and summary[key]["mean"] is not None:
            parts.append(f"{key}={summary[key]['mean']:.3f}")
    if "latency_s" in summary:
        parts.append(f"latency={summary['latency_s']['mean']:.3f}s")
    return " ".join(parts)


def _run_ruler(cfg: ScalingConfig, ctx: int, model, tokenizer, work: Path, fp: str, rec_path: Path) -> dict[str, Any]:
    def count(s: str) -> int:
        return len(tokenizer.encode(s, add_special_tokens=False))

    entry: dict[str, Any] = {"context_tokens": ctx, "label": format_size(ctx), "tasks": {}}
    for task in cfg.ruler_tasks:
        recs = []
        for s in range(cfg.ruler_samples):
            sample = make_sample(task, ctx, seed=s, token_count_fn=count)
            docs = segment_context(sample.context, cfg.ruler_doc_tokens, count)
            gold = [i for i, d in enumerate(docs) if any(a in d for a in sample.answers)]
            path = work / f"ruler-{task}-c{ctx}-s{s}-d{cfg.ruler_doc_tokens}-{fp}"
            bank, _ = ensure_bank(path, model, tokenizer, lambda a, b, docs=docs: docs[a:b], len(docs),
                                  cfg.add_batch_docs, cfg.device, cfg.model)  # fmt: skip
            try:
                engine = _engine(cfg, model, tokenizer, bank)
                q = {"question": sample.question, "answers": list(sample.answers), "gold_ids": gold}
                recs += evaluate_questions(engine, [q], True, cfg.max_rounds, cfg.max_new_tokens, 1, scorer="ruler")
            finally:
                bank.close()
        entry["tasks"][task] = summarize_records(recs)
        if cfg.records:
            _write_records(rec_path, f"ruler/{task}", recs, {"context_tokens": ctx})
    means = [t["ruler_score"]["mean"] for t in entry["tasks"].values() if t.get("ruler_score")]
    entry["average"] = float(np.mean(means)) if means else None
    logger.info("RULER %s average %s", format_size(ctx), entry["average"])
    return entry


def _dump(result: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)
