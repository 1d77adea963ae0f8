"""``msa bench ...``: scaling run, RAG / full-context baselines, LLM judge over result records.

    msa bench scaling --model DIR --work-dir W --out bench/results/scaling.json [--plot P.png]
                      [--sizes 16K,128K,1M,10M,100M] [--ruler-contexts 32K,128K,1M | none] ...
    msa bench rag     --model DIR --work-dir W --out bench/results/rag.json [--embedder minilm|hashing]
    msa bench judge   --records R.records.jsonl --base-url URL --judge-model NAME [--api-key-env VAR]
    msa bench official --bank BANK --queries qdata_X.pkl --out DIR [--memory mdata_X.pkl]
                      [--judge-url URL --judge-model NAME] [--doc-choice generated|routed|named] ...
    msa bench official-data {bios,ruler} --out DIR [--name NAME] [--json]   (synthetic mdata/qdata files)
    msa bench chunk   INPUT --out mdata_X.pkl [--doc-tokens 512] [--field context]   (long context -> memory file)

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
from msa.prompt import PROMPT_FORMATS

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
                   help="documents Memory Interleave reads (default: the model's policy.doc_choice)")
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
    r.add_argument("--prompt", default=None, choices=sorted(PROMPT_FORMATS),
                   help="reader prompt layout (default: the model's policy.prompt_format)")
    r.add_argument("--no-own-questions", action="store_true",
                   help="only the shared questions (no questions drawn from each memory's own people)")

    j = sub.add_parser("judge", help="grade records (question, answers, prediction) with an LLM judge")
    j.add_argument("--records", required=True, help="*.records.jsonl written by scaling or rag")
    j.add_argument("--base-url", required=True, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", required=True)
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the env var holding the API key")
    j.add_argument("--workers", type=int, default=8)
    j.add_argument("--out", default=None, help="JSON summary path (default: stdout)")
    _official_parsers(sub)
    return parser


def _official_parsers(sub) -> None:
    o = sub.add_parser("official", help="the authors' qdata/mdata files: their output JSON, metrics and judge")
    o.add_argument("--bank", required=True, help="a bank holding the memory file (msa bank add BANK mdata_X.pkl)")
    o.add_argument("--queries", required=True, help="qdata_X.pkl, or its JSON form ({question, labels, answer})")
    o.add_argument("--out", required=True, help="output directory (X.json, X.records.jsonl, X.summary.json)")
    o.add_argument("--memory", default=None, help="the mdata file of the bank: gold ids from its texts, as the release")
    o.add_argument("--name", default=None, help="output file stem (default: X of qdata_X)")
    o.add_argument("--case-name", default="anonymous", help="key of the output JSON (the release's default)")
    o.add_argument("--doc-choice", default=None, choices=DOC_CHOICES, help="Engine doc_choice (default: the model's)")
    o.add_argument("--max-rounds", type=int, default=4)
    o.add_argument("--max-new-tokens", type=int, default=256)
    o.add_argument("--batch-size", type=int, default=8, help="questions per ask_batch")
    o.add_argument("--limit", type=int, default=None, help="only the first N questions")
    o.add_argument("--device", default=None)
    o.add_argument("--no-routing", action="store_true", help="do not return routing (no router recall@k)")
    o.add_argument("--no-resume", action="store_true", help="ask every question again even if records exist")
    o.add_argument("--judge-url", default=None, help="OpenAI-compatible API root; none: offline EM / F1 only")
    o.add_argument("--judge-model", default=None, help="e.g. google/gemini-2.5-flash (the release's judge)")
    o.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the judge's API key")
    o.add_argument("--judge-workers", type=int, default=32)
    o.add_argument("--judge-cache", default=None, help="verdict cache (default DIR/judge_cache.jsonl)")

    d = sub.add_parser("official-data", help="small synthetic mdata_/qdata_ files in the release's formats")
    d.add_argument("source", choices=("bios", "ruler"))
    d.add_argument("--out", required=True, help="directory")
    d.add_argument("--name", default=None, help="file stem (default: the source)")
    d.add_argument("--json", action="store_true", help="the JSON forms instead of pickles")
    d.add_argument("--seed", type=int, default=3)
    d.add_argument("--documents", type=int, default=48, help="bios: people (= documents)")
    d.add_argument("--single", type=int, default=4, help="bios: single-hop questions")
    d.add_argument("--multi", type=int, default=4, help="bios: 2-hop questions")
    d.add_argument("--tasks", default="niah_single_1,niah_multikey_1", help="ruler: NIAH tasks")
    d.add_argument("--context-tokens", type=_size, default="2K", help="ruler: context length per sample")
    d.add_argument("--samples", type=int, default=1, help="ruler: samples per task")
    d.add_argument("--doc-tokens", type=int, default=128, help="ruler: document length when chunking")

    c = sub.add_parser("chunk", help="cut a long context (text file, or LongBench-style .jsonl) into a memory file")
    c.add_argument("input", help="a UTF-8 text file (one context) or .jsonl with a context field per line")
    c.add_argument("--out", required=True, help="mdata_X.pkl (or mdata_X.json)")
    c.add_argument("--doc-tokens", type=int, default=512, help="document length in units (words, digits, marks)")
    c.add_argument("--field", default="context", help=".jsonl: the field holding the context")


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
            prompt=args.prompt, own_questions=not args.no_own_questions,
        )  # fmt: skip
        run_baselines(cfg)
        print(f"wrote {cfg.out}")
        return 0
    if args.bench in ("official", "official-data", "chunk"):
        return _official(args)
    return _judge(args)


def _official(args) -> int:
    from msa.data.official import OfficialFormatError
    from msa.memory import BankError
    from msa.model import CheckpointError

    try:
        return _official_run(args)
    except (OfficialFormatError, BankError, CheckpointError, ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"msa: error: {msg}", file=sys.stderr)
        return 2


def _official_run(args) -> int:
    from msa.data import official as od

    if args.bench == "chunk":
        docs = [d for ctx in od.contexts_of(args.input, args.field) for d in od.chunk_text(ctx, args.doc_tokens)]
        if not docs:
            raise ValueError(f"{args.input} holds no text")
        od.write_memory(args.out, docs)
        print(f"wrote {args.out}: {len(docs)} documents")
        return 0
    if args.bench == "official-data":
        suffix, name = (".json" if args.json else ".pkl"), args.name or args.source
        if args.source == "bios":
            paths = od.bios_files(args.out, name, args.documents, args.single, args.multi, args.seed, suffix)
        else:
            tasks = tuple(t for t in args.tasks.split(",") if t)
            unknown = [t for t in tasks if t not in TASKS]
            if unknown:
                raise ValueError(f"unknown RULER tasks {unknown}")
            paths = od.ruler_files(args.out, name, tasks, args.context_tokens, args.samples, args.doc_tokens,
                                   args.seed, suffix)  # fmt: skip
        print("wrote " + " and ".join(map(str, paths)))
        return 0
    from msa.eval.official import OfficialConfig, run_official

    cfg = OfficialConfig(
        bank=args.bank, queries=args.queries, out=args.out, memory=args.memory, name=args.name,
        case_name=args.case_name, doc_choice=args.doc_choice, max_rounds=args.max_rounds,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, device=args.device, limit=args.limit,
        routing=not args.no_routing, resume=not args.no_resume, judge_url=args.judge_url,
        judge_model=args.judge_model, api_key_env=args.api_key_env, judge_workers=args.judge_workers,
        judge_cache=args.judge_cache,
    )  # fmt: skip
    summary = run_official(cfg)
    rel, judge = summary["release"]["precision"], summary["judge"]
    score = (f"judge mean {judge['mean_score']:.3f} (0-5)" if judge.get("mode") == "llm"
             else f"offline EM {judge['em']:.3f}, F1 {judge['token_f1']:.3f}")  # fmt: skip
    print(f"{summary['benchmark']}: {summary['questions']} questions; precision {rel['precision']:.3f} recall "
          f"{rel['recall']:.3f} f1 {rel['f1']:.3f} iou {rel['iou']:.3f}; {score}; wrote {args.out}")  # fmt: skip
    return 0


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
