"""The `msa` command: a thin shell over the library.

Every user mistake (a missing file, a bad id, a bank that exists, a device this machine lacks, ...)
prints one line ``msa: error: ...`` on stderr and exits 2; a closed output pipe (``| head``) ends
quietly. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from msa.cli import ask, bank, train
from msa.cli.common import UsageError

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msa", description="Memory Sparse Attention: memory banks, asking, training.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    bank.add_parsers(sub)
    ask.add_parser(sub)
    train.add_parsers(sub)
    sub.add_parser("bench", help="evaluation runs: msa bench {scaling,rag,judge,official,official-data,chunk} ... "
                                 "(see msa bench --help)", add_help=False)  # fmt: skip
    from msa.server.main import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="serve banks over HTTP: OpenAI-compatible API + memory API")
    add_serve_arguments(serve)
    serve.set_defaults(fn=_serve)
    return p


def _serve(args) -> int:
    from msa.server import main as serve_main

    return serve_main(args)


def _user_errors() -> tuple[type[BaseException], ...]:
    from msa.data.jsonl import DocumentFileError
    from msa.memory import BankError
    from msa.model import CheckpointError
    from msa.train.export import ExportError

    return (UsageError, BankError, CheckpointError, ExportError, DocumentFileError, ValueError, KeyError,
            FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)  # fmt: skip


def _one_line(e: BaseException) -> str:
    plain_key_error = isinstance(e, KeyError) and type(e).__str__ is KeyError.__str__ and e.args
    msg = str(e.args[0]) if plain_key_error else str(e)  # KeyError's str() is the repr of its message
    return msg.strip().splitlines()[0] if msg.strip() else type(e).__name__


def _run(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:  # its own parser: msa bench {scaling,rag,judge} ...
        from msa.eval.cli import bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except _user_errors() as e:
        print(f"msa: error: {_one_line(e)}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Run the ``msa`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`msa bank list B | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("msa: interrupted (what was committed before stays; re-run to finish)", file=sys.stderr)
        return 130
