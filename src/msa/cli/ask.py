"""`msa ask BANK QUESTION`: one question through the engine, ids shown as the user gave them."""

from __future__ import annotations

import json
import os
import sys

from msa.cli.common import bank_model, check_device
from msa.config import DOC_CHOICES


def _user_ids(answer, bank) -> dict:
    """``answer.to_dict()`` with the engine's internal document ids replaced by the user's ids."""
    known = lambda i: bank.user_id(i)  # noqa: E731
    out = answer.to_dict()
    rounds = []
    for info in answer.rounds:
        r = dict(info.__dict__)
        r["retrieved"] = [known(i) for i in info.retrieved]
        r["requested"] = [known(i) if i not in info.unknown else i for i in info.requested]
        r["routing"] = {layer: [(known(i), s) for i, s in sel] for layer, sel in info.routing.items()}
        rounds.append(r)
    out["rounds"] = rounds
    return out


def _relaunch_parallel(args) -> None:
    """Memory Parallel: run the same question under torchrun, every rank serving a shard of the bank."""
    flags = ["--max-rounds", str(args.max_rounds), "--max-new-tokens", str(args.max_new_tokens)]
    flags += ["--json"] * args.json + ["--routing"] * args.routing + ["--no-interleave"] * args.no_interleave
    flags += ["--doc-choice", args.doc_choice] if args.doc_choice else []
    flags += ["--timeout", str(args.timeout)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "-m", "msa.parallel",
           "ask", args.bank, args.question, *flags]  # fmt: skip
    os.execvp(cmd[0], cmd)


def cmd_ask(args) -> int:
    from msa.engine import Engine
    from msa.memory import MemoryBank

    if args.nproc > 1:
        _relaunch_parallel(args)
    model, tok = bank_model(args.bank, args.device, args.model)
    device = check_device(args.device)
    with MemoryBank.open(args.bank, model=model, tokenizer=tok, device=device, readonly=True) as bank:
        engine = Engine(model, tok, bank, device=device, doc_choice=args.doc_choice)
        answer = engine.ask(args.question, interleave=not args.no_interleave, max_rounds=args.max_rounds,
                            max_new_tokens=args.max_new_tokens, return_routing=args.routing)  # fmt: skip
        shown = _user_ids(answer, bank)
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    print(answer.text)
    for r, info in enumerate(shown["rounds"], 1):
        asked = f"asked for {info['requests']}, " if info["requests"] else ""
        unknown = f", unknown ids {info['unknown']}" if info["unknown"] else ""
        seconds = sum(v for k, v in info["timings"].items() if k in ("prefill", "decode", "choose"))
        retrieved = "[" + ", ".join(str(i) for i in info["retrieved"]) + "]"
        print(f"  round {r}: {asked}retrieved {retrieved}{unknown} ({seconds:.2f} s)")
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("ask", help="ask a question against a bank")
    q.add_argument("bank")
    q.add_argument("question")
    q.set_defaults(fn=cmd_ask)
    q.add_argument("--json", action="store_true")
    q.add_argument("--model", default=None,
                   help="the bank's model, if its directory moved since create (default: the recorded one)")
    q.add_argument("--no-interleave", action="store_true", help="one retrieval round only")
    q.add_argument("--doc-choice", default=None, choices=DOC_CHOICES,
                   help="documents Memory Interleave reads: the ids the model writes (official), or for each "
                        "request the model writes the router's best unread document for it (routed) "
                        "(default: the model's policy.doc_choice)")
    q.add_argument("--max-rounds", type=int, default=4)
    q.add_argument("--max-new-tokens", type=int, default=256)
    q.add_argument("--routing", action="store_true", help="include per-layer routing in --json output")
    q.add_argument("--device", default=None)
    q.add_argument("--nproc", type=int, default=1, help="Memory Parallel over N processes (torchrun)")
    q.add_argument("--timeout", type=float, default=120.0,
                   help="with --nproc: seconds before a dead, hung or stopped rank is named and the job ended")
