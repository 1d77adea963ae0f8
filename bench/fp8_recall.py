"""FP8 routing keys against bfloat16: recall@16 of the float8 selection, on a bank built by a trained model.

Until the shipped model exists, a tiny model is trained on the CPU the way tests/test_train_learning.py
does (msa.train Trainer, 64-person bios world, warm-up phase, query reduce "mean"), then it encodes
--docs bios documents (msa.data.bios: a world of --docs people whose first 64 are the training world)
and --questions bios questions about the 64 trained people are routed at every router layer with the same pooled router keys prepared as bfloat16 and as float8
(e4m3 + a scale per chunk) through ``msa.kernels.route_topk``: the Triton kernel on CUDA (float8 keys
AND float8 queries), the PyTorch GEMM formulation on the CPU (float8 keys, float32 queries: emulates
the key quantisation only). recall@16 = |top16(fp8) & top16(bf16)| / 16, averaged over questions and
layers (the kernel's query max, although the model trained with query mean); gold_recall = fraction of questions whose gold document is in the selection.

    python bench/fp8_recall.py [--steps 300] [--docs 4000] [--questions 400] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from msa.data.bios import BiosConfig, BiosWorld
from msa.kernels import prepare_routing_keys, route_topk
from msa.model.memory import Routing

log = logging.getLogger("bench.fp8_recall")
TRAIN_WORLD = BiosConfig(num_people=64, seed=0)


def train_model(steps: int, workdir: Path):
    """The learning test's recipe: returns (model, tokenizer)."""
    from msa.tokenizer import train_tokenizer
    from msa.train import (
        CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig, TrainConfig,
        tiny_model_config,
    )  # fmt: skip
    from msa.train.loop import Trainer

    tok = train_tokenizer(BiosWorld(TRAIN_WORLD).iter_documents(0, 64), 512, workdir / "tok")
    cfg = TrainConfig(
        model=ModelSpec(config=tiny_model_config(512, top_k_docs=4, pooling_kernel_size=16, query_reduce_method="mean"),
                        seed=0, router_init="mirror"),
        data=DataConfig(world=TRAIN_WORLD, curriculum=[CurriculumStage(0, 8)], target_format="ids_only",
                        micro_batch_size=8, seed=1, max_doc_tokens=32),
        schedule=ScheduleConfig([Phase("warmup", steps, 3e-3, 0.1, 1.0, warmup_steps=min(10, steps), decay="cosine")]),
        logging=LoggingConfig(every=0), parallel=ParallelConfig(device="cpu"),
    )  # fmt: skip
    trainer = Trainer(cfg, tokenizer=tok)
    trainer.fit()
    return trainer.model.eval(), tok


class CaptureQueries:
    """A MemoryAccess that records every router layer's queries and selects nothing."""

    def __init__(self):
        self.q: dict[int, torch.Tensor] = {}
        self.mask: dict[int, torch.Tensor] = {}

    def route(self, layer: int, q_router: torch.Tensor, query_mask: torch.Tensor, k: int) -> Routing:
        self.q[layer], self.mask[layer] = q_router.float().cpu(), query_mask.cpu()
        b = q_router.shape[0]
        return Routing(torch.full((b, k), -1, dtype=torch.long), torch.full((b, k), float("-inf")))

    def fetch(self, layer: int, docs: torch.Tensor):
        b = docs.shape[0]
        z = torch.zeros(b, 0, self.hkv, self.d)
        return z, z, torch.zeros(b, 0, dtype=torch.bool)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--max-doc-tokens", type=int, default=32)  # as trained
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a few training steps and a small bank, CPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.steps, args.docs, args.questions = 2, 64, 16
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the learning test's setting (tiny GEMMs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model, tok = train_model(args.steps, Path(tmp))
    finally:
        torch.set_num_threads(threads)
    train_s = time.perf_counter() - t0
    # the training world's 64 people are the first 64 of this one (same seed): they are asked about
    world = BiosWorld(BiosConfig(num_people=args.docs, seed=TRAIN_WORLD.seed))
    texts = list(world.iter_documents(0, args.docs))
    ids = [tok(t, add_special_tokens=False)["input_ids"][: args.max_doc_tokens] for t in texts]
    mems = [model.encode(ids[i : i + 256]) for i in range(0, len(ids), 256)]
    from msa.model.memory import CompressedMemory

    mem = CompressedMemory.cat(mems)
    from msa.data.bios import ATTRIBUTES

    questions = []
    for v in range(args.questions):
        try:
            questions.append(world.question(v % TRAIN_WORLD.num_people, "single",
                                            attribute=ATTRIBUTES[(v // TRAIN_WORLD.num_people) % len(ATTRIBUTES)]))  # fmt: skip
        except ValueError:
            continue
    cap = CaptureQueries()
    cap.hkv, cap.d = model.config.num_key_value_heads, model.config.head_dim
    qids = [tok(q.text, add_special_tokens=False)["input_ids"] for q in questions]
    tq = max(len(q) for q in qids)
    batch = torch.zeros(len(qids), tq, dtype=torch.long)
    amask = torch.zeros(len(qids), tq, dtype=torch.bool)
    for i, q in enumerate(qids):  # left padding
        batch[i, tq - len(q) :] = torch.tensor(q)
        amask[i, tq - len(q) :] = True
    model.prefill(batch, attention_mask=amask, memory=cap)
    gold = torch.tensor([q.gold_ids[-1] for q in questions])
    opts = model.routing_options()
    per_layer = {}
    for layer, lm in mem.layers.items():
        kr = lm.routing_keys.to(device)
        q, m = cap.q[layer].to(device), cap.mask[layer].to(device)
        sel = {}
        for name, dt in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
            keys = prepare_routing_keys(kr, opts.cosine, dt)
            sel[name] = route_topk(q, keys, mem.chunk_doc.to(device), mem.num_docs, args.k, m, opts.cosine)[0].cpu()
        inter = [len(set(a.tolist()) & set(b.tolist()) - {-1}) for a, b in zip(sel["fp8"], sel["bf16"])]
        per_layer[layer] = {
            f"recall@{args.k}": sum(inter) / (args.k * len(inter)),
            f"gold_recall@{args.k}_bf16": float((sel["bf16"] == gold[:, None]).any(1).float().mean()),
            f"gold_recall@{args.k}_fp8": float((sel["fp8"] == gold[:, None]).any(1).float().mean()),
            "gold_recall@1_bf16": float((sel["bf16"][:, 0] == gold).float().mean()),
        }
        log.info("layer %d %s", layer, json.dumps({k: round(v, 4) for k, v in per_layer[layer].items()}))
    recall = sum(v[f"recall@{args.k}"] for v in per_layer.values()) / len(per_layer)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "bench": "fp8_recall", "card": card, "torch": torch.__version__, "python": platform.python_version(),
        "quick": args.quick, "path": "triton kernel (fp8 keys + fp8 queries)" if device.type == "cuda"
        else "PyTorch GEMM formulation (fp8 keys, float32 queries)",
        "model": f"tiny, trained {args.steps} steps on the CPU (tests/test_train_learning.py recipe), {train_s:.0f} s",
        "documents": args.docs, "chunks": mem.num_chunks, "questions": args.questions, "k": args.k,
        f"recall@{args.k}": recall, "target": 0.99, "per_layer": per_layer,
    }  # fmt: skip
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"fp8_recall_{card.replace(' ', '_')}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("recall@%d fp8 vs bf16 = %.4f (%s) -> %s", args.k, recall, card, out)
    return result


if __name__ == "__main__":
    main()
