"""Train a recipe across machine leases: resume from a packed checkpoint, train to a deadline, pack again.

    python bench/train_leases.py --recipe bios_small --minutes 9 --ckpt runs/leases/ckpt \
        [--packed-in runs/carry/packed] [--packed-out $OUT/packed] [--export runs/leases/model] [KEY=VALUE ...]

Unlike ``train_shipped.py`` (which rescales the schedule to fit one budget), the recipe's schedule is
fixed, so a run of any length is the same run cut into pieces: each call trains on from the newest
checkpoint in ``--ckpt`` (unpacked first from ``--packed-in`` when that is newer: a fresh machine),
stops at the deadline or the schedule's end with a checkpoint, and packs it into ``--packed-out``
(``msa.train.portable``: parts of at most 15 MiB, weights exact, Adam moments compacted; a
3.6M-parameter model packs into ~25 MB, which travels beside this repository's ~40 MB tree). With
``--export`` the model is also written as a model directory. Prints one JSON line of progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from msa.train import load_recipe
from msa.train.checkpoint import latest_checkpoint
from msa.train.loop import Trainer
from msa.train.portable import pack_checkpoint, unpack_checkpoint
from train_shipped import fit_until, save_model

log = logging.getLogger("train_leases")


def _step_of(path: str | None) -> int:
    return -1 if path is None else int(Path(path).name.removeprefix("step_"))


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--minutes", type=float, required=True, help="wall-clock budget of this call's training")
    ap.add_argument("--ckpt", default="runs/leases/ckpt", help="checkpoint directory on this machine")
    ap.add_argument("--packed-in", default=None, help="a packed checkpoint brought from an earlier lease")
    ap.add_argument("--packed-out", default=None, help="where to pack the checkpoint this call ends with")
    ap.add_argument("--export", default=None, help="also write the model directory here")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    deadline = time.perf_counter() + args.minutes * 60
    if args.packed_in and Path(args.packed_in, "manifest.json").exists():
        manifest = json.loads(Path(args.packed_in, "manifest.json").read_text())
        label = manifest.get("label")
        if label is None:
            log.warning("%s names no recipe (an older pack): resuming it as %s", args.packed_in, args.recipe)
        elif label != args.recipe:
            raise SystemExit(f"{args.packed_in} is a checkpoint of recipe {label!r}, not {args.recipe!r}: "
                             "carry that recipe's pack, or none to start afresh")  # fmt: skip
        if manifest["step"] > _step_of(latest_checkpoint(args.ckpt)):
            unpack_checkpoint(args.packed_in, args.ckpt)
    cfg = load_recipe(args.recipe, [f"checkpoint.dir={args.ckpt}", *args.overrides])
    cfg.checkpoint.resume = True
    trainer = Trainer(cfg)
    start = trainer.state.step
    total = cfg.schedule.total_steps
    t0 = time.perf_counter()
    fit_until(trainer, total, deadline)
    seconds = time.perf_counter() - t0
    if trainer.state.step == start:  # nothing trained (already at the end): still leave a checkpoint
        trainer.save()
    out = {"recipe": args.recipe, "from_step": start, "to_step": trainer.state.step, "total_steps": total,
           "seconds": round(seconds, 1), "steps_per_s": round((trainer.state.step - start) / max(seconds, 1e-9), 3),
           "done": trainer.state.step >= total}  # fmt: skip
    if args.packed_out:
        m = pack_checkpoint(args.ckpt, args.packed_out, label=args.recipe)
        out["packed_mb"] = round(sum(p["bytes"] for p in m["model"] + m["optim"]) / 1e6, 1)
    if args.export:
        save_model(trainer, Path(args.export))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    main(sys.argv[1:])
