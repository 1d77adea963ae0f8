"""FP8 routing keys against bfloat16: recall@16 of the float8 selection on a real bank of a trained model.

1. A tiny model is trained on the CPU with the recipe of tests/test_train_learning.py (router init
   "mirror", warm-up phase, ``query_reduce_method="mean"``, 8 documents per sample) on a larger bios
   world (--people, default 1024) for --steps (default 1500), and cached under --model-dir (runs/, never
   committed). Its router recall@1 on 128 held-out 8-document samples is recorded.
2. It builds a MemoryBank of --docs bios documents of a world whose first --people people are the
   training world (same seed), opened with ``routing_dtype="fp8"`` (the fused path: float8 e4m3 keys
   + a scale per chunk, queries pre-reduced to one row per question and scored by one GEMV) and with
   ``routing_dtype="bf16"``.
   Documents are cut to --doc-tokens formatted tokens (default 32, as trained; 0 keeps them whole).
3. --questions held-out questions about people in the bank (seed 7, uniform over the bank) go through
   ``model.prefill`` with the fp8 snapshot as memory; at every router layer the same router queries are
   also routed with bfloat16 prepared keys and by the bank's bf16 open. On the CPU a bf16 open routes by
   the exact float32 tiled path (bfloat16 keys buy nothing there), so bfloat16 selection is emulated by
   calling the function the fused path calls, ``msa.kernels.route_topk(..., query_reduce="mean")``, on the
   snapshot's keys prepared as bfloat16; the float32 tiled selection is reported too.

recall@16 = |top16(fp8) & top16(bf16)| / 16 averaged over questions (and router layers); gold@16 = the
fraction of questions whose gold document is selected; bf16_top16_in_fp8_topS = how much of the bf16
top 16 a float8 shortlist of S documents holds (what an fp8 shortlist + exact rescoring would recover).

Card and versions: the CPU it ran on (``card``, ``platform``), torch, python and msa are recorded in
the JSON. Baseline: the bfloat16 selection (and the float32 one) of the same questions in the same run;
the target recall@16 is 0.99.

    python bench/fp8_recall.py [--steps 1500] [--people 1024] [--docs 4096] [--questions 400] [--quick]
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

import msa
from msa.data.bios import BiosConfig, BiosWorld

log = logging.getLogger("bench.fp8_recall")


def train_or_load(model_dir: Path, steps: int, people: int, threads: int):
    """The learning test's recipe on a larger world; cached in ``model_dir`` (weights are never committed).

    Returns (model, tokenizer, info): info holds the training seconds and the router recall@1 on 128
    held-out 8-document samples (seed 999), before and after training.
    """
    from msa import MSAForCausalLM
    from msa.tokenizer import load_tokenizer, train_tokenizer
    from msa.train import (
        BiosSamples, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
        TrainConfig, tiny_model_config,
    )  # fmt: skip
    from msa.train.loop import Trainer
    from msa.train.objective import mean_recall

    world = BiosConfig(num_people=people, seed=0)
    info_path = model_dir / "train_info.json"
    want = {"steps": steps, "people": people}
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if {k: info.get(k) for k in want} == want:
            log.info("loading the trained model from %s", model_dir)
            tok = load_tokenizer(model_dir / "tok")
            return MSAForCausalLM.from_pretrained(model_dir / "model").eval(), tok, info
    tok = train_tokenizer(BiosWorld(world).iter_documents(0, people), 512, model_dir / "tok")
    cfg = TrainConfig(
        model=ModelSpec(config=tiny_model_config(512, top_k_docs=4, pooling_kernel_size=16, query_reduce_method="mean"),
                        seed=0, router_init="mirror"),
        data=DataConfig(world=world, curriculum=[CurriculumStage(0, 8)], target_format="ids_only",
                        micro_batch_size=8, seed=1, max_doc_tokens=32),
        schedule=ScheduleConfig([Phase("warmup", steps, 3e-3, 0.1, 1.0, warmup_steps=min(10, steps), decay="cosine")]),
        logging=LoggingConfig(every=100), parallel=ParallelConfig(device="cpu"),
    )  # fmt: skip
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, tokenizer=tok)
        held = [BiosSamples(world, 8, "single", seed=999).sample(i) for i in range(128)]
        before = mean_recall(trainer.evaluate(held, 16), 1, trainer.objective.layers)
        trainer.fit()
        train_s = time.perf_counter() - t0
        after = mean_recall(trainer.evaluate(held, 16), 1, trainer.objective.layers)
    finally:
        torch.set_num_threads(saved)
    model = trainer.model.eval()
    model.save_pretrained(model_dir / "model")
    info = {**want, "train_s": round(train_s, 1), "heldout_router_recall@1_before": before,
            "heldout_router_recall@1_after": after, "recipe": "tests/test_train_learning.py on a larger world"}  # fmt: skip
    info_path.write_text(json.dumps(info, indent=1))
    log.info("trained %d steps in %.0f s: held-out router recall@1 %.3f -> %.3f", steps, train_s, before, after)
    return model, tok, info


class CompareRouting:
    """A MemoryAccess over the fp8 snapshot that also routes every router layer's queries three ways.

    ``route`` selects the top ``k_eval`` documents with (a) the fp8 snapshot (fused path), (b) bfloat16
    prepared keys of the same chunks through ``msa.kernels.route_topk`` (the function the fused path calls)
    and (c) the float32 snapshot (the CPU's tiled path, exact); it records them and gives the model the
    fp8 selection (its first k), so all three see the same queries.
    """

    def __init__(self, fp8, exact, k_eval: int, shortlist: int, rescored=None):
        self.fp8, self.exact, self.k_eval, self.shortlist = fp8, exact, k_eval, shortlist
        self.rescored = rescored  # the default fp8 bank: fp8 candidates + exact rescoring
        self.sel: dict[int, dict[str, list[torch.Tensor]]] = {}
        self._bf16: dict[int, object] = {}

    def _bf16_keys(self, layer: int):
        from msa.kernels import prepare_routing_keys

        if layer not in self._bf16:
            raw = torch.cat([s.routing[layer] for s in self.fp8.segments])  # segment order = the fused chunk order
            self._bf16[layer] = prepare_routing_keys(raw, self.fp8.options.cosine, torch.bfloat16)
        return self._bf16[layer]

    def route(self, layer: int, q_router: torch.Tensor, query_mask: torch.Tensor, k: int):
        from msa import kernels
        from msa.model.memory import Routing

        ke = max(k, self.k_eval)
        r8 = self.fp8.route(layer, q_router, query_mask, max(ke, self.shortlist))
        _, chunk_slot = self.fp8.routing_keys(layer)
        opts = self.fp8.options
        d16, _ = kernels.route_topk(q_router, self._bf16_keys(layer), chunk_slot, self.fp8.num_docs, ke, query_mask,
                                    opts.cosine, query_reduce=opts.query_reduce)  # fmt: skip
        r32 = self.exact.route(layer, q_router, query_mask, ke)
        rec = self.sel.setdefault(layer, {"fp8": [], "bf16": [], "f32": [], "fp8_shortlist": []})
        if self.rescored is not None:
            rec.setdefault("fp8_rescored", []).append(self.rescored.route(layer, q_router, query_mask, ke).docs[:, : self.k_eval])
        rec["fp8_shortlist"].append(r8.docs[:, : self.shortlist])
        rec["fp8"].append(r8.docs[:, : self.k_eval])
        rec["bf16"].append(d16.cpu()[:, : self.k_eval])
        rec["f32"].append(r32.docs[:, : self.k_eval])
        return Routing(r8.docs[:, :k], r8.scores[:, :k])

    def fetch(self, layer: int, docs: torch.Tensor):
        return self.fp8.fetch(layer, docs)


def truncated_texts(tok, prompt, texts: list[str], max_tokens: int) -> list[str]:
    """Each text cut at a word boundary so its formatted document (gid = its index) keeps about ``max_tokens``
    tokens before the closing ``[gid]<|im_end|>``: the documents the model was trained on (the collator
    truncates formatted documents to ``max_doc_tokens``)."""
    out = []
    for gid, text in enumerate(texts):
        budget = max_tokens + len(tok.encode(f"[{gid}]<|im_end|>", add_special_tokens=False))
        words = text.split(" ")
        w = len(words)
        while w > 1 and len(tok.encode(prompt.format_document(gid, " ".join(words[:w])), add_special_tokens=False)) > budget:
            w -= 1
        out.append(" ".join(words[:w]))
    return out


def _overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean over rows of |set(a) & set(b)| / k (-1 entries ignored)."""
    inter = [len((set(x.tolist()) & set(y.tolist())) - {-1}) for x, y in zip(a, b)]
    return sum(inter) / (k * len(inter))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/fp8_recall", help="trained model cache (not committed)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--people", type=int, default=1024, help="training world size")
    ap.add_argument("--docs", type=int, default=4096, help="bank size (a world whose first --people are trained on)")
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--doc-tokens", type=int, default=32, help="formatted document tokens kept, as trained (0: whole)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--shortlist", type=int, default=64, help="also: bf16 top-k found in the fp8 top-SHORTLIST")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="questions per prefill")
    ap.add_argument("--quick", action="store_true", help="a few training steps and a small bank (smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from msa.memory import MemoryBank
    from msa.prompt import encode_segments, query_segments

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir)
        if args.quick:
            args.steps, args.people, args.docs, args.questions = 2, 64, 96, 16
            model_dir = Path(tmp) / "model"
        model, tok, info = train_or_load(model_dir, args.steps, args.people, args.threads)
        saved = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            t0 = time.perf_counter()
            world = BiosWorld(BiosConfig(num_people=args.docs, seed=0))
            bank = MemoryBank.create(Path(tmp) / "bank", model, tok)
            texts = list(world.iter_documents(0, args.docs))
            if args.doc_tokens:
                texts = truncated_texts(tok, bank.prompt, texts, args.doc_tokens)
            ids = bank.add(texts, ids=list(range(len(texts))))
            bank.close()
            build_s = time.perf_counter() - t0
            fp8 = MemoryBank.open(Path(tmp) / "bank", model, tok, routing_dtype="fp8", fp8_rescore=0)
            fp8r = MemoryBank.open(Path(tmp) / "bank", model, tok, routing_dtype="fp8")  # default: rescore 4k
            exact = MemoryBank.open(Path(tmp) / "bank", model, tok, routing_dtype="bf16")
            snap8, snap32, snap8r = fp8.snapshot(), exact.snapshot(), fp8r.snapshot()
            for layer in model.router_layers:
                assert snap8.uses_fused_routing(layer) and not snap32.uses_fused_routing(layer)
            slot_of = {int(b): s for s, b in enumerate(snap8.slot_to_id.tolist())}
            questions = list(world.iter_questions(args.questions, "single", seed=7))
            gold = torch.tensor([slot_of[ids[q.gold_ids[-1]]] for q in questions])
            trained = torch.tensor([q.gold_ids[-1] < args.people for q in questions])
            access = CompareRouting(snap8, snap32, args.k, args.shortlist, snap8r)
            t0 = time.perf_counter()
            for i in range(0, len(questions), args.batch):
                enc = [encode_segments(tok, query_segments(bank.prompt, q.text)) for q in questions[i : i + args.batch]]
                t = max(len(e[0]) for e in enc)
                batch = torch.zeros(len(enc), t, dtype=torch.long)
                amask = torch.zeros(len(enc), t, dtype=torch.bool)
                qmask = torch.zeros(len(enc), t, dtype=torch.bool)
                for j, (tids, doc_ids) in enumerate(enc):  # left padding
                    batch[j, t - len(tids) :] = torch.tensor(tids)
                    amask[j, t - len(tids) :] = True
                    qmask[j, t - len(tids) :] = torch.tensor(doc_ids) == 0
                with torch.no_grad():
                    model.prefill(batch, attention_mask=amask, query_mask=qmask, memory=access, last_only=True)
            route_s = time.perf_counter() - t0
            keys8, _ = snap8.routing_keys(model.router_layers[0])
            fp8_bytes, chunks = keys8.nbytes, keys8.num_chunks
            fp8.close()
            fp8r.close()
            exact.close()
        finally:
            torch.set_num_threads(saved)
    k = args.k
    per_layer = {}
    for layer, rec in access.sel.items():
        sel = {name: torch.cat(v) for name, v in rec.items()}
        shortlist = sel.pop("fp8_shortlist")
        per_layer[layer] = {
            f"bf16_top{k}_in_fp8_top{args.shortlist}": _overlap(shortlist, sel["bf16"], k),
            f"recall@{k}_fp8_vs_bf16": _overlap(sel["fp8"], sel["bf16"], k),
            f"recall@{k}_fp8_rescored_vs_bf16": _overlap(sel["fp8_rescored"], sel["bf16"], k),
            f"recall@{k}_fp8_rescored_vs_f32": _overlap(sel["fp8_rescored"], sel["f32"], k),
            f"recall@{k}_fp8_vs_f32": _overlap(sel["fp8"], sel["f32"], k),
            f"recall@{k}_bf16_vs_f32": _overlap(sel["bf16"], sel["f32"], k),
            **{f"gold@{k}_{n}": float((s == gold[:, None]).any(1).float().mean()) for n, s in sel.items()},
            **{f"gold@1_{n}": float((s[:, 0] == gold).float().mean()) for n, s in sel.items()},
            **{f"gold@{k}_{n}_trained_people": float((s[trained] == gold[trained, None]).any(1).float().mean())
               for n, s in sel.items()},
        }
        log.info("layer %d %s", layer, json.dumps({a: round(b, 4) for a, b in per_layer[layer].items()}))
    mean = {m: sum(v[m] for v in per_layer.values()) / len(per_layer) for m in next(iter(per_layer.values()))}
    result = {
        "bench": "fp8_recall", "card": platform.processor() or platform.machine(), "device": "cpu",
        "torch": torch.__version__, "msa": msa.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": args.threads, "quick": args.quick,
        "path": "bank fused path, query_reduce='mean': queries pre-reduced to one row per question, GEMV over "
                "float8 e4m3 keys + per-chunk scales (float32 queries); bf16: same function on bfloat16 keys; "
                "f32: the bank's exact tiled path",
        "model": {"recipe": "tests/test_train_learning.py (mirror router init, warm-up phase, query mean, 8 docs/sample, "
                            "32 doc tokens)", **info},
        "documents": args.docs, "doc_tokens": args.doc_tokens or "whole", "chunks": chunks, "routing_key_bytes_fp8": fp8_bytes, "questions": len(questions),
        "questions_about_trained_people": int(trained.sum()), "question_seed": 7, "k": k, "shortlist": args.shortlist, "bank_build_s": round(build_s, 1), "route_s": round(route_s, 1),
        f"recall@{k}": mean[f"recall@{k}_fp8_vs_bf16"],
        f"recall@{k}_fp8_rescored_default": mean[f"recall@{k}_fp8_rescored_vs_bf16"], "target": 0.99, "mean_over_layers": mean, "per_layer": per_layer,
    }  # fmt: skip
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"fp8_recall_cpu{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("recall@%d fp8 vs bf16 = %.4f (cpu) -> %s", k, result[f"recall@{k}"], out)
    return result


if __name__ == "__main__":
    main()
