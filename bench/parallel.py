"""Memory Parallel benchmark: time to first token and routing time per router layer over W ranks.

The bank is RANDOM TENSORS built in place on every rank (no encoding, no files): documents of 64-200
tokens (seeded, the same on every rank), cut into segments of about --segment-chunks chunks and
sharded with the library's assignment. Routing keys [C, Hkv, D] are random on the device (what routing
reads); content K/V of every chunk is one random host chunk broadcast over the shard (fetch copies
the right sizes, the values are meaningless). The model has the MSA-4B shape with random weights.

    torchrun --nproc-per-node W bench/parallel.py --tokens 1e8      # GPU, NCCL, bf16
    torchrun --nproc-per-node 2 bench/parallel.py --quick            # CPU, gloo, tiny sizes (tested)

Writes bench/results/parallel_<card>_w<W>.json (rank 0: card, world, backend, torch, python) and
prints a table; compares with the W=1
file of the same card when present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.kernels import RoutingKeys
from msa.memory import BankSnapshot, LoadedSegment
from msa.memory.catalog import DocRow
from msa.model.memory import RoutingOptions
from msa.parallel import DistributedAccess, ShardLayout, assign_segments, init_distributed

log = logging.getLogger("bench.parallel")


def model_config(quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           msa=MSAConfig(pooling_kernel_size=8, top_k_docs=4))  # fmt: skip
    return ModelConfig()  # MSA-4B: Qwen3-4B backbone, 18 router layers, 8 KV heads x 128, chunks of 64


def random_bank(cfg: ModelConfig, options: RoutingOptions, tokens: float, segment_chunks: int, rank: int, world: int,
                device: torch.device, dtype: torch.dtype, tile_chunks: int) -> tuple[BankSnapshot, ShardLayout, dict]:  # fmt: skip
    """This rank's shard of a random bank of about ``tokens`` tokens, and the global layout."""
    g = torch.Generator().manual_seed(0)
    n_docs = max(1, int(tokens / 132))
    lengths = torch.randint(64, 201, (n_docs,), generator=g)
    chunks = (lengths + cfg.msa.chunk_size - 1) // cfg.msa.chunk_size
    seg_of = torch.cumsum(chunks, 0).sub(chunks).div(segment_chunks, rounding_mode="floor")  # contiguous segments
    n_segs = int(seg_of[-1]) + 1
    seg_chunks = torch.bincount(seg_of, weights=chunks, minlength=n_segs).long().tolist()
    assignment = assign_segments(seg_chunks, world)
    owner = torch.empty(n_segs, dtype=torch.long)
    for r, segs in enumerate(assignment):
        owner[segs] = r
    layout = ShardLayout.build(torch.arange(n_docs), owner[seg_of], chunks, world)
    hkv, d = cfg.num_key_value_heads, cfg.head_dim
    content = torch.randn(1, hkv, d, generator=g).to(dtype)
    loaded, rows = [], []
    starts = torch.searchsorted(seg_of, torch.arange(n_segs + 1))
    for si, s in enumerate(assignment[rank]):
        a, b = int(starts[s]), int(starts[s + 1])
        c = chunks[a:b]
        c_total = int(c.sum())
        chunk_doc = torch.repeat_interleave(torch.arange(b - a), c)
        placeholder = content.expand(c_total, hkv, d)  # raw keys: unused by routing, zero bytes
        if device.type == "cuda":  # the fused kernel path a CUDA bank takes: prepared bf16 keys only
            routing = {i: placeholder for i in cfg.router_layers}
            prepared = {i: random_prepared(c_total, hkv, d, device) for i in cfg.router_layers}
        else:
            routing = {i: torch.randn(c_total, hkv, d, device=device, dtype=dtype) for i in cfg.router_layers}
            prepared = None
        loaded.append(LoadedSegment(
            file=f"random-{s}", num_docs=b - a, chunk_doc=chunk_doc.to(device), doc_chunk_start=torch.cumsum(c, 0) - c,
            routing=routing, keys={i: placeholder for i in cfg.router_layers},
            values={i: placeholder for i in cfg.router_layers}, prepared=prepared,
        ))  # fmt: skip
        offs = (torch.cumsum(c, 0) - c).tolist()
        rows += [DocRow(a + j, None, "", int(lengths[a + j]), si, j, offs[j], int(c[j]), False) for j in range(b - a)]
    raw = replace(options, coupled_scale=1.0)  # the distributed access scales after the global merge
    shard = BankSnapshot(loaded, rows, {i: i for i in range(len(loaded))}, -1, raw, device, tile_chunks)
    info = {"documents": n_docs, "chunks": int(chunks.sum()), "segments": n_segs, "rank_chunks": layout.rank_chunks()}
    return shard, layout, info


