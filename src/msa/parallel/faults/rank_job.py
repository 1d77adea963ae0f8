"""One Memory Parallel ask in which rank ``--victim`` SIGSTOPs itself at ``--stop-at`` (under torchrun).

``python -m torch.distributed.run --nproc-per-node 2 -m msa.parallel.faults.rank_job BANK --stop-at route``
Before stopping, the victim writes the time and its pid to ``--marker``; the fault suite measures from there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import torch


def _stop(marker: str) -> None:
    with open(marker, "w") as f:
        f.write(f"{time.time()!r} {os.getpid()}")
    os.kill(os.getpid(), signal.SIGSTOP)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bank")
    ap.add_argument("--stop-at", choices=["open", "route", "decode"], required=True)
    ap.add_argument("--victim", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=4.0)
    ap.add_argument("--marker", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(1)
    from msa.engine import engine as engine_module
    from msa.parallel import RankFailureError, distributed_engine, init_distributed
    from msa.parallel.faults.common import load_model

    ctx = init_distributed("gloo", timeout_s=args.timeout, heartbeat_s=0.25)
    victim = ctx.rank == args.victim
    model, tok = load_model()
    try:
        if victim and args.stop_at == "open":
            _stop(args.marker)
        engine = distributed_engine(model, tok, args.bank, ctx=ctx)
        if victim and args.stop_at == "route":
            inner = engine.bank._access.shard
            real = inner.route
            inner.route = lambda *a: (_stop(args.marker), real(*a))[1]
        if victim and args.stop_at == "decode":  # both decoding paths: eager and static cache
            from msa.engine.static_decode import StaticStepper

            real_step, real_static = engine_module.decode_step, StaticStepper.decode_step
            engine_module.decode_step = lambda *a, **k: (_stop(args.marker), real_step(*a, **k))[1]
            StaticStepper.decode_step = lambda self, *a, **k: (_stop(args.marker), real_static(self, *a, **k))[1]
        answer = engine.ask("Where was alpha born?", max_rounds=1, max_new_tokens=8)
        if ctx.rank == 0:
            print(f"answer: {answer.text!r}", flush=True)
    except RankFailureError as e:
        print(f"msa: error: rank {ctx.rank}: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
