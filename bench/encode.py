"""Stage-1 encoding throughput: ``model.encode`` tokens/s and MFU at the MSA-4B shape (random weights).

The model has the MSA-4B widths (hidden 2560, 32 q / 8 kv heads of 128, intermediate 9728, vocab
151936) but only ``--layers`` decoder layers (router layers in the latter half, as in MSA-4B); encode
runs every layer up to the last router layer, so the 36-layer time is the measured time x 36/layers
(stated as an extrapolation in the output; MFU does not change under it). Documents: random token ids,
lengths uniform in [--min-len, --max-len]. Batching strategies compared (no model change):
  random:  documents in arrival order, batches of at most --batch-tokens padded tokens
  sorted:  documents sorted by length, then cut into batches of at most --batch-tokens padded tokens
  packed:  the same batches, each encoded as ONE row of back-to-back documents with a block-diagonal
           causal mask (``model.encode(packed=True)``, FlexAttention on CUDA): no padding work
MFU = (2 * params_used * real tokens + causal attention FLOPs of the real tokens) / time / peak,
peak = bf16 matmul rate of an 8192^3 product measured in the same run. ``gemm_only`` times just the
layers' linear maps on the real tokens packed without padding: what a packed (varlen) encode could reach.
The JSON records the card and the versions (torch, python).

    python bench/encode.py [--layers 4] [--docs 2048] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig

log = logging.getLogger("bench.encode")


def model_config(layers: int, quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           msa=MSAConfig(pooling_kernel_size=8, top_k_docs=4))  # fmt: skip
    return ModelConfig(num_hidden_layers=layers)  # MSA-4B widths, router layers = latter half


def layer_params(cfg: ModelConfig, router: bool) -> int:
    """Weights of one decoder layer's matrix products (per token: 2 FLOPs each)."""
    h, hq, hkv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    n = h * hq * 2 + h * hkv * 2 + 3 * h * cfg.intermediate_size
    if router and cfg.msa.decouple_router:
        n += h * hq + h * hkv
    return n


def model_flops(cfg: ModelConfig, lengths: list[int], num_layers: int) -> float:
    """Useful FLOPs of encoding documents of these lengths through the first num_layers layers."""
    tokens = sum(lengths)
    router = set(cfg.router_layers)
    linear = sum(2 * layer_params(cfg, i in router) for i in range(num_layers)) * tokens
    # causal attention per layer and document: QK^T and PV, 2 * L^2/2 * D * 2 FLOPs per head each
    attn = num_layers * sum(2 * cfg.num_attention_heads * cfg.head_dim * n * n for n in lengths)
    return float(linear + attn)


