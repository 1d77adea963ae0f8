"""Memory-bank benchmark: build a bank of N tokens with a small random-weight model, reopen it, ask.

Reports encode tokens/s, peak device and host memory, and ask latency per stage (route, fetch,
prefill, decode). The model has random weights: answers are noise, the timings are what we measure.

Card and versions (torch, python, msa) are recorded in the JSON. No floor of its own: an end-to-end
record of the bank's path; its parts are measured against floors by bench/encode.py (the bf16 matmul
rate) and bench/routing.py (the read bandwidth).

    PYTHONPATH=src python bench/bank.py --tokens 10_000_000 --out bench/results/bank_<card>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

import msa
from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine
from msa.memory import MemoryBank
from msa.tokenizer import train_tokenizer


def peak_host_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> GB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=float, default=10e6)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dir", default=None, help="where to build the bank (default: a temp dir, removed)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    world_n = 1024 * max(1, int(args.tokens / 68 / 1024) + 1)
    world = BiosWorld(BiosConfig(num_people=world_n, seed=0))
    t0 = time.perf_counter()
    docs = list(world.iter_documents(0, world_n))
    gen_s = time.perf_counter() - t0
    tok = train_tokenizer(docs[:5000], 2048)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                      msa=MSAConfig(top_k_docs=16, pooling_kernel_size=64))  # fmt: skip
    model = MSAForCausalLM(cfg).init_weights(0).to(device, dtype).eval()
    root = Path(args.dir or tempfile.mkdtemp(prefix="msa-bank-bench-"))
    path = root / "bank"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bank = MemoryBank.create(path, model, tok, batch_tokens=1 << 17, segment_tokens=1 << 21)
    t0 = time.perf_counter()
    bank.add(docs, progress=True)
    if device == "cuda":
        torch.cuda.synchronize()
    enc_s = time.perf_counter() - t0
    stats = bank.stats()
    bank.close()
    peak_dev_encode = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None

    t0 = time.perf_counter()
    bank = MemoryBank.open(path, model, tok, device=device)
    engine = Engine(model, tok, bank)
    engine.ask("warm-up question?", max_new_tokens=4)
    open_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    qs = [q.text for q in world.iter_questions(args.questions, "single", seed=1)]
    per_q = []
    for q in qs:
        a = engine.ask(q, max_new_tokens=16, max_rounds=1)
        per_q.append(a.timings)
    stages = sorted({k for t in per_q for k in t})
    median = {k: sorted(t.get(k, 0.0) for t in per_q)[len(per_q) // 2] for k in stages}
    result = {
        "card": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "msa": msa.__version__,
        "model": "random weights: hidden 256, 4 layers (router layers 2,3), 8 q heads / 2 kv heads x 32, chunk 64, bf16",
        "documents": stats.get("documents"),
        "tokens": stats.get("tokens"),
        "chunks": stats.get("chunks"),
        "bytes_routing": stats.get("bytes_routing"),
        "bytes_content": stats.get("bytes_content"),
        "generate_docs_s": gen_s,
        "encode_s": enc_s,
        "encode_tokens_per_s": stats.get("tokens", 0) / enc_s,
        "open_and_first_ask_s": open_s,
        "peak_device_gb_encode": peak_dev_encode,
        "peak_device_gb_ask": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "peak_host_gb": peak_host_gb(),
        "ask_median_s_per_stage": median,
        "note": "prefill includes route and fetch; one routing round, 16 new tokens per question",
    }
    bank.close()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