def random_prepared(c: int, hkv: int, d: int, device: torch.device) -> RoutingKeys:
    """Random cosine-prepared routing keys [C, Hkv*D] bf16, built per head without a float32 copy of all."""
    keys = torch.empty(c, hkv * d, dtype=torch.bfloat16, device=device)
    for r0 in range(0, c, 1 << 18):
        k = torch.randn(min(1 << 18, c - r0), hkv, d, device=device)
        keys[r0 : r0 + k.shape[0]] = torch.nn.functional.normalize(k, dim=-1).reshape(k.shape[0], hkv * d).to(torch.bfloat16)
    return RoutingKeys(keys, None, hkv, d, True)


class Timed:
    """Per-layer route/fetch wall times (device-synchronised) of a MemoryAccess."""

    def __init__(self, inner, device: torch.device):
        self.inner, self.device = inner, device
        self.route_s: list[float] = []
        self.fetch_s: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def route(self, *a):
        self._sync()
        t0 = time.perf_counter()
        out = self.inner.route(*a)
        self._sync()
        self.route_s.append(time.perf_counter() - t0)
        return out

    def fetch(self, *a):
        t0 = time.perf_counter()
        out = self.inner.fetch(*a)
        self._sync()
        self.fetch_s.append(time.perf_counter() - t0)
        return out


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=1e8)
    ap.add_argument("--quick", action="store_true", help="tiny model and bank on CPU/gloo (a smoke test)")
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--segment-chunks", type=int, default=1 << 16)
    ap.add_argument("--tile-chunks", type=int, default=1 << 16)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if "RANK" not in os.environ:  # plain `python bench/parallel.py`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.quick:
        args.tokens = min(args.tokens, 20_000)
        args.segment_chunks, args.tile_chunks, args.repeats = 200, 128, min(args.repeats, 2)
    ctx = init_distributed("gloo" if args.quick or not torch.cuda.is_available() else None, timeout_s=args.timeout)
    device = ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(args.quick)
    t0 = time.perf_counter()
    with torch.device(device):
        model = MSAForCausalLM(cfg).init_weights(seed=0).to(dtype).eval()
    shard, layout, info = random_bank(cfg, model.routing_options(), args.tokens, args.segment_chunks, ctx.rank, ctx.world, device, dtype, args.tile_chunks)
    access = Timed(DistributedAccess(shard, layout, ctx, model.routing_options().coupled_scale,
                                     (cfg.num_key_value_heads, cfg.head_dim), dtype, device), device)  # fmt: skip
    prefix = model.encode_prefix([1, 2, 3])
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    ttft, route, fetch = [], [], []
    for rep in range(args.repeats + 1):
        ids = torch.randint(10, cfg.vocab_size, (args.batch, args.question_tokens), generator=g).to(device)
        mask = torch.ones_like(ids, dtype=torch.bool)
        access.route_s.clear(), access.fetch_s.clear()
        ctx.barrier("bench.start")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = model.prefill(ids, mask, mask, memory=access, prefix=prefix, last_only=True)
            out.logits.argmax(-1).cpu()
        if rep:  # the first is a warm-up
            ttft.append(time.perf_counter() - t1)
            route.append(statistics.mean(access.route_s))
            fetch.append(statistics.mean(access.fetch_s))
    res = {
        "card": card_name(device), "world": ctx.world, "backend": ctx.backend, "torch": torch.__version__,
        "python": platform.python_version(), "quick": args.quick, "tokens": args.tokens, **info,
        "router_layers": len(cfg.router_layers), "batch": args.batch, "question_tokens": args.question_tokens,
        "ttft_ms": 1e3 * statistics.median(ttft), "route_ms_per_layer": 1e3 * statistics.median(route),
        "fetch_ms_per_layer": 1e3 * statistics.median(fetch), "build_s": build_s,
        "peak_device_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "bank": "random tensors built in place (routing keys random on the device; content one broadcast random chunk), "
                "documents of 64-200 tokens; random-weight model",
    }  # fmt: skip
    if ctx.rank == 0:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "_quick" if args.quick else ""
        (out_dir / f"parallel_{res['card']}_w{ctx.world}{suffix}.json").write_text(json.dumps(res, indent=2))
        base_file = out_dir / f"parallel_{res['card']}_w1{suffix}.json"
        base = json.loads(base_file.read_text()) if base_file.exists() and ctx.world > 1 else None
        print(f"Memory Parallel, {res['card']}, {info['documents']} docs / {info['chunks']} chunks "
              f"({args.tokens:.3g} tokens, RANDOM-TENSOR bank), shard chunks {info['rank_chunks']}")  # fmt: skip
        print(f"{'W':>3} {'TTFT ms':>10} {'route ms/layer':>15} {'fetch ms/layer':>15}")
        for r in ([base] if base else []) + [res]:
            print(f"{r['world']:>3} {r['ttft_ms']:>10.2f} {r['route_ms_per_layer']:>15.3f} {r['fetch_ms_per_layer']:>15.3f}")
        if base:
            print(f"speed-up over W=1: TTFT x{base['ttft_ms'] / res['ttft_ms']:.2f}, "
                  f"routing x{base['route_ms_per_layer'] / res['route_ms_per_layer']:.2f}")  # fmt: skip
    ctx.close()


if __name__ == "__main__":
    main()