def batches(lengths: list[int], budget: int, sort: bool) -> list[list[int]]:
    """Document indices per batch; padded tokens (n * max length) <= budget (at least one document)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else list(range(len(lengths)))
    out, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and m * (len(cur) + 1) > budget:
            out.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        out.append(cur)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encode(model, docs: list[torch.Tensor], plan: list[list[int]], device: torch.device, reps: int,
                packed: bool = False) -> float:  # fmt: skip
    """Seconds per pass over all batches (best of reps after one warm-up pass)."""
    best = float("inf")
    for r in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        for idx in plan:
            model.encode([docs[i] for i in idx], packed=packed)
        sync(device)
        if r > 0:
            best = min(best, time.perf_counter() - t0)
    return best


def time_gemm_only(model, tokens: int, device: torch.device, dtype: torch.dtype, chunk: int, reps: int) -> float:
    """Seconds for the linear maps of every encoded layer over ``tokens`` packed tokens (no padding)."""
    mods = []
    for layer in model.model.layers[: max(model.router_layers) + 1]:
        a, m = layer.self_attn, layer.mlp
        mods.append([a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
                    + ([a.router_q_proj[0], a.router_k_proj[0]] if hasattr(a, "router_q_proj") else []))  # fmt: skip
    h = model.config.hidden_size
    x = torch.randn(chunk, h, device=device, dtype=dtype)
    xq = torch.randn(chunk, model.config.num_attention_heads * model.config.head_dim, device=device, dtype=dtype)
    xi = torch.randn(chunk, model.config.intermediate_size, device=device, dtype=dtype)
    inp = {"o_proj": xq, "down_proj": xi}
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "router_q", "router_k"]
    best = float("inf")
    for r in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(max(1, tokens // chunk)):
            for layer in mods:
                for name, lin in zip(names, layer):
                    lin(inp.get(name, x))
        sync(device)
        if r > 0:
            best = min(best, time.perf_counter() - t0)
    return best * tokens / (max(1, tokens // chunk) * chunk)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 3
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--docs", type=int, default=2048)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (exercises the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.quick:
        args.docs, args.min_len, args.max_len, args.batch_tokens, args.reps = 8, 8, 40, 128, 1
    cfg = model_config(args.layers, args.quick)
    torch.manual_seed(0)
    model = MSAForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # random weights, drawn on the device (init_weights draws on the CPU: slow at 4B)
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, cfg.initializer_range)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.docs,), generator=g).tolist()
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    encoded_layers = max(cfg.router_layers) + 1
    flops = model_flops(cfg, lengths, encoded_layers)
    tokens = sum(lengths)
    peak = matmul_tflops(device, dtype, 8192 if cuda else 512)
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    rows = {}
    for name, sort, packed in (("random", False, False), ("sorted", True, False), ("packed", True, True)):
        plan = batches(lengths, args.batch_tokens, sort)
        padded = tokens if packed else sum(len(b) * max(lengths[i] for i in b) for b in plan)
        sec = time_encode(model, docs, plan, device, args.reps, packed)
        rows[name] = {
            "batches": len(plan), "padded_tokens": padded, "padding_waste": 1 - tokens / padded,
            "seconds": sec, "tokens_per_s_measured_layers": tokens / sec,
            "tokens_per_s_36_layers_extrapolated": tokens / (sec * 36 / encoded_layers),
            "TFLOPs": flops / sec / 1e12, "MFU": flops / sec / 1e12 / peak,
        }  # fmt: skip
        log.info("%-7s %s", name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}))
    gemm_s = time_gemm_only(model, tokens, device, dtype, min(args.batch_tokens, 16384), args.reps)
    linear_flops = sum(2 * layer_params(cfg, i in set(cfg.router_layers)) for i in range(encoded_layers)) * tokens
    rows["gemm_only_packed"] = {"seconds": gemm_s, "TFLOPs": linear_flops / gemm_s / 1e12,
                                "MFU_of_model_flops": flops / gemm_s / 1e12 / peak}  # fmt: skip
    log.info("gemm_only %s", json.dumps({k: round(v, 4) for k, v in rows["gemm_only_packed"].items()}))
    result = {
        "bench": "encode", "card": card, "torch": torch.__version__, "python": platform.python_version(),
        "quick": args.quick, "dtype": str(dtype), "weights": "random",
        "shape": {"hidden": cfg.hidden_size, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                  "head_dim": cfg.head_dim, "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size,
                  "layers_measured": args.layers, "layers_encoded": encoded_layers, "router_layers": list(cfg.router_layers)},
        "documents": args.docs, "lengths": [args.min_len, args.max_len], "tokens": tokens,
        "batch_tokens": args.batch_tokens, "model_flops": flops, "peak_bf16_matmul_TFLOPs": peak,
        "extrapolation": "36-layer tokens/s = measured tokens/s x encoded layers / 36 (per-layer cost constant)",
        "results": rows,
    }  # fmt: skip
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"encode_{card.replace(' ', '_')}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("peak %.1f TFLOP/s (%s); MFU random %.3f sorted %.3f packed %.3f gemm-only %.3f -> %s", peak, card,
             rows["random"]["MFU"], rows["sorted"]["MFU"], rows["packed"]["MFU"],
             rows["gemm_only_packed"]["MFU_of_model_flops"], out)  # fmt: skip
    return result


if __name__ == "__main__":
    main()
