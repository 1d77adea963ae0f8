"""``msa bench official``: the authors' benchmark files through our engine, scored as they score them.

Inputs: a memory bank holding the memory file (``msa bank add BANK mdata_X.pkl``: id = index in the
file) and the query file ``qdata_X.pkl`` (or its JSON form). Every question is asked with
``Engine.ask_batch`` (Memory Interleave; ``doc_choice`` passed through), in batches, with progress.

Outputs in ``out`` (``X`` = the query file's name without ``qdata_``):

* ``X.json``: the release's output, ``{case_name: {"precision": {"metrics": {precision, recall, f1,
  iou}}, "record_list": [{labels_id, pred_id, question, true_answer, pred_answer, generated_text,
  predict_context, gt_context}]}}`` (:mod:`msa.eval.official_metrics` says how each is computed);
* ``X.records.jsonl``: ours, one line per question, appended after every batch (a crashed or
  interrupted run resumes from it): the release record, the documents read per round and their
  scores (and the recall of what was read after each round), the router's recall@k, offline answer
  scores, timings;
* ``X.summary.json``: the release's metrics, ours beside them, the judge's or the offline scores;
* ``X_llmscore.json`` (with a judge endpoint): the 0-5 verdict of every question and their mean
  with failures counted as 0 (the release's number; ``mean_graded`` leaves failures out).

Gold ids: exact text match of each reference text against the memory (last index wins for
duplicated texts, :func:`msa.data.official.doc_to_idx`). The texts come from ``memory`` (the
mdata file, exactly as the release) or else from the bank (a document the bank split into pieces on
adding then matches no reference text; pass the mdata file).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from msa.data.jsonl import read_jsonl, write_jsonl
from msa.data.official import Query, doc_to_idx, gold_ids, read_memory, read_queries
from msa.eval.official_metrics import (
    SCORE_KEYS,
    answer_scores,
    mean_scores,
    read_scores,
    recall_by_round,
    release_record,
    release_report,
    release_text,
    router_recall,
    set_scores,
)

logger = logging.getLogger(__name__)

__all__ = ["OfficialConfig", "run_official", "bench_name"]


@dataclass
class OfficialConfig:
    """One benchmark run.

    bank / queries / out: the memory bank, the query file, the output directory.
    memory: the mdata file the bank was built from (gold ids from its texts); None: the bank's texts.
    name: output file stem (default: the query file's stem without ``qdata_``); case_name: the key of
    the release's output (its default "anonymous").
    doc_choice / max_rounds / max_new_tokens: passed to the Engine (``None``: the model's doc_choice);
    batch_size: questions per ``ask_batch``; limit: ask only the first N questions.
    routing: return routing (router recall@k in the records). resume: reuse the records of an
    earlier run with the same settings.
    judge_url / judge_model: an OpenAI-compatible endpoint grading ``pred_answer`` 0-5 (none: offline
    EM / F1 only); api_key_env: the variable holding its key; judge_workers: concurrent requests;
    judge_cache: verdict cache file (default ``out/judge_cache.jsonl``).
    """

    bank: str
    queries: str
    out: str
    memory: str | None = None
    name: str | None = None
    case_name: str = "anonymous"
    doc_choice: str | None = None
    max_rounds: int = 4
    max_new_tokens: int = 256
    batch_size: int = 8
    device: str | None = None
    limit: int | None = None
    routing: bool = True
    resume: bool = True
    judge_url: str | None = None
    judge_model: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    judge_workers: int = 32
    judge_cache: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_rounds < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size, max_rounds and max_new_tokens must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if bool(self.judge_url) != bool(self.judge_model):
            raise ValueError("a judge needs both --judge-url and --judge-model")

    def run_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the records it reuses."""
        keys = ("bank", "queries", "memory", "doc_choice", "max_rounds", "max_new_tokens", "routing")
        return {k: getattr(self, k) for k in keys}


def bench_name(queries: str | Path) -> str:
    """``qdata_hotpotqa.pkl`` -> ``hotpotqa``."""
    stem = Path(queries).stem
    return stem[len("qdata_"):] if stem.startswith("qdata_") else stem


def _memory_texts(cfg: OfficialConfig, bank) -> dict[int, str]:
    """id -> text of the memory: the mdata file's (checked against a sample of the bank) or the bank's."""
    if cfg.memory:
        texts = dict(enumerate(read_memory(cfg.memory)))
        sample = list(texts)[:: max(1, len(texts) // 256)]
        snap = bank.snapshot()
        differ = [i for i in sample if texts[i].strip() and snap.text(i) != texts[i]]
        if differ:
            logger.warning("%s: %d of %d sampled documents differ from the bank's (first: id %d); is it the file "
                           "the bank was built from?", cfg.memory, len(differ), len(sample), differ[0])  # fmt: skip
        return texts
    texts = {}
    for i in bank.ids():
        if bank.parent(i) is None:
            texts[i] = bank.get_text(i)
    return texts


def _load_model(bank_path: str, device: str | None):
    from msa.memory import MemoryBank
    from msa.model import MSAForCausalLM, resolve_model_path
    from msa.tokenizer import load_tokenizer

    with MemoryBank.open(bank_path, readonly=True) as b:
        source = b.model_source
    if not source:
        raise ValueError(f"{bank_path} does not record which model encoded it; pass the model from Python")
    path = resolve_model_path(source)
    return MSAForCausalLM.from_pretrained(path, device=device or "cpu"), load_tokenizer(path)


def _our_record(index: int, q: Query, answer, prompt, texts: dict[int, str], routing: bool,
                max_rounds: int) -> dict[str, Any]:  # fmt: skip
    generated = release_text(prompt, q.question, answer.transcript)
    official = release_record(q.question, q.answer, q.gold, generated, texts, q.references)
    rounds = [{"requests": r.requests, "requested": r.requested, "retrieved": r.retrieved, "unknown": r.unknown}
              for r in answer.rounds]  # fmt: skip
    return {
        "index": index,
        "question": q.question,
        "answer": q.answer,
        "gold": q.gold,
        "gold_missing": q.missing,
        "prediction": answer.text,
        "official": official,
        "official_scores": set_scores(official["pred_id"], q.gold),
        "read": read_scores([r.retrieved for r in answer.rounds], q.gold),
        "read_recall_by_round": recall_by_round([r.retrieved for r in answer.rounds], q.gold, max_rounds),
        "rounds": rounds,
        "router": router_recall(answer.rounds[0].routing, q.gold) if routing and answer.rounds else {},
        "answer_scores": answer_scores(official["pred_answer"], q.answer),
        "engine_answer_scores": answer_scores(answer.text, q.answer),
        "timings": answer.timings,
    }


def _resume(cfg: OfficialConfig, out: Path, name: str, queries: list[Query]) -> dict[int, dict]:
    run_file, rec_file = out / f"{name}.run.json", out / f"{name}.records.jsonl"
    done: dict[int, dict] = {}
    if cfg.resume and run_file.is_file() and rec_file.is_file():
        if json.loads(run_file.read_text()) == cfg.run_key():
            try:
                for r in read_jsonl(rec_file):
                    i = r.get("index")
                    if isinstance(i, int) and i < len(queries) and r.get("question") == queries[i].question:
                        done[i] = r
            except ValueError as e:  # a torn last line after a crash: keep what parsed
                logger.warning("%s", e)
        else:
            logger.warning("%s: earlier records were made with other settings; starting over", rec_file)
    if done:
        logger.info("resuming: %d of %d questions already answered", len(done), len(queries))
    run_file.write_text(json.dumps(cfg.run_key(), indent=1))
    write_jsonl(rec_file, [done[i] for i in sorted(done)])
    return done


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def _mean(rows: list[dict], keys) -> dict[str, float]:
    rows = [r for r in rows if r]
    return mean_scores(rows, keys) | {"n": len(rows)} if rows else {}


def run_official(cfg: OfficialConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """Ask every question, write the outputs (module docstring); returns the summary."""
    from msa.engine import Engine
    from msa.memory import MemoryBank

    queries = read_queries(cfg.queries)
    if cfg.limit is not None:
        queries = queries[: cfg.limit]
    if not queries:
        raise ValueError(f"{cfg.queries} holds no queries")
    name = cfg.name or bench_name(cfg.queries)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None or tokenizer is None:
        model, tokenizer = _load_model(cfg.bank, cfg.device)
    with MemoryBank.open(cfg.bank, model=model, tokenizer=tokenizer, device=cfg.device, readonly=True) as bank:
        texts = _memory_texts(cfg, bank)
        gold_ids(queries, doc_to_idx(texts))
        engine = Engine(model, tokenizer, bank, device=cfg.device, doc_choice=cfg.doc_choice)
        done = _resume(cfg, out, name, queries)
        todo = [i for i in range(len(queries)) if i not in done]
        bar = tqdm(total=len(queries), initial=len(done), desc=f"official {name}", unit="q")
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            answers = engine.ask_batch([queries[i].question for i in batch], max_rounds=cfg.max_rounds,
                                       max_new_tokens=cfg.max_new_tokens, return_routing=cfg.routing)  # fmt: skip
            rows = [_our_record(i, queries[i], a, engine.prompt, texts, cfg.routing, cfg.max_rounds)
                    for i, a in zip(batch, answers)]  # fmt: skip
            write_jsonl(out / f"{name}.records.jsonl", rows, append=True)
            done.update(zip(batch, rows))
            bar.update(len(batch))
            logger.info("official %s: %d / %d questions", name, len(done), len(queries))
        bar.close()
    records = [done[i] for i in range(len(queries))]
    _write_json(out / f"{name}.json", release_report([r["official"] for r in records], cfg.case_name))
    summary = _summary(cfg, name, records)
    _judge(cfg, out, name, records, summary)
    _write_json(out / f"{name}.summary.json", summary)
    return summary


def _summary(cfg: OfficialConfig, name: str, records: list[dict]) -> dict[str, Any]:
    router_keys = sorted({k for r in records for k in r["router"]})
    return {
        "benchmark": name,
        "questions": len(records),
        "gold_missing": sum(r["gold_missing"] for r in records),
        "settings": asdict(cfg) | {"judge_url": bool(cfg.judge_url)},
        "release": {"precision": mean_scores([r["official_scores"] for r in records])},
        "ours": {
            "read": _mean([r["read"] for r in records], (*SCORE_KEYS, "rounds", "read")),
            "read_recall_by_round": [sum(col) / len(col) for col in zip(*(r["read_recall_by_round"] for r in records))],
            "router_round1": _mean([r["router"] for r in records], router_keys) if router_keys else {},
            "pred_answer": _mean([r["answer_scores"] for r in records], ("em", "token_f1")),
            "engine_answer": _mean([r["engine_answer_scores"] for r in records], ("em", "token_f1")),
        },
    }


def _judge(cfg: OfficialConfig, out: Path, name: str, records: list[dict], summary: dict) -> None:
    from msa.eval.judge import JudgeItem, LLMJudge, offline_scores

    preds = [r["official"]["pred_answer"] for r in records]
    answers = [r["answer"] for r in records]
    if not cfg.judge_url:
        summary["judge"] = {k: v for k, v in offline_scores(preds, answers).items() if k != "per_item"}
        return
    cache = cfg.judge_cache or str(out / "judge_cache.jsonl")
    judge = LLMJudge(cfg.judge_url, cfg.judge_model, api_key_env=cfg.api_key_env, cache=cache)
    items = [JudgeItem(r["question"], " / ".join(map(str, a)) if isinstance(a, (list, tuple)) else str(a), p)
             for r, a, p in zip(records, answers, preds)]  # fmt: skip
    s = judge.judge_many(items, workers=cfg.judge_workers)
    scores = [r.score if r.score is not None else 0 for r in s.results]
    result = {"mode": "llm", "model": cfg.judge_model, "mean_score": s.mean_failures_as_zero, "mean_graded": s.mean,
              "graded": s.graded, "failures": s.failures,
              "requests": sum(r.attempts for r in {id(r): r for r in s.results}.values()),
              "cached": sum(r.cached for r in s.results)}  # fmt: skip
    _write_json(out / f"{name}_llmscore.json", result | {"scores": scores, "replies": [r.reply for r in s.results]})
    summary["judge"] = result
