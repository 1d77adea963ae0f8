"""Loss curves of the reference and the fast training path on a tiny model (CPU, float32): N steps each
from the same seed and data, both curves and their largest difference in the JSON.

    python bench/train_paths_cpu.py [--steps 200] [--out bench/results/train_paths_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from msa.data.bios import BiosConfig, BiosWorld  # noqa: E402
from msa.tokenizer import train_tokenizer  # noqa: E402
from msa.train import (  # noqa: E402
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
    TrainConfig, tiny_model_config,
)  # fmt: skip
from msa.train.config import SpeedConfig  # noqa: E402
from msa.train.loop import Trainer  # noqa: E402

WORLD = BiosConfig(num_people=1024, seed=0)


def config(tok_dir: str, steps: int, speed: SpeedConfig) -> TrainConfig:
    warm = steps // 4
    return TrainConfig(
        model=ModelSpec(config=tiny_model_config(320, top_k_docs=2, pooling_kernel_size=8), seed=1),
        data=DataConfig(world=WORLD, curriculum=[CurriculumStage(warm, 4), CurriculumStage(0, 8)], tokenizer=tok_dir,
                        micro_batch_size=4, max_doc_tokens=32, kind="mixed"),
        schedule=ScheduleConfig([Phase("warmup", warm, 3e-3, 0.1, 1.0, warmup_steps=10),
                                 Phase("main", steps - warm, 1e-3, 1.0, 0.1, decay="cosine")]),
        checkpoint=CheckpointConfig(dir=""), logging=LoggingConfig(every=0),
        parallel=ParallelConfig(device="cpu", autocast="none", threads=1), speed=speed,
    )  # fmt: skip


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="bench/results/train_paths_cpu.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tok_dir:
        train_tokenizer(BiosWorld(WORLD).iter_documents(0, 256), 320, tok_dir)
        curves, seconds = {}, {}
        for name, speed in (("reference", SpeedConfig()), ("fast", SpeedConfig(path="fast", pad_multiple=16))):
            t0 = time.perf_counter()
            hist = Trainer(config(tok_dir, args.steps, speed)).fit()
            seconds[name] = time.perf_counter() - t0
            curves[name] = {k: [r[k] for r in hist] for k in ("loss", "lm_loss", "aux_loss")}
    ref, fast = curves["reference"]["loss"], curves["fast"]["loss"]
    diff = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, fast)]
    first = next((i for i, d in enumerate(diff) if d > 1e-4), None)
    result = {
        "steps": args.steps, "seconds": seconds, "max_rel_diff": max(diff), "first_step_rel_diff_over_1e-4": first,
        "rel_diff_first_10": max(diff[:10]), "mean_loss_last_20": {k: sum(v["loss"][-20:]) / 20 for k, v in curves.items()},
        "curves": curves,
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
