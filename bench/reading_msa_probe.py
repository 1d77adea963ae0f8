"""Diagnostic (CPU): does a small MSA model learn to read answers out of appended text, and what
helps? The MSA twin of bench/reading_vanilla_probe.py (same size, same metric).

    python bench/reading_msa_probe.py --steps 1200 --recite 0.5 --hide-read --threads 1

Trains the bios_tiny recipe shrunk to the vanilla probe's size on answer rounds only (single-hop,
``--docs`` memory documents, a share ``--recite`` of them "Tell me about NAME." with the biography as
the answer), then prints every 100 steps the held-out teacher-forced accuracy of the last answer
tokens of ordinary questions, with the gold document in memory (the inference condition) and
without it (the answer can only come from the appended text).

CPU, prints to the terminal (torch version first). Baseline: bench/reading_vanilla_probe.py, the
same metric for a vanilla Qwen3 of the same size; used by bench/train_shipped.py for its reading stage.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from msa.train import load_recipe
from msa.train.config import CurriculumStage, Phase
from msa.train.data import BiosSamples, InterleaveRounds
from msa.train.loop import Trainer
from reading_vanilla_probe import last_answer_tokens_right


def answer_accuracy(trainer: Trainer, rounds: InterleaveRounds, n: int = 64) -> float:
    """Share of held-out samples whose last three answer tokens (before the end-of-turn) are all right."""
    batch = trainer.collator([rounds.sample(i) for i in range(n)]).to(trainer.info.device)
    with torch.no_grad():
        return last_answer_tokens_right(trainer.model.forward_train(batch.packed).logits, batch.labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--recite", type=float, default=0.5, help="share of recite samples")
    ap.add_argument("--hide-read", action="store_true", help="answer rounds leave the read documents out of memory")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    h = args.hidden
    cfg = load_recipe("bios_tiny", [
        "checkpoint.dir=", "logging.metrics_file=", "data.workers=0", "data.kind=single", "data.niah_fraction=0",
        "data.answer_round_fraction=1.0", f"data.recite_fraction={args.recite}",
        f"data.answer_round_hide_read={args.hide_read}", f"data.micro_batch_size={args.batch}",
        f"model.config.hidden_size={h}", f"model.config.intermediate_size={3 * h}",
        "model.config.num_attention_heads=4", "parallel.device=cpu",
    ])  # fmt: skip
    cfg.data.curriculum = [CurriculumStage(0, args.docs)]
    cfg.schedule.phases = [Phase("main", steps=args.steps, lr=args.lr, lm_weight=1.0, aux_weight=0.0, warmup_steps=50)]
    trainer = Trainer(cfg)
    held = BiosSamples(cfg.data.world, args.docs, "single", seed=12345)
    with_gold, without_gold = InterleaveRounds(held, 1.0), InterleaveRounds(held, 1.0, hide_read=True)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        rec = trainer.train_step()
        if step % 100 == 0:
            a, b = answer_accuracy(trainer, with_gold), answer_accuracy(trainer, without_gold)
            print(f"step {step} lm {rec['lm_loss']:.4f} held-out answer acc: gold in memory {a:.3f}, "
                  f"not in memory {b:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
