"""``torchrun --nproc-per-node N -m msa.parallel ask BANK "question"``: ask over a sharded bank.

Every rank loads the model the bank records and its shard; rank 0 prints the answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from msa.config import DOC_CHOICES

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m msa.parallel", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ask = sub.add_parser("ask", help="answer a question over a bank sharded across the ranks")
    ask.add_argument("bank")
    ask.add_argument("question")
    ask.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK under NCCL, else cpu")
    ask.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    ask.add_argument("--timeout", type=float, default=120.0,
                     help="seconds before a dead, hung or stopped rank is named and the job ended")
    ask.add_argument("--content-tier", default="host", choices=["host", "disk"])
    ask.add_argument("--max-rounds", type=int, default=4)
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--no-interleave", action="store_true")
    ask.add_argument("--doc-choice", default=None, choices=DOC_CHOICES,
                     help="documents Memory Interleave reads (default: the model's policy.doc_choice)")
    ask.add_argument("--routing", action="store_true", help="include per-layer routing in --json output")
    ask.add_argument("--json", action="store_true")
    return ap


def _load_model(bank: str, device):
    from msa.memory import MemoryBank
    from msa.model import MSAForCausalLM, resolve_model_path
    from msa.tokenizer import load_tokenizer

    with MemoryBank.open(bank, readonly=True) as b:
        name = b.model_source
    if not name:
        raise SystemExit(f"{bank} does not record which model encoded it")
    path = resolve_model_path(name)
    return MSAForCausalLM.from_pretrained(path, device=str(device)), load_tokenizer(path)


def ask_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m msa.parallel`` (run under torchrun on every rank)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    from msa.parallel.dist import init_distributed
    from msa.parallel.engine import distributed_engine

    from msa.memory import BankError
    from msa.parallel.dist import RankFailureError

    ctx = init_distributed(args.backend, timeout_s=args.timeout)
    try:
        device = args.device or ctx.device
        model, tok = _load_model(args.bank, device)
        engine = distributed_engine(model, tok, args.bank, ctx=ctx, device=device, content_tier=args.content_tier,
                                    doc_choice=args.doc_choice)
        answer = engine.ask(args.question, interleave=not args.no_interleave, max_rounds=args.max_rounds,
                            max_new_tokens=args.max_new_tokens, return_routing=args.routing)  # fmt: skip
        if ctx.rank == 0:
            if args.json:
                print(json.dumps(answer.to_dict(), indent=2))
            else:
                print(answer.text)
                for r, info in enumerate(answer.rounds, 1):
                    print(f"  round {r}: retrieved {info.retrieved}")
            sys.stdout.flush()
    except (RankFailureError, BankError) as e:  # one line on every rank, the rank named
        print(f"msa: error: rank {ctx.rank}: {e}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    return 0


main = ask_main
