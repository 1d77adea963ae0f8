"""Memory Parallel on GPUs equals one GPU: same documents per layer, same answers (run under torchrun).

    torchrun --nproc-per-node 2 bench/parallel_equality.py --out /tmp/eq.json

Rank 0 builds a bank with a tiny random model (bf16, CUDA) and computes the single-GPU reference;
then every rank serves its shard (NCCL) and the distributed engine answers the same questions. Exits
non-zero on any difference. Writes a JSON verdict (rank 0) with the card, world size and versions.
Baseline: the single-GPU engine on the same bank in the same run; the only passing result is equality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from msa.engine import Engine  # noqa: E402
from msa.memory import MemoryBank  # noqa: E402
from msa.parallel import distributed_engine, init_distributed  # noqa: E402

QUESTIONS = ["Where was Alice 3 born?", "Who is a chemist in Paris?", "Bob lives where?"]


def texts(n: int) -> list[str]:
    return [f"Document {i}: Alice {i} was born in city {i % 17} and works as a chemist number {i * 7}." * (1 + i % 3)
            for i in range(n)]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/msa-parallel-eq")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    model = build_tiny_model().to(dev, torch.bfloat16)
    tok = build_tiny_tokenizer()
    path = Path(args.dir) / "bank"
    ref = None
    if rank == 0:
        import shutil

        shutil.rmtree(args.dir, ignore_errors=True)
        with MemoryBank.create(path, model, tok, segment_tokens=2000) as bank:
            for j in range(0, 300, 60):  # several segments, so every rank owns some
                bank.add(texts(300)[j : j + 60])
        with MemoryBank.open(path, model, tok, device=dev, readonly=True) as bank:
            answers = Engine(model, tok, bank).ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=12, return_routing=True)
            ref = [(a.transcript, [r.routing for r in a.rounds]) for a in answers]
    ctx = init_distributed(timeout_s=120)
    dist.barrier()
    engine = distributed_engine(model, tok, path, ctx=ctx, device=dev)
    answers = engine.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=12, return_routing=True)
    got = [(a.transcript, [r.routing for r in a.rounds]) for a in answers]
    ok = True
    if rank == 0:
        ok = got == ref
        verdict = {"world": world, "card": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "python": platform.python_version(), "equal": ok, "questions": len(QUESTIONS),
                   "routing_layers": list(model.router_layers), "first_answer_rounds": got[0][1]}  # fmt: skip
        print(json.dumps({k: v for k, v in verdict.items() if k != "first_answer_rounds"}))
        if args.out:
            Path(args.out).write_text(json.dumps(verdict, indent=2, default=str))
    flags = ctx.all_gather_object(bool(ok)) if hasattr(ctx, "all_gather_object") else [ok]
    engine.bank.close()
    ctx.close()
    return 0 if all(flags) else 1


if __name__ == "__main__":
    raise SystemExit(main())
