"""GPU training throughput: the MSA-4B shape (ModelConfig(): 36 layers, random init) at 16K and 64K
tokens per step, and the shipped small model's shape (recipes/bios_small.py); reference path (the
"before") and fast path (speed.path="fast" and its levers) measured in the same run.

    python bench/train.py [--out bench/results/train_<card>.json] [--budget-s 330] [--skip-small]
    python bench/train.py --only-small [--small-sections reference,fast]   # the small model only

MFU = model FLOP/s / the card's bf16 matmul rate MEASURED in the same run (an 8192^3 bf16 matmul).
Model FLOPs of a step, counted from its batch (real tokens only, padding not counted):
  6 * (non-embedding params) * tokens + 6 * hidden * vocab * (LM target tokens)
  + 12 * Hq * D * (allowed (query, key) pairs: causal inside documents and among stream tokens in
    every layer, plus stream tokens x their selected chunks in router layers).
Big-model steps use synthetic packed batches (random tokens; documents of 512 tokens, a 64-token
routing query, a response that is the LM target) so the token counts are exact; the step itself is
the training loop's (forward, objective, backward, clipping, AdamW). Each configuration is one
section of the JSON; a section that fails (out of memory, say) records its error, and the JSON is
rewritten after every section, so a time-out keeps what was measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from msa.config import ModelConfig  # noqa: E402
from msa.model.context import PackedBatch  # noqa: E402
from msa.model.modeling import MSAForCausalLM  # noqa: E402
from msa.train.collator import IGNORE, TrainBatch  # noqa: E402
from msa.train.config import SpeedConfig  # noqa: E402
from msa.train.fast import apply_speed  # noqa: E402
from msa.train.objective import LossWeights, Objective  # noqa: E402
from msa.train.parallelize import TrainForward  # noqa: E402

logger = logging.getLogger("bench.train")

DOC_TOKENS, QUERY_TOKENS, TEMPLATE_TOKENS = 512, 64, 4


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


def synthetic_batch(rows: int, row_tokens: int, vocab: int, seed: int) -> tuple[TrainBatch, dict]:
    """rows samples of exactly row_tokens tokens: template | N documents of DOC_TOKENS | query | 2 template
    tokens | response (LM targets). Returns the batch and its attention pair counts (per sample summed)."""
    g = torch.Generator().manual_seed(seed)
    n_docs = (row_tokens - TEMPLATE_TOKENS - QUERY_TOKENS - 2 - 256) // DOC_TOKENS
    response = row_tokens - TEMPLATE_TOKENS - n_docs * DOC_TOKENS - QUERY_TOKENS - 2
    doc_ids = torch.cat([
        torch.full((TEMPLATE_TOKENS,), -2), torch.arange(1, n_docs + 1).repeat_interleave(DOC_TOKENS),
        torch.zeros(QUERY_TOKENS, dtype=torch.long), torch.full((2,), -2), torch.full((response,), -1),
    ])  # fmt: skip
    stream_len = TEMPLATE_TOKENS + QUERY_TOKENS + 2 + response
    q_off = TEMPLATE_TOKENS + n_docs * DOC_TOKENS
    pos = torch.cat([torch.arange(TEMPLATE_TOKENS), torch.arange(DOC_TOKENS).repeat(n_docs),
                     torch.arange(q_off, q_off + stream_len - TEMPLATE_TOKENS)])  # fmt: skip
    ids = torch.randint(0, vocab, (rows, row_tokens), generator=g)
    labels = torch.full((rows, row_tokens), IGNORE, dtype=torch.long)
    labels[:, -response:] = ids[:, -response:]
    aux = [torch.tensor([1, 1] + [0] * (n_docs - 2)) for _ in range(rows)]
    packed = PackedBatch(ids, doc_ids.expand(rows, -1).clone(), pos.expand(rows, -1).clone(),
                         torch.ones(rows, row_tokens, dtype=torch.bool))  # fmt: skip
    pairs = {
        "local": rows * (n_docs * DOC_TOKENS * (DOC_TOKENS + 1) // 2 + stream_len * (stream_len + 1) // 2),
        "stream_tokens": rows * stream_len, "n_docs": n_docs, "targets": rows * response,
    }  # fmt: skip
    return TrainBatch(packed, labels, aux), pairs


def step_flops(cfg: ModelConfig, n_params: int, tokens: int, pairs: dict) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    m = cfg.msa
    chunks = min(m.top_k, pairs["n_docs"]) * math.ceil(DOC_TOKENS / m.chunk_size)
    attn_pairs = pairs["local"] * cfg.num_hidden_layers + pairs["stream_tokens"] * chunks * len(cfg.router_layers)
    return (6 * n_params * tokens + 6 * cfg.hidden_size * cfg.vocab_size * pairs["targets"]
            + 12 * cfg.num_attention_heads * cfg.head_dim * attn_pairs)  # fmt: skip


def big_model(cfg: ModelConfig, dtype: torch.dtype) -> MSAForCausalLM:
    """Random init (normal, std initializer_range; norms 1) directly on the GPU (seeded)."""
    with torch.device("cuda"):
        model = MSAForCausalLM(cfg)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.dim() > 0:
                p.normal_(0.0, cfg.initializer_range, generator=g)
    return model.to(dtype)


class Steps:
    """The training loop's step (forward under bf16 autocast, objective, backward, clip, fused AdamW)
    over fixed batches, for one SpeedConfig."""

    def __init__(self, model: MSAForCausalLM, speed: SpeedConfig):
        apply_speed(model, speed)
        self.model, self.speed = model, speed
        self.wrapper = TrainForward(model, speed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-5, betas=(0.9, 0.95), fused=True)
        self.objective = Objective(model.config, getattr(model, "b", None))

    def __call__(self, batch: TrainBatch) -> dict:
        index, targets = batch.lm_targets()
        lm_den, aux_den = self.objective.denominators(batch)
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16):
            out = self.wrapper(batch.packed, index, targets if self.speed.path == "fast" else None)
        loss, metrics = self.objective(out, targets, batch, LossWeights(0.1, 1.0), lm_den, aux_den)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        means = metrics.means()
        return {"lm_loss": means["lm_loss"], "aux_loss": means.get("aux_loss"), "grad_norm": float(norm)}


def measure(run, batches: list, warmup: int, steps: int, flops: float, peak: float, tokens: int) -> dict:
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warmup):
        run(batches[i % len(batches)])
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    recs = [run(batches[(warmup + i) % len(batches)]) for i in range(steps)]
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    return {
        "tokens_per_step": tokens, "step_time_s": wall, "tokens_per_s": tokens / wall, "mfu": flops / wall / peak,
        "model_flops_per_step": flops, "warmup_s": first, "steps": steps,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9, "last": recs[-1],
    }  # fmt: skip


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


BIG_SECTIONS = [
    # name, row tokens, rows, param dtype, SpeedConfig, warmup, steps (in order of value: the budget may
    # end the list; recompiles happen where the shapes or the parameter dtype change)
    ("reference_16k", 8192, 2, "bfloat16", SpeedConfig(), 1, 2),
    ("fast_16k", 8192, 2, "bfloat16", SpeedConfig(path="fast", compile=True, checkpoint="block"), 1, 3),
    ("fast_16k_no_checkpoint", 8192, 2, "bfloat16", SpeedConfig(path="fast", compile=True), 1, 2),
    ("fast_64k", 65536, 1, "bfloat16", SpeedConfig(path="fast", compile=True, checkpoint="block"), 1, 2),
    ("fast_16k_no_compile", 8192, 2, "bfloat16", SpeedConfig(path="fast", checkpoint="block"), 1, 2),
    ("fast_16k_fp32_master", 8192, 2, "float32", SpeedConfig(path="fast", compile=True, checkpoint="block"), 1, 2),
    ("fast_64k_fp32_master", 65536, 1, "float32", SpeedConfig(path="fast", compile=True, checkpoint="block"), 1, 2),
    ("reference_64k", 65536, 1, "bfloat16", SpeedConfig(), 0, 1),
]


def big_sections(result: dict, save, deadline: float, peak: float, names: list[str] | None = None) -> None:
    cfg = ModelConfig()
    model = big_model(cfg, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    result["msa4b"] = {"non_embedding_params": n_params, "layers": cfg.num_hidden_layers,
                       "router_layers": len(cfg.router_layers), "sections": {}}  # fmt: skip
    for name, row_tokens, rows, dtype, speed, warmup, steps in BIG_SECTIONS:
        if names is not None and name not in names:
            continue
        if time.perf_counter() > deadline:
            result["msa4b"]["sections"][name] = {"skipped": "time budget"}
            continue
        logger.info("section %s", name)
        model.to(getattr(torch, dtype))
        batch, pairs = synthetic_batch(rows, row_tokens, cfg.vocab_size, seed=0)
        batch = batch.to("cuda")
        flops = step_flops(cfg, n_params, rows * row_tokens, pairs)
        rec: dict
        try:
            run = Steps(model, speed)
            rec = measure(run, [batch], warmup, steps, flops, peak, rows * row_tokens)
            rec.update(param_dtype=dtype, speed=speed.__dict__, rows=rows)
        except Exception as e:  # noqa: BLE001  a failed configuration is a result (e.g. out of memory)
            rec = {"error": f"{type(e).__name__}: {str(e)[:300]}", "param_dtype": dtype, "speed": speed.__dict__}
            logger.warning("section %s failed:\n%s", name, traceback.format_exc()[-2000:])
        run = None  # noqa: F841
        for p in model.parameters():
            p.grad = None
        _free()
        result["msa4b"]["sections"][name] = rec
        logger.info("%s: %s", name, json.dumps(rec))
        save()
    secs = result["msa4b"]["sections"]
    ok = lambda k: k in secs and "tokens_per_s" in secs[k]  # noqa: E731
    if ok("reference_16k") and ok("fast_16k"):
        result["msa4b"]["speedup_16k"] = secs["fast_16k"]["tokens_per_s"] / secs["reference_16k"]["tokens_per_s"]
    best = [secs[k]["mfu"] for k in secs if ok(k) and k.startswith("fast")]
    result["msa4b"]["best_mfu"] = max(best) if best else None
    del model
    _free()


def busy_fraction(trainer, steps: int) -> tuple[float, float, int]:
    """(GPU busy fraction = summed kernel time / wall, wall seconds, tokens) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    tokens = 0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            tokens += trainer.train_step()["tokens"]
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernel_us = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernel_us / 1e6 / wall, wall, tokens


