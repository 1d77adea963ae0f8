"""Train msa-bios-tiny within a wall-clock budget, evaluate it, and write the files that ship.

    python bench/train_shipped.py --minutes 24 --out runs/msa-bios-tiny [recipe overrides ...]

Steps: with ``--reading-steps N`` first a reading stage (``reading_stage``: answer rounds and
recitations on small memories, no routing loss) whose model the rest starts from; a probe measures
steps/s at the smallest and largest curriculum memory; the recipe's phases and curriculum are
rescaled to fit the budget (warm-up 30%, main 70%; curriculum stages at 30% / 60%); training, with a
snapshot of the model every ``--snapshot-minutes`` and a hard stop at the budget; the model (float32,
shards under 12 MB), tokenizer, recipe, training log and an evaluation on a world the model never saw
(seed 7: single-hop and 2-hop questions, with and without Memory Interleave) go to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from msa.data.bios import BiosConfig, BiosWorld
from msa.engine import Engine, InMemoryView
from msa.eval.metrics import exact_match
from msa.train import load_recipe
from msa.train.config import CurriculumStage, Phase
from msa.train.data import BiosSamples, InterleaveRounds
from msa.train.loop import Trainer
from reading_msa_probe import answer_accuracy
from reading_probe import reading

log = logging.getLogger("train_shipped")


SHARD_BYTES = 12 << 20


def rescale(cfg, steps: int, lr_scale: float = 1.0, warmup_fraction: float = 0.3, docs: list[int] | None = None):
    warm = max(50, int(steps * warmup_fraction))
    p0, p1 = cfg.schedule.phases
    cfg.schedule.phases = [replace(p0, steps=warm, lr=p0.lr * lr_scale), replace(p1, steps=steps - warm, lr=p1.lr * lr_scale)]
    n = docs or [s.num_docs for s in cfg.data.curriculum]
    cap = [s.max_tokens for s in cfg.data.curriculum] + [cfg.data.curriculum[-1].max_tokens] * 3  # the recipe's caps
    cfg.data.curriculum = [CurriculumStage(warm, n[0], cap[0]), CurriculumStage(max(1, int(steps * 0.3)), n[1], cap[1]),
                           CurriculumStage(0, n[2], cap[2])]  # fmt: skip
    return cfg


def evaluate(model, tok, people: int, questions: int, seed: int = 7, doc_choice: str | None = None) -> dict:
    """EM, router recall of the first gold document and documents read, single- and 2-hop, with and
    without Memory Interleave, on a world the model never saw; ``doc_choice`` None = the model's."""
    world = BiosWorld(BiosConfig(num_people=people, seed=seed))
    view = InMemoryView(model, tok, list(world.iter_documents(0, people)))
    tokens = int(view.memory.doc_lengths.sum())
    engine = Engine(model, tok, view, doc_choice=doc_choice)
    out: dict = {"world_seed": seed, "documents": people, "memory_tokens": tokens, "doc_choice": engine.doc_choice}
    for kind in ("single", "multi"):
        qs = list(world.iter_questions(questions, kind, seed=11))
        for inter in (True, False):
            t0 = time.perf_counter()
            ans = engine.ask_batch([q.text for q in qs], interleave=inter, max_new_tokens=48, return_routing=True)
            dt = time.perf_counter() - t0
            em = sum(exact_match(a.text, q.answer) for a, q in zip(ans, qs)) / len(qs)
            rr = []
            for a, q in zip(ans, qs):
                first = a.rounds[0].routing
                rr.append(sum(q.gold_ids[0] in {d for d, _ in sel} for sel in first.values()) / max(1, len(first)))
            got = [set(sum(a.doc_ids, [])) for a in ans]
            doc_recall = sum(len(g & set(q.gold_ids)) / len(q.gold_ids) for g, q in zip(got, qs)) / len(qs)
            key = f"{kind}_{'interleave' if inter else 'single_round'}"
            out[key] = {"em": em, "router_recall_first_gold": sum(rr) / len(rr), "doc_recall": doc_recall,
                        "seconds_per_question": dt / len(qs),
                        "examples": [{"q": q.text, "gold": q.answer, "pred": a.text, "read": a.doc_ids}
                                     for a, q in list(zip(ans, qs))[:3]]}  # fmt: skip
            log.info("%s %s", key, {k: v for k, v in out[key].items() if k != "examples"})
    return out


