"""Memory Parallel benchmark: TTFT, per-stage times, memory per GPU and the exchange's share over W ranks.

The bank is RANDOM TENSORS built in place on every rank (bench/parallel_bank.py: no encoding, no
files, the same documents and keys whatever W). The model has the MSA-4B shape with random weights.

    torchrun --nproc-per-node W bench/parallel.py --tokens 1e8              # GPU, NCCL, bf16 keys
    torchrun --nproc-per-node 8 bench/parallel.py --tokens 1e9              # 1B tokens, bf16 keys
    torchrun --nproc-per-node 4 bench/parallel.py --tokens 1e9 --key-dtype fp8
    torchrun --nproc-per-node 2 bench/parallel.py --quick                    # CPU, gloo, tiny (tested)
    bash bench/parallel_multi.sh                                             # all of the above on 1/4/8 GPUs

Measured per run (medians over --repeats, after one warm-up):
- ttft_ms: prefill of a --question-tokens question to its first token, no instrumentation;
- per router layer (instrumented passes, every stage device-synchronised): local routing (this
  rank's shard), the route exchange (candidate all-gather + merge), the local fetch (owner's chunks,
  host -> device) and the fetch exchange (block all-gather + assembly); exchange_share_of_ttft =
  both exchanges over the instrumented pass's own prefill time (rank 0's stages; every rank's in
  ``stages_per_rank``);
- peak device memory of every rank; the selection (global slots per layer) of the last pass.
At W=1 the plain single-process access (no process group in the hot path) is timed as well:
``single_process_ttft_ms``, the baseline the issue's targets are stated against. Given --baseline
(a W=1 file of the same card), the JSON states the TTFT ratio to it and whether the selection equals
it (same bank, same question: slot for slot).

Writes <out>/parallel_<card>_w<W>_<tokens>[_fp8][_quick].json (rank 0) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
from parallel_bank import KEY_DTYPES, random_bank  # bench/parallel_bank.py, beside this script

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.parallel import DistributedAccess, init_distributed

log = logging.getLogger("bench.parallel")


def model_config(quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           msa=MSAConfig(pooling_kernel_size=8, top_k_docs=4))  # fmt: skip
    return ModelConfig()  # MSA-4B: Qwen3-4B backbone, 18 router layers, 8 KV heads x 128, chunks of 64


class Timed:
    """Per-layer route/fetch wall times (device-synchronised) of a MemoryAccess, and its last selection."""

    def __init__(self, inner, device: torch.device):
        self.inner, self.device = inner, device
        self.route_s: list[float] = []
        self.fetch_s: list[float] = []
        self.selection: dict[str, list] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def clear(self) -> None:
        self.route_s.clear()
        self.fetch_s.clear()

    def route(self, layer, *a):
        self._sync()
        t0 = time.perf_counter()
        out = self.inner.route(layer, *a)
        self._sync()
        self.route_s.append(time.perf_counter() - t0)
        self.selection[str(layer)] = out.docs.tolist()  # str: as JSON keys
        return out

    def fetch(self, *a):
        self._sync()
        t0 = time.perf_counter()
        out = self.inner.fetch(*a)
        self._sync()
        self.fetch_s.append(time.perf_counter() - t0)
        return out


def versions(device: torch.device) -> dict:
    """torch, python, and on CUDA the CUDA, NCCL and Triton versions."""
    out = {"torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        out["cuda"] = torch.version.cuda
        nccl = torch.cuda.nccl.version()  # a (major, minor, patch) tuple; an int in old releases
        out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        try:
            import triton

            out["triton"] = triton.__version__
        except ImportError:
            out["triton"] = None
    return out


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"


def tokens_tag(tokens: float) -> str:
    for unit, name in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if tokens >= unit:
            return f"{tokens / unit:g}{name}"
    return f"{tokens:g}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill(model, memory, ids, prefix, device) -> float:
    """Seconds from a synchronised start to the first token on the host."""
    mask = torch.ones_like(ids, dtype=torch.bool)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.prefill(ids, mask, mask, memory=memory, prefix=prefix, last_only=True)
        out.logits.argmax(-1).cpu()
    return time.perf_counter() - t0


def questions(cfg, args, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(10, cfg.vocab_size, (args.batch, args.question_tokens), generator=g).to(device)
            for _ in range(args.repeats + 1)]  # fmt: skip


def ttft_ms(model, memory, qs, prefix, device, barrier) -> float:
    """Median TTFT over ``qs[1:]`` (``qs[0]`` warms up)."""
    times = []
    for ids in qs:
        barrier()
        times.append(_prefill(model, memory, ids, prefix, device))
    return 1e3 * statistics.median(times[1:])


def stage_ms(model, dist_access, qs, prefix, device, barrier) -> tuple[dict, dict]:
    """Median per-layer stage times (ms) over instrumented passes, and the last pass's selection."""
    outer, inner = Timed(dist_access, device), Timed(dist_access.shard, device)
    dist_access.shard = inner
    per: dict[str, list[float]] = {k: [] for k in ("route_local", "route_exchange", "fetch_local", "fetch_exchange")}
    whole = []
    try:
        for rep, ids in enumerate(qs):
            outer.clear(), inner.clear()
            barrier()
            took = _prefill(model, outer, ids, prefix, device)
            if not rep:
                continue
            whole.append(took / len(outer.route_s))  # per router layer, as the stages
            r_all, f_all = statistics.mean(outer.route_s), statistics.mean(outer.fetch_s)
            r_loc = statistics.mean(inner.route_s)
            f_loc = statistics.mean(inner.fetch_s) if inner.fetch_s else 0.0  # a rank owning nothing selected
            per["route_local"].append(r_loc)
            per["route_exchange"].append(r_all - r_loc)
            per["fetch_local"].append(f_loc)
            per["fetch_exchange"].append(f_all - f_loc)
    finally:
        dist_access.shard = inner.inner
    per["instrumented_prefill"] = whole
    return {f"{k}_ms_per_layer": 1e3 * statistics.median(v) for k, v in per.items()}, outer.selection


