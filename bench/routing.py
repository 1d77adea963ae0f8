"""Routing benchmark: one router layer (and 18) over memories of 1M..100M tokens at the MSA-4B shape.

Methods: the PyTorch reference (msa.functional.doc_scores + select_docs per question), the PyTorch GEMM
formulation (msa.kernels.route_topk_torch), the Triton kernel with bf16 keys and with float8 keys.
Floor: key bytes / read bandwidth measured in the same run (a pure read; a device copy is reported
beside it), and the tensor-core time of 2*B*Tq*Hkv*D FLOPs per chunk at the measured bf16 matmul rate.
The JSON records the card and the versions (torch, triton, CUDA, python).

    python bench/routing.py [--sizes 1M,10M,100M] [--layers 1,18] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import time
from pathlib import Path

import torch

from msa.functional import doc_scores, select_docs
from msa.kernels import chunk_doc_from_offsets, prepare_routing_keys, route_topk_torch
from msa.kernels.routing import DEFAULT_CONFIG, DEFAULT_CONFIG_FP8, KernelConfig, route_topk_triton

log = logging.getLogger("bench.routing")

HQ, HKV, D, CHUNK, TOPK = 32, 8, 128, 64, 16
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}
SWEEP = [
    DEFAULT_CONFIG,
    KernelConfig(128, 64, 128, 8, 3, 3),
    KernelConfig(128, 64, 128, 8, 4, 4),
    KernelConfig(256, 64, 128, 8, 3, 2),
    KernelConfig(256, 128, 64, 8, 3, 2),
    KernelConfig(128, 128, 64, 4, 3, 3),
]


def bench_ms(fn, rep_ms: int = 100) -> float:
    """Median ms over CUDA events (triton.testing.do_bench flushes L2 before every run)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def graph_ms(fn) -> float | None:
    """Median ms of replaying fn captured in a CUDA graph: the GPU time without Python launch gaps."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return bench_ms(graph.replay)
    except Exception as e:  # capture is best effort
        log.info("graph capture failed: %r", e)
        return None


def measure_ceilings() -> dict:
    n = 1 << 30  # 4 GiB of float32
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    copy_ms = bench_ms(lambda: y.copy_(x))
    sum_ms = bench_ms(lambda: x.sum())
    del y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = bench_ms(lambda: a @ b)
    del x, a, b
    torch.cuda.empty_cache()
    return {
        "copy_GBps_read_plus_write": 2 * 4 * n / copy_ms / 1e6,
        "read_GBps": 4 * n / sum_ms / 1e6,
        "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9,
    }


def make_bank(tokens: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """chunk_doc [C] int32 on the GPU, documents of 1..100 chunks, and N."""
    c = tokens // CHUNK
    lens = torch.randint(1, 101, (c,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    n = int((offsets < c).sum())
    offsets = offsets[: n + 1].clone()
    offsets[-1] = c
    return chunk_doc_from_offsets(offsets).cuda(), n


def make_keys(c: int, dtype: torch.dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    raw = torch.randn(c, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    keys = prepare_routing_keys(raw, True, dtype)
    del raw
    return keys


def reference_fn(q, keys, chunk_doc, n):
    k3 = keys.keys.view(-1, HKV, D)
    cd = chunk_doc.long()

    def run():
        for i in range(q.shape[0]):
            select_docs(doc_scores(q[i], k3, cd, n), TOPK)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,100M")
    ap.add_argument("--layers", default="1,18")
    ap.add_argument("--tq", default="1,64,256")
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--quick", action="store_true", help="100M, one layer, Tq 1 and 64, batch 1 and 32")
    ap.add_argument("--sweep", action="store_true", help="time the kernel tile configs first, keep the best")
    ap.add_argument("--reference-max-batch", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.sizes, args.layers, args.tq, args.batch = "100M", "1", "1,64", "1,32"
    sizes = args.sizes.split(",")
    layers_list = [int(x) for x in args.layers.split(",")]
    tqs = [int(x) for x in args.tq.split(",")]
    batches = [int(x) for x in args.batch.split(",")]

    import triton

    props = torch.cuda.get_device_properties(0)
    card = props.name
    ceil = measure_ceilings()
    log.info("card %s: %s", card, json.dumps({k: round(v, 1) for k, v in ceil.items()}))
    read_bps = ceil["read_GBps"] * 1e9
    mm_fps = ceil["bf16_matmul_TFLOPs"] * 1e12
    result = {
        "card": card,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "shape": {"Hq": HQ, "Hkv": HKV, "D": D, "chunk_tokens": CHUNK, "k": TOPK, "doc_chunks": "1..100"},
        "ceilings": ceil,
        "timing": "triton.testing.do_bench median, L2 flushed before each run",
        "rows": [],
        "sweep": [],
        "notes": [],
    }
    gen = torch.Generator().manual_seed(0)
    configs = {torch.bfloat16: DEFAULT_CONFIG, torch.float8_e4m3fn: DEFAULT_CONFIG_FP8}

    for size in sizes:
        tokens = SIZES[size]
        chunk_doc, n = make_bank(tokens, gen)
        c = chunk_doc.numel()
        for layers in layers_list:
            free = torch.cuda.mem_get_info()[0]
            methods = ["reference", "torch_gemm", "kernel_bf16", "kernel_fp8"] if layers == 1 else ["kernel_bf16", "kernel_fp8"]
            bank = {}
            for dtype, name in ((torch.float8_e4m3fn, "kernel_fp8"), (torch.bfloat16, "kernel_bf16")):
                need = layers * c * HKV * D * (2 if dtype == torch.bfloat16 else 1) * 1.05
                if need > free - 6e9:
                    result["notes"].append(f"{size} x {layers} layers {name}: {need / 1e9:.1f} GB keys do not fit, skipped")
                    log.info(result["notes"][-1])
                    continue
                bank[dtype] = [make_keys(c, dtype, seed=l) for l in range(layers)]
                free = torch.cuda.mem_get_info()[0]
            if args.sweep and layers == 1 and size == sizes[-1]:
                for dtype in bank:
                    best = None
                    for cfg in SWEEP:
                        row = {"size": size, "dtype": str(dtype), "config": cfg.__dict__}
                        for b, tq in ((1, 64), (32, 1), (32, 64)):
                            q = torch.randn(b, tq, HQ, D, device="cuda", dtype=torch.bfloat16)
                            try:
                                ms = bench_ms(lambda: route_topk_triton(q, bank[dtype][0], chunk_doc, n, TOPK, config=cfg))
                            except Exception as e:  # a config the compiler rejects (shared memory)
                                ms = math.inf
                                row["error"] = repr(e)[:200]
                            row[f"b{b}_tq{tq}_ms"] = ms
                        log.info("sweep %s", row)
                        result["sweep"].append(row)
                        if best is None or row["b1_tq64_ms"] < best[0]:
                            best = (row["b1_tq64_ms"], cfg)
                    configs[dtype] = best[1]
                result["configs_used"] = {str(k): v.__dict__ for k, v in configs.items()}
            for tq in tqs:
                for b in batches:
                    q = torch.randn(b, tq, HQ, D, device="cuda", dtype=torch.bfloat16)
                    flops = 2.0 * b * tq * HKV * D * c * layers
                    for method in methods:
                        dtype = torch.float8_e4m3fn if method == "kernel_fp8" else torch.bfloat16
                        if dtype not in bank:
                            continue
                        keys_l = bank[dtype]
                        nbytes = sum(k.nbytes for k in keys_l)
                        row = {"size": size, "tokens": tokens, "chunks": c, "docs": n, "layers": layers,
                               "tq": tq, "batch": b, "method": method, "key_bytes": nbytes}
                        if method == "reference":
                            if b > args.reference_max_batch:
                                continue
                            fns = [reference_fn(q, keys_l[0], chunk_doc, n)]
                        elif method == "torch_gemm":
                            fns = [lambda kk=kk: route_topk_torch(q, kk, chunk_doc, n, TOPK) for kk in keys_l]
                        else:
                            cfg = configs[dtype]
                            fns = [lambda kk=kk: route_topk_triton(q, kk, chunk_doc, n, TOPK, config=cfg) for kk in keys_l]
                        try:
                            ms = bench_ms(lambda: [f() for f in fns], rep_ms=200 if layers > 1 else 100)
                        except torch.OutOfMemoryError:
                            row["ms"] = None
                            row["error"] = "out of memory"
                            result["rows"].append(row)
                            torch.cuda.empty_cache()
                            continue
                        if method.startswith("kernel"):
                            row["graph_ms"] = graph_ms(lambda: [f() for f in fns])
                        floor_bytes = nbytes / read_bps * 1e3
                        floor_flops = flops / mm_fps * 1e3
                        floor = max(floor_bytes, floor_flops)
                        row.update({"ms": ms, "floor_bytes_ms": floor_bytes, "floor_flops_ms": floor_flops,
                                    "floor_ms": floor, "ratio_to_floor": ms / floor,
                                    "ratio_to_bytes_floor": ms / floor_bytes, "questions_per_s": b / ms * 1e3,
                                    "effective_GBps": nbytes / ms / 1e6})
                        result["rows"].append(row)
                        log.info("%5s L%-2d Tq%-4d B%-3d %-12s %9.3f ms (graph %s)  floor %7.3f ms (bytes %7.3f)  x%.2f  %.0f GB/s",
                                 size, layers, tq, b, method, ms, row.get("graph_ms"), floor, floor_bytes, ms / floor,
                                 row["effective_GBps"])
                        gc.collect()
            del bank
            gc.collect()
            torch.cuda.empty_cache()
        del chunk_doc

    # Summary table and the targets.
    log.info("\n%-5s %-3s %-4s %-3s %-12s %10s %10s %10s %7s %10s", "size", "L", "Tq", "B", "method", "ms", "graph_ms",
             "floor", "ratio", "q/s")
    for r in result["rows"]:
        if r.get("ms") is None:
            continue
        g = r.get("graph_ms")
        log.info("%-5s %-3d %-4d %-3d %-12s %10.3f %10s %10.3f %7.2f %10.1f", r["size"], r["layers"], r["tq"], r["batch"],
                 r["method"], r["ms"], f"{g:.3f}" if g else "-", r["floor_ms"], r["ratio_to_floor"], r["questions_per_s"])

    def get(method, tq, b, size="100M", layers=1):
        for r in result["rows"]:
            if (r["method"], r["tq"], r["batch"], r["size"], r["layers"]) == (method, tq, b, size, layers):
                return r.get("ms")
        return None

    targets = {}
    for tq in tqs:
        bf, f8 = get("kernel_bf16", tq, 1), get("kernel_fp8", tq, 1)
        if bf:
            row = next(r for r in result["rows"] if (r["method"], r["tq"], r["batch"], r["size"], r["layers"]) == ("kernel_bf16", tq, 1, "100M", 1))
            targets[f"bf16_tq{tq}_b1_ratio_to_bytes_floor"] = row["ratio_to_bytes_floor"]
        if bf and f8:
            targets[f"fp8_over_bf16_tq{tq}_b1"] = f8 / bf
        for dt in ("kernel_bf16", "kernel_fp8"):
            t1, t32 = get(dt, tq, 1), get(dt, tq, 32)
            if t1 and t32:
                targets[f"{dt}_tq{tq}_b32_speedup_questions_per_s"] = 32 * t1 / t32
    result["targets"] = targets
    log.info("targets %s", json.dumps({k: round(v, 3) for k, v in targets.items()}, indent=1))
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"routing_{card.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("wrote %s", out)


if __name__ == "__main__":
    t0 = time.time()
    main()
    logging.getLogger("bench.routing").info("bench wall %.0f s", time.time() - t0)
