"""``msa bench ...``: scaling run, RAG / full-context baselines, LLM judge over result records.

    msa bench scaling --model DIR --work-dir W --out bench/results/scaling.json [--plot P.png]
                      [--sizes 16K,128K,1M,10M,100M] [--ruler-contexts 32K,128K,1M | none] ...
    msa bench rag     --model DIR --work-dir W --out bench/results/rag.json [--embedder minilm|hashing]
    msa bench judge   --records R.records.jsonl --base-url URL --judge-model NAME [--api-key-env VAR]

``bench_main(argv) -> exit code`` is the entry; the ``msa`` command and bench/*.py call it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from msa.config import DOC_CHOICES
from msa.data.ruler import TASKS

logger = logging.getLogger(__name__)

__all__ = ["bench_main", "build_parser"]


def _sizes(text: str) -> tuple[int, ...]:
    from msa.eval.scaling import parse_size

    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(parse_size(s) for s in text.split(","))


def _size(text: str) -> int:
    from msa.eval.scaling import parse_size

    return parse_size(text)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory or shipped model name")
    p.add_argument("--work-dir", required=True, help="where memory banks / embeddings are built and reused")
    p.add_argument("--out", required=True, help="result JSON path (records go to *.records.jsonl beside it)")
    p.add_argument("--sizes", type=_sizes, default=None, help="memory sizes in tokens, e.g. 16K,128K,1M,10M,100M")
    p.add_argument("--num-single", type=int, default=100)
    p.add_argument("--num-multi", type=int, default=100)
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--question-seed", type=int, default=1_000_003)
    p.add_argument("--question-pool", type=_size, default="16K",
                   help="questions are about the people of a memory this size (default 16K; any run asks the same)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msa bench", description="MSA benchmarks")
    sub = parser.add_subparsers(dest="bench", required=True)

    s = sub.add_parser("scaling", help="QA / routing / latency vs memory size, and RULER NIAH")
    _common(s)
    s.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")
    s.add_argument("--max-rounds", type=int, default=4)
    s.add_argument("--ruler-contexts", type=_sizes, default=None, help="e.g. 32K,128K,1M, or none")
    s.add_argument("--ruler-tasks", default=",".join(TASKS))
    s.add_argument("--ruler-samples", type=int, default=4)
    s.add_argument("--ruler-doc-tokens", type=int, default=512)
    s.add_argument("--no-records", action="store_true", help="do not write per-question records")
    s.add_argument("--doc-choice", default=None, choices=DOC_CHOICES,
                   help="documents Memory Interleave reads (default: the model's msa.doc_choice)")
    s.add_argument("--wordings", default="", help="held-out wordings asked too, e.g. paraphrase,polite,lowercase")
    s.add_argument("--wording-sizes", type=_sizes, default=(), help="sizes the wordings are asked at (default all)")
    s.add_argument("--no-own-questions", action="store_true",
                   help="only the shared questions (no questions drawn from each memory's own people)")

    r = sub.add_parser("rag", help="dense RAG top-k and full-context baselines on the same questions")
    _common(r)
    r.add_argument("--ks", default="1,5,10")
    r.add_argument("--embedder", choices=("minilm", "hashing"), default="minilm")
    r.add_argument("--layout", choices=("context", "transcript"), default="context")
    r.add_argument("--max-context-tokens", type=int, default=None)
    r.add_argument("--full-context-tokens", type=int, default=8192, help="0 skips the full-context baseline")

    j = sub.add_parser("judge", help="grade records (question, answers, prediction) with an LLM judge")
    j.add_argument("--records", required=True, help="*.records.jsonl written by scaling or rag")
    j.add_argument("--base-url", required=True, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", required=True)
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the env var holding the API key")
    j.add_argument("--workers", type=int, default=8)
    j.add_argument("--out", default=None, help="JSON summary path (default: stdout)")
    return parser


def bench_main(argv: list[str] | None = None) -> int:
    """Run one benchmark; returns the process exit code (2 on usage errors)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.bench == "scaling":
        from msa.eval.scaling import DEFAULT_RULER_CONTEXTS, DEFAULT_SIZES, ScalingConfig, run_scaling

        tasks = tuple(t for t in args.ruler_tasks.split(",") if t)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            print(f"msa bench: unknown RULER tasks {unknown}", file=sys.stderr)
            return 2
        cfg = ScalingConfig(
            work_dir=args.work_dir, out=args.out, model=args.model, plot=args.plot,
            sizes=DEFAULT_SIZES if args.sizes is None else args.sizes, world_seed=args.world_seed,
            question_seed=args.question_seed, question_pool=args.question_pool, num_single=args.num_single,
            num_multi=args.num_multi,
            max_rounds=args.max_rounds, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size or 1,
            ruler_contexts=DEFAULT_RULER_CONTEXTS if args.ruler_contexts is None else args.ruler_contexts,
            ruler_tasks=tasks, ruler_samples=args.ruler_samples, ruler_doc_tokens=args.ruler_doc_tokens,
            device=args.device, records=not args.no_records, doc_choice=args.doc_choice,
            wordings=tuple(w for w in args.wordings.split(",") if w), wording_sizes=tuple(args.wording_sizes),
            own_questions=not args.no_own_questions,
        )  # fmt: skip
        if cfg.model is None:
            print("msa bench scaling: --model is required", file=sys.stderr)
            return 2
        run_scaling(cfg)
        print(f"wrote {cfg.out}" + (f" and {cfg.plot}" if cfg.plot else ""))
        return 0
    if args.bench == "rag":
        from msa.eval.baselines import RagConfig, run_baselines
        from msa.eval.scaling import DEFAULT_SIZES

        if args.model is None:
            print("msa bench rag: --model is required", file=sys.stderr)
            return 2
        cfg = RagConfig(
            work_dir=args.work_dir, out=args.out, model=args.model,
            sizes=DEFAULT_SIZES if args.sizes is None else args.sizes, world_seed=args.world_seed,
            question_seed=args.question_seed, question_pool=args.question_pool, num_single=args.num_single,
            num_multi=args.num_multi,
            ks=tuple(int(k) for k in args.ks.split(",")), embedder=args.embedder, layout=args.layout,
            max_new_tokens=args.max_new_tokens, max_context_tokens=args.max_context_tokens,
            full_context_tokens=args.full_context_tokens, batch_size=args.batch_size or 8, device=args.device,
        )  # fmt: skip
        run_baselines(cfg)
        print(f"wrote {cfg.out}")
        return 0
    return _judge(args)


def _judge(args) -> int:
    from msa.eval.judge import JudgeItem, LLMJudge

    path = Path(args.records)
    if not path.is_file():
        print(f"msa bench judge: no such file: {path}", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if "prediction" in r and r.get("answers")]
    judge = LLMJudge(args.base_url, args.judge_model, api_key_env=args.api_key_env)
    by_section: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_section.setdefault(f"{r.get('section', '')}@{r.get('memory_tokens', r.get('context_tokens', ''))}", []).append(i)
    items = [JudgeItem(r["question"], " / ".join(r["answers"]), r["prediction"]) for r in rows]
    summary = judge.judge_many(items, workers=args.workers)
    report = {"overall": summary.to_dict(), "sections": {}}
    for name, idx in by_section.items():
        scores = [summary.results[i].score for i in idx]
        ok = [s for s in scores if s is not None]
        report["sections"][name] = {"mean": sum(ok) / len(ok) if ok else None, "graded": len(ok),
                                    "failures": len(scores) - len(ok)}  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0