def compare(res: dict, baseline: dict | None) -> dict:
    """TTFT ratio and selection equality against a W=1 baseline file (same card)."""
    if baseline is None:
        return {}
    base_ttft = baseline.get("single_process_ttft_ms") or baseline["ttft_ms"]
    same_bank = all(baseline.get(k) == res[k] for k in ("tokens", "key_dtype", "batch", "question_tokens", "chunks"))
    return {
        "baseline": {k: baseline.get(k) for k in ("file", "world", "tokens", "key_dtype", "ttft_ms", "single_process_ttft_ms")},
        "ttft_over_baseline": res["ttft_ms"] / base_ttft,
        "selection_equal_to_baseline": (res["selection"] == baseline.get("selection")) if same_bank else None,
    }  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=1e8)
    ap.add_argument("--key-dtype", default="bf16", choices=sorted(KEY_DTYPES), help="routing keys on the GPU")
    ap.add_argument("--quick", action="store_true", help="tiny model and bank on CPU/gloo (a smoke test)")
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--segment-chunks", type=int, default=1 << 16)
    ap.add_argument("--tile-chunks", type=int, default=1 << 16)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--baseline", default=None, help="a W=1 result file to compare TTFT and selection with")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens = min(args.tokens, 20_000)
        args.segment_chunks, args.tile_chunks, args.repeats = 200, 128, min(args.repeats, 2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "RANK" not in os.environ:  # plain `python bench/parallel.py`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed("gloo" if args.quick or not torch.cuda.is_available() else None, timeout_s=args.timeout)
    device = ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(args.quick)
    t0 = time.perf_counter()
    with torch.device(device):
        model = MSAForCausalLM(cfg).init_weights(seed=0).to(dtype).eval()
    options = model.routing_options()
    bank = random_bank(cfg, options, args.tokens, args.segment_chunks, ctx.rank, ctx.world, device, dtype,
                       args.tile_chunks, args.key_dtype)  # fmt: skip
    access = DistributedAccess(bank.shard, bank.layout, ctx, options.coupled_scale,
                               (cfg.num_key_value_heads, cfg.head_dim), dtype, device)  # fmt: skip
    prefix = model.encode_prefix([1, 2, 3])
    build_s = time.perf_counter() - t0
    qs = questions(cfg, args, device)
    barrier = lambda: ctx.barrier("bench.start")  # noqa: E731
    res: dict = {
        "card": card_name(device), "world": ctx.world, "backend": ctx.backend, **versions(device),
        "quick": args.quick, "tokens": args.tokens, **bank.info,
        "router_layers": len(cfg.router_layers), "batch": args.batch, "question_tokens": args.question_tokens,
        "command": "torchrun --nproc-per-node %d bench/parallel.py %s" % (ctx.world, " ".join(argv if argv is not None else sys.argv[1:])),
    }  # fmt: skip
    res["ttft_ms"] = ttft_ms(model, access, qs, prefix, device, barrier)
    if ctx.world == 1:  # the single-process access the targets compare with (scores scaled as a bank's)
        plain = copy.copy(bank.shard)
        plain.options = options
        res["single_process_ttft_ms"] = ttft_ms(model, plain, qs, prefix, device, barrier)
    stages, res["selection"] = stage_ms(model, access, qs, prefix, device, barrier)
    res.update(stages)
    exchange = stages["route_exchange_ms_per_layer"] + stages["fetch_exchange_ms_per_layer"]
    res["exchange_ms_per_layer"] = exchange
    # share of the instrumented passes' own prefill (their stages are parts of it; un-instrumented
    # TTFT is a different pass and can come out shorter than the parts on a noisy host)
    res["exchange_share_of_ttft"] = exchange / stages["instrumented_prefill_ms_per_layer"]
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    res["peak_device_gb_per_rank"] = ctx.all_gather_object(peak, "bench.memory")
    res["stages_per_rank"] = ctx.all_gather_object(stages, "bench.stages")  # the slowest rank sets the pace
    res["build_s"] = build_s
    res["bank"] = ("random tensors built in place (bench/parallel_bank.py: routing keys random on the device, seeded per "
                   "segment; content one expanded random chunk), documents of 64-200 tokens; random-weight model")  # fmt: skip
    if ctx.rank == 0:
        baseline = None
        if args.baseline and Path(args.baseline).exists():
            baseline = {**json.loads(Path(args.baseline).read_text()), "file": Path(args.baseline).name}
        res.update(compare(res, baseline))
        write(res, args)
    ctx.close()
    return res


def write(res: dict, args: argparse.Namespace) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ("_fp8" if res["key_dtype"] == "fp8" else "") + ("_quick" if args.quick else "")
    path = out_dir / f"parallel_{res['card']}_w{res['world']}_{tokens_tag(res['tokens'])}{suffix}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"Memory Parallel, {res['card']}, {res['documents']} docs / {res['chunks']} chunks "
          f"({res['tokens']:.3g} tokens, RANDOM-TENSOR bank, {res['key_dtype']} keys), shard chunks {res['rank_chunks']}")  # fmt: skip
    print(f"{'W':>3} {'TTFT ms':>9} {'route local':>12} {'route xchg':>11} {'fetch local':>12} {'fetch xchg':>11} "
          f"{'xchg share':>10} {'peak GB/rank':>14}")  # fmt: skip
    peak = max((p or 0.0) for p in res["peak_device_gb_per_rank"])
    print(f"{res['world']:>3} {res['ttft_ms']:>9.2f} {res['route_local_ms_per_layer']:>12.3f} "
          f"{res['route_exchange_ms_per_layer']:>11.3f} {res['fetch_local_ms_per_layer']:>12.3f} "
          f"{res['fetch_exchange_ms_per_layer']:>11.3f} {res['exchange_share_of_ttft']:>10.1%} {peak:>14.2f}")  # fmt: skip
    if "single_process_ttft_ms" in res:
        print(f"single process (no process group): TTFT {res['single_process_ttft_ms']:.2f} ms")
    if "ttft_over_baseline" in res:
        print(f"TTFT / baseline ({res['baseline']['file']}): {res['ttft_over_baseline']:.2f}; "
              f"selection equal to it: {res['selection_equal_to_baseline']}")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
