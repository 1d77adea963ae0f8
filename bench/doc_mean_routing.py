"""Per-document routing keys (head, query and chunk means, as msa-bios-tiny routes) against the
chunk-tiled routing that served such models before, on the same bank and the same router queries.

With the three reductions means, a document's score is linear in its chunks' keys, so the bank keeps
one row per document (the mean of its chunks' normalised keys) and routes a question with one GEMV
over documents (``msa.kernels.prepare_doc_mean_keys``). This bench opens one bank twice (per-document
rows, the default now; and the tiled path, forced) and reports per question and router layer: the
route time of both and their ratio, the bytes the per-document pass reads and its floor (those bytes
at the device's read bandwidth, measured in the same run by summing a tensor of that size), the
snapshot build time of both (the per-document one computes the means), and whether both select the
same documents. Router queries are random, of the model's shape (timings do not depend on them).
The JSON records the device, its name and the versions (``environment``: torch, msa, python).

    PYTHONPATH=src python bench/doc_mean_routing.py --bank runs/s5/banks_cpu/bios-w7-n111951-26ba6f3162c7 \
        --model msa-bios-tiny --device cpu --out bench/results/doc_mean_routing_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from msa.eval.scaling import _environment
from msa.memory import MemoryBank
from msa.model import MSAForCausalLM, resolve_model_path
from msa.tokenizer import load_tokenizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def open_snapshot(path: str, model, tok, device: torch.device, per_doc: bool):
    """The bank's snapshot with per-document rows, or (per_doc False) with the tiled path forced."""
    t0 = time.perf_counter()
    bank = MemoryBank.open(path, model, tok, device=device, content_tier="disk", readonly=True)
    if not per_doc:
        bank._routing_prep = None  # bench only: the path this library took for mean routing before
    snap = bank.snapshot()
    for layer in model.router_layers:
        if snap.uses_fused_routing(layer):
            snap.routing_keys(layer)  # built on first use: count it in the build time
    _sync(device)
    return bank, snap, time.perf_counter() - t0


def read_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Bytes per second of summing a float32 tensor of ``nbytes`` (median of reps): memory, not cache
    (a pass over keys that fit in cache would beat it, so the floor is that of keys read from memory)."""
    x = torch.ones(nbytes // 4, device=device)
    times = []
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        x.sum().item()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--model", default="msa-bios-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--ks", default="16,256")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = torch.device(args.device)
    path = resolve_model_path(args.model)
    model, tok = MSAForCausalLM.from_pretrained(path, device=device), load_tokenizer(path)
    cfg = model.config
    per_doc_bank, per_doc, per_doc_build = open_snapshot(args.bank, model, tok, device, True)
    tiled_bank, tiled, tiled_build = open_snapshot(args.bank, model, tok, device, False)
    layer = model.router_layers[-1]
    if not per_doc.uses_fused_routing(layer) or tiled.uses_fused_routing(layer):
        raise SystemExit("this bench needs a model routing with head, query and chunk means (e.g. msa-bios-tiny)")
    keys, _ = per_doc.routing_keys(layer)
    g = torch.Generator().manual_seed(0)
    hq, d = cfg.num_attention_heads, cfg.head_dim
    result = {"bank": args.bank, "documents": per_doc.num_docs, "chunks": per_doc.num_chunks, "router_layer": layer,
              "environment": _environment(model), "questions": args.questions, "query_tokens": args.query_tokens,
              "per_doc_bytes": keys.nbytes, "per_doc_dtype": str(keys.keys.dtype),
              "build_s": {"per_doc": per_doc_build, "tiled": tiled_build}, "ks": {}}  # fmt: skip
    bw = read_bandwidth(device)
    result["read_bandwidth_GBps"] = bw / 1e9
    result["per_doc_floor_s"] = keys.nbytes / bw
    for k in [int(x) for x in args.ks.split(",")]:
        times: dict[str, list[float]] = {"per_doc": [], "tiled": []}
        same, max_gap = 0, 0.0
        warm = torch.randn(1, args.query_tokens, hq, d, generator=g).to(device, model.dtype)
        for snap in (per_doc, tiled):
            for _ in range(3):
                snap.route(layer, warm, torch.ones(1, args.query_tokens, dtype=torch.bool, device=device), k)
        for _ in range(args.questions):
            q = torch.randn(1, args.query_tokens, hq, d, generator=g).to(device, model.dtype)
            mask = torch.ones(1, args.query_tokens, dtype=torch.bool, device=device)
            out = {}
            for name, snap in (("per_doc", per_doc), ("tiled", tiled)):
                _sync(device)
                t0 = time.perf_counter()
                out[name] = snap.route(layer, q, mask, k)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            same += int(torch.equal(out["per_doc"].docs, out["tiled"].docs))
            gap = (out["per_doc"].scores - out["tiled"].scores).abs().max().item()  # by rank: rounding only
            max_gap = max(max_gap, gap)
        p50 = {n: statistics.median(v) for n, v in times.items()}
        result["ks"][str(k)] = {"route_p50_s": p50, "speedup": p50["tiled"] / p50["per_doc"],
                                "per_doc_over_floor": p50["per_doc"] / result["per_doc_floor_s"],
                                "same_documents": same, "max_score_difference_by_rank": max_gap}  # fmt: skip
        print(f"k={k}: per-doc {p50['per_doc'] * 1e3:.2f} ms, tiled {p50['tiled'] * 1e3:.1f} ms "
              f"({p50['tiled'] / p50['per_doc']:.0f}x), floor {result['per_doc_floor_s'] * 1e3:.3f} ms, "
              f"same top-{k} for {same}/{args.questions} (scores by rank within {max_gap:.1e})")  # fmt: skip
    per_doc_bank.close()
    tiled_bank.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
