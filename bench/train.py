"""GPU training throughput of the MSA-4B-shaped smoke recipe: tokens/s and MFU.

    python bench/train.py [--steps 6] [key=value overrides ...]

MFU = achieved model FLOP/s / the card's bf16 matmul rate MEASURED in the same run (an 8192^3 bf16
matmul timed with CUDA events), not the datasheet. Model FLOPs per step = 6 * (non-embedding params)
* tokens (attention inside short documents is not counted: a conservative MFU).
Writes bench/results/train_<card>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import torch

logger = logging.getLogger("bench.train")


def matmul_rate(n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1e3)


def main(argv: list[str]) -> dict:
    from msa.train import load_recipe
    from msa.train.loop import Trainer

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args, overrides = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    total = args.steps + args.warmup
    cfg = load_recipe("msa4b_shape_smoke", [f"schedule.phases.0.steps={total}", *overrides])
    trainer = Trainer(cfg)
    peak = matmul_rate()
    model = trainer.model
    n_params = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    recs = []
    for i in range(total):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rec = trainer.train_step()
        torch.cuda.synchronize()
        rec["wall"] = time.perf_counter() - t0
        if i >= args.warmup:
            recs.append(rec)
    tokens = sum(r["tokens"] for r in recs)
    wall = sum(r["wall"] for r in recs)
    # Conservative: 6 * params per token only. Attention inside ~100-token documents adds < 1% and the
    # masked-out blocks are skipped by FlexAttention, so they are not counted as useful work.
    flops_tok = 6 * n_params
    achieved = flops_tok * tokens / wall
    card = torch.cuda.get_device_name().replace(" ", "_")
    result = {
        "card": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
        "steps": len(recs), "tokens_per_step": tokens / len(recs), "tokens_per_s": tokens / wall,
        "step_time_s": wall / len(recs), "matmul_bf16_flops": peak, "model_flops_per_s": achieved,
        "mfu": achieved / peak, "non_embedding_params": n_params, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "aux_loss_last": recs[-1].get("aux_loss"), "lm_loss_last": recs[-1]["lm_loss"],
        "attention_backend": __import__("msa.model.train_attention", fromlist=["backend"]).backend(torch.device("cuda")),
        "note": "MFU counts 6 * non-embedding params per token only (attention FLOPs not counted)",
    }  # fmt: skip
    os.makedirs("bench/results", exist_ok=True)
    with open(f"bench/results/train_{card}.json", "w") as f:
        json.dump(result, f, indent=2)
    logger.info("%s", json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