RECIPE = "bios_tiny"  # --recipe


def _rate(overrides: list[str], num_docs: int, steps: int = 12, profile: Path | None = None) -> float:
    """Steps/s of the recipe at a fixed memory size (after 4 warm-up steps); with ``profile`` a
    torch.profiler table of 4 more steps is written there."""
    cfg = load_recipe(RECIPE, ["checkpoint.dir=", "logging.metrics_file=", *overrides])
    cfg.data.curriculum = [CurriculumStage(0, num_docs)]
    probe = Trainer(cfg)
    for _ in range(4):
        probe.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        probe.train_step()
    rate = steps / (time.perf_counter() - t0)
    if profile is not None:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with prof(activities=acts) as p:
            for _ in range(4):
                probe.train_step()
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        profile.write_text(p.key_averages().table(sort_by="cpu_time_total", row_limit=40) + "\n\n"
                           + p.key_averages().table(sort_by=key, row_limit=25))  # fmt: skip
    return rate


READING = ["data.answer_round_fraction=1.0", "data.recite_fraction=0.5", "data.answer_round_hide_read=true",
           "data.niah_fraction=0"]  # fmt: skip
"""Stage 0 data: answer rounds only, half of them recitations, the read documents out of memory."""


def reading_stage(overrides: list[str], out: Path, steps: int, docs: int, deadline: float, target: float = 1.0) -> Path:
    """Stage 0: in-context reading first, on small memories with no routing loss (a small model learns
    to copy out of appended text only when copying is most of its signal: bench/NOTES_training.md).
    Every 250 steps the held-out answer accuracy (last three answer tokens right, read documents out
    of memory) goes to ``reading_acc.jsonl``; the stage ends early once it reaches ``target``.
    Returns the directory of the model it leaves (beside ``out``, so it does not ship), the main
    stage's ``model.init``."""
    log_file = out / "reading_log.jsonl"
    log_file.unlink(missing_ok=True)
    cfg = load_recipe(RECIPE, ["checkpoint.dir=", f"logging.metrics_file={log_file}", *overrides, *READING])
    cfg.data.curriculum = [CurriculumStage(0, docs)]
    cfg.schedule.phases = [Phase("reading", steps=steps, lr=cfg.schedule.phases[-1].lr, lm_weight=1.0, aux_weight=0.0,
                                 warmup_steps=50)]  # fmt: skip
    trainer = Trainer(cfg)
    held = InterleaveRounds(BiosSamples(cfg.data.world, docs, "single", seed=12345), 1.0, hide_read=True)
    acc_file = out / "reading_acc.jsonl"
    acc_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    while trainer.state.step < steps and time.perf_counter() < deadline:
        fit_until(trainer, min(steps, trainer.state.step + 250), deadline)
        acc = answer_accuracy(trainer, held, 128)
        rec = {"step": trainer.state.step, "answer_acc": acc, "seconds": round(time.perf_counter() - t0, 1)}
        with acc_file.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        log.info("reading stage: %s", rec)
        if acc >= target:
            break
    where = out.with_name(out.name + "_reading")
    save_model(trainer, where)
    return where


def fit_until(trainer: Trainer, steps: int, deadline: float, snapshot: Path | None = None,
              snapshot_s: float = float("inf")) -> None:  # fmt: skip
    """Train to ``steps`` or to the ``deadline`` (perf_counter time; checked every 10 steps), saving
    the model to ``snapshot`` every ``snapshot_s`` seconds."""
    last = time.perf_counter()
    while trainer.state.step < steps and time.perf_counter() < deadline:
        trainer.fit(until=min(steps, trainer.state.step + 10))
        if snapshot is not None and time.perf_counter() - last > snapshot_s:
            save_model(trainer, snapshot)
            last = time.perf_counter()
            log.info("snapshot at step %d", trainer.state.step)


def save_model(trainer: Trainer, out: Path) -> None:
    """The model as a loadable directory: float32 weights in shards, and the training tokenizer."""
    model = trainer.model
    was = model.dtype
    model.float().save_pretrained(out, max_shard_bytes=SHARD_BYTES)
    model.to(was)
    trainer.save_tokenizer(out)


