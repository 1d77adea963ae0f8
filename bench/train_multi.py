"""FSDP2 training throughput over W GPUs of one host: bench/train.py on every rank, aggregated.

    torchrun --nproc-per-node W bench/train_multi.py [--out DIR] [--steps N] [key=value overrides ...]
    bash bench/train_multi.sh                       # W = 1, 2, 4, 8 in turn, then the scaling table

Every rank runs bench/train.py's ``main`` unchanged (the MSA-4B-shaped recipe ``msa4b_shape_smoke``),
with ``parallel.data_parallel=fsdp`` (FSDP2: ``fully_shard`` per decoder layer, then the root) and
the tokenizer path made absolute so the ranks share one. bench/train.py writes its JSON relative to
the working directory, so every rank runs in a directory of its own (DIR/w<W>/rank<r>): the ranks
never write one file at once. Batches are per rank (weak scaling: the global batch grows with W).

Tokens: the Trainer's step reports the GLOBAL token count (summed over ranks), so bench/train.py's
``tokens_per_s`` is the job's and its ``mfu`` is the job's model FLOP/s over ONE card's bf16 matmul
rate measured in the same run. The per-rank ``tokens_per_step`` are equal exactly when they are
global; if they differ (a per-rank count) they are summed instead (``tokens_counted`` says which).
Rank 0 gathers every rank's result and writes DIR/train_multi_<card>_w<W>.json: job tokens/s (the
slowest rank's), tokens/s and MFU per GPU, and, when DIR holds the W=1 file of the same card, the
scaling efficiency = tokens/s per GPU at W / tokens/s at W=1 (the issue's target: >= 0.85 at W=8).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def _train_main():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH / "train.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.main


def aggregate(per_rank: list[dict], world: int, baseline: dict | None) -> dict:
    """The job's numbers from every rank's bench/train.py result (see the module docstring)."""
    steps = [r["tokens_per_step"] for r in per_rank]
    is_global = len(set(steps)) == 1
    tokens_per_step = steps[0] if is_global else sum(steps)
    step_time = max(r["step_time_s"] for r in per_rank)  # the slowest rank sets the pace
    tokens_per_s = tokens_per_step / step_time
    peak = statistics.median(r["matmul_bf16_flops"] for r in per_rank)
    flops_tok = 6 * per_rank[0]["non_embedding_params"]
    out = {
        "world": world, "tokens_counted": "global" if is_global else "per rank, summed",
        "tokens_per_step": tokens_per_step, "step_time_s": step_time, "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / world, "mfu_per_gpu": flops_tok * tokens_per_s / world / peak,
        "matmul_bf16_flops_per_gpu": peak, "peak_memory_gb_per_rank": [r.get("peak_memory_gb") for r in per_rank],
        "lm_loss_last": per_rank[0].get("lm_loss_last"),
    }  # fmt: skip
    if baseline is not None:
        out["baseline_tokens_per_s"] = baseline["tokens_per_s_per_gpu"]
        out["scaling_efficiency"] = out["tokens_per_s_per_gpu"] / baseline["tokens_per_s_per_gpu"]
    return out


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/train_multi")
    ap.add_argument("--tokenizer", default="runs/msa4b_smoke/tokenizer", help="shared by the ranks (made absolute)")
    args, rest = ap.parse_known_args(argv)
    out = Path(args.out).resolve()
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    workdir = out / f"w{world}" / f"rank{rank}"
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = Path(args.tokenizer).resolve()
    train_argv = [*rest, "parallel.data_parallel=fsdp", f"data.tokenizer={tokenizer}"]
    os.chdir(workdir)
    mine = _train_main()(train_argv)
    per_rank = [mine]
    if dist.is_initialized():
        per_rank = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(per_rank, mine)
    res = write(per_rank, world, out, argv) if rank == 0 else None
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return res


def write(per_rank: list[dict], world: int, out: Path, argv: list[str] | None) -> dict:
    card = torch.cuda.get_device_name().replace(" ", "_")
    base_file = out / f"train_multi_{card}_w1.json"
    baseline = json.loads(base_file.read_text()) if world > 1 and base_file.exists() else None
    res = {
        "card": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
        "data_parallel": "fsdp" if world > 1 else "none (one GPU)", "recipe": "msa4b_shape_smoke",
        "command": f"torchrun --nproc-per-node {world} bench/train_multi.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        **aggregate(per_rank, world, baseline), "per_rank": per_rank,
    }  # fmt: skip
    path = out / f"train_multi_{card}_w{world}.json"
    path.write_text(json.dumps(res, indent=2))
    eff = f", scaling efficiency {res['scaling_efficiency']:.1%}" if "scaling_efficiency" in res else ""
    print(f"W={world}: {res['tokens_per_s']:.0f} tokens/s ({res['tokens_per_s_per_gpu']:.0f} per GPU), "
          f"MFU per GPU {res['mfu_per_gpu']:.1%}{eff} -> {path}")  # fmt: skip
    return res


if __name__ == "__main__":
    main()
