"""The `msa` command: a thin shell over the library. User errors exit 2 with a one-line message."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from msa.config import DOC_CHOICES

logger = logging.getLogger("msa")


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _load_model(name: str, device: str | None):
    from msa.model import MSAForCausalLM, resolve_model_path
    from msa.tokenizer import load_tokenizer

    path = resolve_model_path(name)
    model = MSAForCausalLM.from_pretrained(path, device=device or "cpu")
    if not (path / "tokenizer.json").is_file():
        raise UsageError(f"{path} has no tokenizer.json")
    return model, load_tokenizer(path)


def _read_documents(file: str) -> tuple[list[str], list | None]:
    """FILE: .jsonl with {"id"?, "text"} per line, or text with blank-line-separated documents; '-' = stdin."""
    if file == "-":
        raw = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        p = Path(file)
        if not p.is_file():
            raise UsageError(f"no such file: {file}")
        raw, name = p.read_bytes(), file
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{name} is not UTF-8 text (byte {e.start})") from None
    if file.endswith(".jsonl") or (file == "-" and text.lstrip().startswith("{")):
        texts, ids = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{name}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise UsageError(f'{name}:{n}: each line must be an object with a "text" string')
            texts.append(rec["text"])
            ids.append(rec.get("id"))
        return texts, (ids if any(i is not None for i in ids) else None)
    paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return [p for p in paras if p], None


def cmd_bank(args) -> int:
    from msa.memory import MemoryBank

    if args.bank_cmd == "create":
        model, tok = _load_model(args.model, args.device)
        MemoryBank.create(args.bank, model, tok, model_source=str(args.model)).close()
        print(f"created {args.bank}")
        return 0
    if args.bank_cmd == "stats":
        with MemoryBank.open(args.bank, readonly=True) as bank:
            stats = bank.stats()
        print(json.dumps(stats, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in stats.items()))
        return 0
    if args.bank_cmd == "delete":
        with MemoryBank.open(args.bank) as bank:
            bank.delete([_parse_id(i) for i in args.ids])
        print(f"deleted {len(args.ids)} documents")
        return 0
    if args.bank_cmd == "compact":
        with MemoryBank.open(args.bank) as bank:
            print(json.dumps(bank.compact()))
        return 0
    if args.bank_cmd == "add":
        texts, ids = _read_documents(args.file)
        if not texts:
            raise UsageError(f"{args.file} holds no documents")
        model, tok = _bank_model(args.bank, args.device)
        with MemoryBank.open(args.bank, model=model, tokenizer=tok, device=args.device) as bank:
            added = bank.add(texts, ids)
        print(f"added {len(added)} documents")
        return 0
    raise UsageError(f"unknown bank command {args.bank_cmd}")


def _parse_id(s: str):
    return int(s) if s.lstrip("-").isdigit() else s


def _bank_model(bank: str, device: str | None):
    from msa.memory import MemoryBank

    with MemoryBank.open(bank, readonly=True) as b:
        name = b.model_source
    if not name:
        raise UsageError(f"{bank} does not record which model encoded it; open it from Python with that model")
    return _load_model(name, device)


def cmd_ask(args) -> int:
    from msa.engine import Engine
    from msa.memory import MemoryBank

    if args.nproc > 1:  # Memory Parallel: relaunch under torchrun, every rank serving a shard
        import os

        flags = ["--max-rounds", str(args.max_rounds), "--max-new-tokens", str(args.max_new_tokens)]
        flags += ["--json"] * args.json + ["--routing"] * args.routing + ["--no-interleave"] * args.no_interleave
        flags += ["--doc-choice", args.doc_choice] if args.doc_choice else []
        flags += ["--timeout", str(args.timeout)]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "-m", "msa.parallel",
               "ask", args.bank, args.question, *flags]  # fmt: skip
        os.execvp(cmd[0], cmd)

    model, tok = _bank_model(args.bank, args.device)
    with MemoryBank.open(args.bank, model=model, tokenizer=tok, device=args.device, readonly=True) as bank:
        engine = Engine(model, tok, bank, device=args.device, doc_choice=args.doc_choice)
        answer = engine.ask(args.question, interleave=not args.no_interleave, max_rounds=args.max_rounds,
                            max_new_tokens=args.max_new_tokens, return_routing=args.routing)  # fmt: skip
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
    else:
        print(answer.text)
        for r, info in enumerate(answer.rounds, 1):
            asked = f"asked for {info.named}, " if info.named else ""
            unknown = f", unknown ids {info.unknown}" if info.unknown else ""
            seconds = sum(v for k, v in info.timings.items() if k in ("prefill", "decode", "lookup"))
            print(f"  round {r}: {asked}retrieved {info.retrieved}{unknown} ({seconds:.2f} s)")
    return 0


def cmd_demo(args) -> int:
    from msa.demo import DemoConfig, run

    run(DemoConfig(documents=args.documents, questions=args.questions))
    return 0


def cmd_train(args) -> int:
    from msa.train import main as train_main

    train_main(args.recipe, args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msa", description="Memory Sparse Attention: memory banks, asking, training.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True)

    bank = sub.add_parser("bank", help="create and change memory banks")
    bsub = bank.add_subparsers(dest="bank_cmd", required=True)
    c = bsub.add_parser("create", help="create an empty bank for a model")
    c.add_argument("bank")
    c.add_argument("--model", required=True, help="checkpoint directory or shipped model name")
    c.add_argument("--device", default=None)
    a = bsub.add_parser("add", help="encode and add documents (.jsonl {id?, text} lines, or blank-line paragraphs; - = stdin)")
    a.add_argument("bank")
    a.add_argument("file")
    a.add_argument("--device", default=None)
    d = bsub.add_parser("delete", help="delete documents by id")
    d.add_argument("bank")
    d.add_argument("ids", nargs="+")
    s = bsub.add_parser("stats", help="documents, tokens, chunks, bytes")
    s.add_argument("bank")
    s.add_argument("--json", action="store_true")
    k = bsub.add_parser("compact", help="rewrite segments without deleted documents")
    k.add_argument("bank")

    q = sub.add_parser("ask", help="ask a question against a bank")
    q.add_argument("bank")
    q.add_argument("question")
    q.add_argument("--json", action="store_true")
    q.add_argument("--no-interleave", action="store_true", help="one retrieval round only")
    q.add_argument("--doc-choice", default=None, choices=DOC_CHOICES,
                   help="documents Memory Interleave reads: the ids the model writes (official), the "
                        "router's best unread ones (routed), or the best unread one for each name the model "
                        "writes (named) (default: the model's msa.doc_choice)")
    q.add_argument("--max-rounds", type=int, default=4)
    q.add_argument("--max-new-tokens", type=int, default=256)
    q.add_argument("--routing", action="store_true", help="include per-layer routing in --json output")
    q.add_argument("--device", default=None)
    q.add_argument("--nproc", type=int, default=1, help="Memory Parallel over N processes (torchrun)")
    q.add_argument("--timeout", type=float, default=120.0,
                   help="with --nproc: seconds before a dead, hung or stopped rank is named and the job ended")

    dm = sub.add_parser("demo", help="the end-to-end demo (`make demo`)")
    dm.add_argument("--documents", type=int, default=4096, help="people in the memory (~90 tokens each)")
    dm.add_argument("--questions", type=int, default=4)

    b = sub.add_parser("bench", help="evaluation runs: msa bench {scaling,rag,judge} ... (see msa bench --help)",
                       add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)

    from msa.server.main import add_arguments as add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="serve banks over HTTP: OpenAI-compatible API + memory API"))

    t = sub.add_parser("train", help="run a training recipe: msa train RECIPE [key=value ...]")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*")
    return p


def cmd_bench(args) -> int:
    from msa.eval.cli import bench_main

    return bench_main(args.rest)


def cmd_serve(args) -> int:
    from msa.server import main as serve_main

    return serve_main(args)


COMMANDS = {"bank": cmd_bank, "ask": cmd_ask, "bench": cmd_bench, "demo": cmd_demo, "serve": cmd_serve, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser: msa bench {scaling,rag,judge} ...
        from msa.eval.cli import bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from msa.memory import BankError
    from msa.model import CheckpointError

    try:
        return COMMANDS[args.cmd](args)
    except (UsageError, BankError, CheckpointError, ValueError, KeyError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"msa: error: {msg}", file=sys.stderr)
        return 2