def main() -> None:
    global RECIPE
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="bios_tiny", help="recipes/NAME.py")
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget (probe included)")
    ap.add_argument("--snapshot-minutes", type=float, default=5.0)
    ap.add_argument("--out", default="runs/msa-bios-tiny")
    ap.add_argument("--eval-people", type=int, default=2048)
    ap.add_argument("--eval-questions", type=int, default=50)
    ap.add_argument("--reading-questions", type=int, default=50, help="questions of the gold-only reading check")
    ap.add_argument("--profile", action="store_true", help="write a profiler table of the largest-memory probe")
    ap.add_argument("--warmup-fraction", type=float, default=0.3, help="share of steps in the aux-dominant phase")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps (no probe; --minutes still caps)")
    ap.add_argument("--docs", default=None, help="curriculum memory sizes, e.g. 8,16,16 (default: the recipe's three)")
    ap.add_argument("--reading-steps", type=int, default=0, help="stage 0 (reading, see READING) steps; 0 = none")
    ap.add_argument("--reading-docs", type=int, default=4, help="memory documents per sample in stage 0")
    ap.add_argument("--reading-max-share", type=float, default=0.5, help="stage 0 stops at this share of --minutes")
    ap.add_argument("--reading-target", type=float, default=1.0, help="stage 0 stops at this held-out answer accuracy")
    ap.add_argument("--lr-scale", type=float, default=1.0, help="multiplies the recipe's learning rates")
    args, overrides = ap.parse_known_args()
    RECIPE = args.recipe
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if args.reading_steps:
        deadline = t_start + args.minutes * 60 * args.reading_max_share
        overrides = [*overrides, f"model.init={reading_stage(overrides, out, args.reading_steps, args.reading_docs, deadline, args.reading_target)}"]
    base = load_recipe(RECIPE, ["checkpoint.dir=", "logging.metrics_file=", *overrides])
    docs = [int(x) for x in args.docs.split(",")] if args.docs else None
    if docs is not None and len(docs) != 3:
        ap.error("--docs takes three sizes (warm-up, middle, last stage)")
    sizes = docs or [s.num_docs for s in base.data.curriculum]
    if args.steps:
        steps = args.steps
    else:
        r_small = _rate(overrides, sizes[0])
        r_large = _rate(overrides, sizes[-1], profile=out / "profile.txt" if args.profile else None)
        r_mid = 2 / (1 / r_small + 1 / r_large)
        per_step = 0.3 / r_small + 0.3 / r_mid + 0.4 / r_large
        budget = args.minutes * 60 - (time.perf_counter() - t_start) - 20
        steps = max(100, int(budget / per_step * 0.95))
        log.info("probe: %.2f steps/s at %d docs, %.2f at %d docs -> %d steps", r_small, sizes[0], r_large, sizes[-1], steps)
    log_file = out / "training_log.jsonl"
    log_file.unlink(missing_ok=True)
    cfg = rescale(load_recipe(RECIPE, ["checkpoint.dir=", f"logging.metrics_file={log_file}", *overrides]), steps, args.lr_scale,
                  args.warmup_fraction, docs)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    fit_until(trainer, steps, t_start + args.minutes * 60, snapshot=out, snapshot_s=args.snapshot_minutes * 60)
    train_s = time.perf_counter() - t0
    done = trainer.state.step
    if done < steps:
        log.warning("budget reached at step %d of %d", done, steps)
    save_model(trainer, out)
    model = trainer.model.float().eval()
    shutil.copy(Path(__file__).resolve().parents[1] / "recipes" / f"{RECIPE}.py", out / f"recipe_{RECIPE}.py")
    result = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "steps_planned": steps, "steps": done, "train_seconds": train_s,
        "steps_per_s": done / train_s, "overrides": overrides, "lr_scale": args.lr_scale,
        "warmup_fraction": args.warmup_fraction,
        "params": sum(p.numel() for p in model.parameters()),
        "eval": evaluate(model, trainer.tokenizer, args.eval_people, args.eval_questions),
        "reading": reading(model, trainer.tokenizer, args.reading_questions, choices=(model.config.policy.doc_choice,)),
    }  # fmt: skip
    if model.config.policy.doc_choice != "routed":  # the protocol it was trained for, and "routed" beside it
        result["eval_routed"] = evaluate(model, trainer.tokenizer, args.eval_people, args.eval_questions, doc_choice="routed")
    log.info("reading (gold documents only in memory): %s",
             {k: {m: round(v, 3) for m, v in r.items() if m != "examples"} for k, r in result["reading"].items()})
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("eval")}, indent=2))


if __name__ == "__main__":
    main()