SMALL_SECTIONS = [
    ("reference", SpeedConfig()),
    ("fast", SpeedConfig(path="fast")),
    ("fast_compiled", SpeedConfig(path="fast", compile=True)),
]


def small_sections(result: dict, save, deadline: float, workers: int, names: list[str] | None = None,
                   steps: int = 8) -> None:  # fmt: skip
    from msa.train import load_recipe
    from msa.train.loop import Trainer

    result["bios_small"] = {}
    for name, speed in SMALL_SECTIONS:
        if names is not None and name not in names:
            continue
        if time.perf_counter() > deadline:
            result["bios_small"][name] = {"skipped": "time budget"}
            continue
        logger.info("small section %s", name)
        over = ["checkpoint.dir=", "logging.every=0", "logging.metrics_file=", f"data.workers={workers}",
                "schedule.phases.0.steps=40", f"speed.path={speed.path}", f"speed.compile={str(speed.compile).lower()}"]  # fmt: skip
        try:
            trainer = Trainer(load_recipe("bios_small", over))
            t0 = time.perf_counter()
            for _ in range(4):  # warm-up: workers start, kernels compile
                trainer.train_step()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            tokens = sum(trainer.train_step()["tokens"] for _ in range(steps))
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            rec = {"tokens_per_s": tokens / wall, "step_time_s": wall / steps, "steps": steps, "warmup_s": warm,
                   "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9, "speed": speed.__dict__}  # fmt: skip
            try:
                busy, bwall, btok = busy_fraction(trainer, 3)
                rec.update(gpu_busy_fraction=busy, profiled_tokens_per_s=btok / bwall)
            except Exception as e:  # noqa: BLE001
                rec["gpu_busy_fraction_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            del trainer
        except Exception as e:  # noqa: BLE001
            rec = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            logger.warning("small section %s failed:\n%s", name, traceback.format_exc()[-2000:])
        _free()
        torch.cuda.reset_peak_memory_stats()
        result["bios_small"][name] = rec
        logger.info("small %s: %s", name, json.dumps(rec))
        save()


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--budget-s", type=float, default=330.0, help="start no new section after this many seconds")
    ap.add_argument("--small-budget-s", type=float, default=70.0, help="seconds kept for the small-model sections")
    ap.add_argument("--small-steps", type=int, default=8, help="timed steps of each small-model section")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--only-small", action="store_true", help="only the small-model sections")
    ap.add_argument("--big-sections", default=",".join(n for n, *_ in BIG_SECTIONS),
                    help="which MSA-4B-shape sections, comma-separated")
    ap.add_argument("--small-sections", default=",".join(n for n, _ in SMALL_SECTIONS),
                    help="which small-model sections, comma-separated")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    card = torch.cuda.get_device_name()
    out = args.out or f"bench/results/train_{card.replace(' ', '_')}.json"
    peak = matmul_rate()
    result: dict = {"card": card, "torch": torch.__version__, "python": platform.python_version(),
                    "matmul_bf16_flops": peak, "doc_tokens": DOC_TOKENS, "note": __doc__.split("\n\n")[2]}  # fmt: skip

    def save() -> None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=2)

    small_time = 0.0 if args.skip_small else args.small_budget_s
    if not args.only_small:
        big_sections(result, save, start + args.budget_s - small_time, peak, args.big_sections.split(","))
    if not args.skip_small:
        small_sections(result, save, start + args.budget_s, args.workers, args.small_sections.split(","), args.small_steps)
    result["wall_s"] = time.perf_counter() - start
    save()
    logger.info("wrote %s", out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
