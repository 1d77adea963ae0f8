"""``python -m msa.parallel.faults``: run the fault suite, print trials / passed per kind, write JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m msa.parallel.faults", description="the bank and Memory Parallel under faults")
    ap.add_argument("--trials", type=int, default=40, help="SIGKILL trials (flips: 2x, snapshots: 25x)")
    ap.add_argument("--quick", action="store_true", help="the bounded form CI runs (a few trials of every kind)")
    ap.add_argument("--kinds", default="kill,readers,disk,flips,ranks")
    ap.add_argument("--timeout", type=float, default=4.0, help="Memory Parallel timeout of the SIGSTOP cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write every trial here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    torch.set_num_threads(1)
    from msa.parallel.faults import disk, flips, kill, ranks, readers
    from msa.parallel.faults.common import load_model

    n = 4 if args.quick else args.trials
    kinds = args.kinds.split(",")
    model, tok = load_model()
    results = []
    started = time.time()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        if "kill" in kinds:
            results += kill.run(work, n, args.seed, model, tok)
        if "readers" in kinds:
            results += readers.run(work, 200 if args.quick else 25 * n, args.seed, model, tok,
                                   rounds=8 if args.quick else n)  # fmt: skip
        if "disk" in kinds:
            results += disk.run(work, (0, 32 << 10) if args.quick else disk.LEVELS, model, tok)
        if "flips" in kinds:
            results += flips.run(work, 8 if args.quick else 2 * n, 4 if args.quick else n, args.seed, model, tok)
        if "ranks" in kinds:
            results += ranks.run(work, ranks.STAGES, args.timeout, model, tok)
    table: dict[str, list[int]] = {}
    for r in results:
        row = table.setdefault(r.kind, [0, 0, 0])
        row[0] += 1
        row[1] += r.passed is True
        row[2] += r.passed is None
    print(f"{'kind':10} {'trials':>6} {'passed':>6} {'skipped':>7}")
    for kind, (trials, passed, skipped) in table.items():
        print(f"{kind:10} {trials:6d} {passed:6d} {skipped:7d}")
    for r in results:
        if r.passed is not True:
            print(f"  {'SKIP' if r.passed is None else 'FAIL'} {r.kind} {r.case}: {r.detail}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "quick": args.quick, "seconds": time.time() - started, "torch": torch.__version__,
            "table": {k: {"trials": t, "passed": p, "skipped": s} for k, (t, p, s) in table.items()},
            "trials": [r.to_dict() for r in results],
        }, indent=1))  # fmt: skip
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
