"""`msa bank ...`: create, add, update, delete, list, get, export, stats, compact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from msa.cli.common import UsageError, bank_model, check_device, load_model, model_source, print_json, read_text

ON_DUPLICATE = ("skip", "error", "replace")


def _open_for_writing(args):
    from msa.memory import MemoryBank

    model, tok = bank_model(args.bank, args.device, args.model)
    return MemoryBank.open(args.bank, model=model, tokenizer=tok, device=check_device(args.device))


def _open_readonly(bank: str):
    from msa.memory import MemoryBank

    return MemoryBank.open(bank, readonly=True)


def _shown(ids: list, most: int = 10) -> str:
    """A short list of ids as the user gave them: ``city-00, 7, ...``."""
    head = ", ".join(str(i) for i in ids[:most])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > most else "")


def add_summary(report) -> str:
    """``added N, unchanged M[, replaced R][, split K long documents into P pieces: ids]``."""
    parts = [f"added {report.added}", f"unchanged {report.unchanged}"]
    if report.replaced:
        parts.append(f"replaced {report.replaced}")
    if report.split:
        parts.append(f"split {len(report.split)} long documents into {report.pieces} pieces ({_shown(list(report.split))})")
    return ", ".join(parts)


def cmd_create(args) -> int:
    from msa.memory import MemoryBank
    from msa.prompt import prompt_format

    p = Path(args.bank)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise UsageError(f"{args.bank} already exists: choose a new path (or delete the old bank first)")
    model, tok = load_model(args.model, args.device)
    fmt = prompt_format(model.config.policy.prompt_format)  # the template the model was trained with
    limits = {} if args.max_doc_tokens is None else {"max_doc_tokens": args.max_doc_tokens}
    MemoryBank.create(args.bank, model, tok, fmt, model_source=model_source(args.model), **limits).close()
    print(f"created {args.bank} (model {model_source(args.model)})")
    return 0


def cmd_add(args) -> int:
    from msa.data.jsonl import read_documents
    from msa.memory import BankError

    docs = read_documents(args.file)
    if not docs.texts:
        raise UsageError(f"{docs.name} holds no documents")
    with _open_for_writing(args) as bank:
        if args.max_tokens is not None:  # this session only: reject instead of splitting
            if args.max_tokens < 1:
                raise UsageError("--max-tokens must be >= 1")
            limit = min(args.max_tokens, bank.settings.max_doc_tokens)  # never longer pieces than the bank's
            bank.settings = dataclasses.replace(bank.settings, max_doc_tokens=limit, on_long="error")
        try:
            report = bank.add_documents(docs.texts, docs.ids, on_duplicate=args.on_duplicate, progress=args.progress)
        except BankError as e:  # "text 3 ..." means the file's 4th document: name the file
            raise UsageError(f"{docs.name}: {e}") from None
    print(add_summary(report))
    return 0


def cmd_update(args) -> int:
    text = read_text(args.file)
    with _open_for_writing(args) as bank:
        doc_id = bank.parse_id(args.id)
        before = bank.get_text(doc_id)
        bank.update(doc_id, text)
    print(f"{'unchanged' if before == text else 'updated'} {doc_id}")
    return 0


def cmd_delete(args) -> int:
    from msa.memory import MemoryBank

    with MemoryBank.open(args.bank) as bank:
        report = bank.delete([bank.parse_id(i) for i in args.ids])
    line = f"deleted {len(report.deleted)} documents"
    if report.already_deleted:
        line += f"; already deleted: {_shown(report.already_deleted)}"
    print(line)
    return 0


def cmd_list(args) -> int:
    if args.offset < 0 or (args.limit is not None and args.limit < 0):
        raise UsageError("--offset and --limit must be >= 0")
    with _open_readonly(args.bank) as bank:
        ids = bank.list_ids(args.offset, args.limit)
    if args.json:
        print_json(ids)
    else:
        for i in ids:
            print(i)
    return 0


def cmd_get(args) -> int:
    with _open_readonly(args.bank) as bank:
        doc_id = bank.parse_id(args.id)
        text = bank.get_text(doc_id)
    if args.json:
        print_json({"id": doc_id, "text": text})
    else:
        print(text)
    return 0


def cmd_export(args) -> int:
    from msa.data.jsonl import write_jsonl

    out = args.out or "-"
    if out != "-" and Path(out).exists() and not args.force:
        raise UsageError(f"{out} already exists (pass --force to overwrite)")
    with _open_readonly(args.bank) as bank:
        n = write_jsonl(out, ({"id": i, "text": t} for i, t in bank.documents()))
    if out != "-":
        print(f"exported {n} documents to {out}", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    with _open_readonly(args.bank) as bank:
        stats = bank.stats()
    if args.json:
        print_json(stats)
    else:
        print("\n".join(f"{k}: {v}" for k, v in stats.items()))
    return 0


def cmd_compact(args) -> int:
    from msa.memory import MemoryBank

    with MemoryBank.open(args.bank) as bank:
        print(json.dumps(bank.compact()))
    return 0


def add_parsers(sub) -> None:
    """The ``msa bank`` subcommands on ``sub`` (the top-level subparsers)."""
    bank = sub.add_parser("bank", help="create, change and read memory banks")
    bsub = bank.add_subparsers(dest="bank_cmd", required=True, metavar="COMMAND")

    def cmd(name: str, fn, help: str, writes: bool = False) -> argparse.ArgumentParser:
        p = bsub.add_parser(name, help=help, description=help)
        p.add_argument("bank", help="the bank directory")
        p.set_defaults(fn=fn)
        if writes:
            p.add_argument("--device", default=None, help="where documents are encoded (default cpu)")
            p.add_argument("--model", default=None,
                           help="the bank's model, if its directory moved since create (default: the recorded one)")
        return p

    c = cmd("create", cmd_create, "create an empty bank for a model")
    c.add_argument("--model", required=True, help="model directory, training checkpoint, or shipped model name")
    c.add_argument("--device", default=None)
    c.add_argument("--max-doc-tokens", type=int, default=None,
                   help="longer documents are split into pieces of at most this many tokens (default 8192)")
    a = cmd("add", cmd_add, "encode and add documents", writes=True)
    a.add_argument("file", help=".jsonl ({\"id\"?, \"text\"} per line), .json (an array of those or of strings), "
                                "other: plain text, documents separated by blank lines; - = stdin")  # fmt: skip
    a.add_argument("--on-duplicate", choices=ON_DUPLICATE, default="skip",
                   help="an id-less text already stored (same content): skip it (default: a re-run adds only "
                        "what is missing) or error; a stored id given another text: an error unless replace "
                        "(then the document is updated)")  # fmt: skip
    a.add_argument("--max-tokens", type=int, default=None,
                   help="reject (exit 2, nothing added) any document longer than this many tokens (or than "
                        "the bank's --max-doc-tokens) instead of splitting it into pieces")  # fmt: skip
    a.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="the encoding progress bar on a terminal (default: on)")
    u = cmd("update", cmd_update, "replace one document's text", writes=True)
    u.add_argument("id", help="the document's id as given at add")
    u.add_argument("file", help="file holding the new text (whole file; - = stdin)")
    d = cmd("delete", cmd_delete, "delete documents by id (space comes back at compact)")
    d.add_argument("ids", nargs="+", metavar="ID", help='ids as given at add ("str:7" / "int:7" when both exist)')
    ls = cmd("list", cmd_list, "ids of the stored documents, in storage order")
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--limit", type=int, default=None)
    ls.add_argument("--json", action="store_true", help="one JSON array")
    g = cmd("get", cmd_get, "the text of one document")
    g.add_argument("id")
    g.add_argument("--json", action="store_true")
    e = cmd("export", cmd_export, "every document as JSONL {\"id\", \"text\"} (re-addable with msa bank add)")
    e.add_argument("--out", default=None, help="output file (default stdout)")
    e.add_argument("--force", action="store_true", help="overwrite --out")
    s = cmd("stats", cmd_stats, "documents, tokens, chunks, bytes and the model that encoded the bank")
    s.add_argument("--json", action="store_true")
    cmd("compact", cmd_compact, "rewrite segments without deleted documents")
