"""Does a document's id length change how the router ranks it? (msa-bios-tiny, a bios bank)

Every document in memory starts with its id ("[57]. Dareus Drenus was born ..."), one token per
digit, so a long id moves the name deeper into the pooled chunks. For people with short ids (the
first ``--people`` of the world, whose questions the scaling run asks at every size) and people with
the longest ids of the bank, this routes "Who is NAME?" over the whole bank (the engine's named
lookup, ``--lookup-k`` candidates) and reports where the person ranks among the people sharing their
first name (0 = first, 1 = last; 1 also when not among the candidates).

    PYTHONPATH=src python bench/id_length_probe.py --bank runs/s5/banks_cpu/bios-w7-n111951-26ba6f3162c7 \
        --world-seed 7 --out bench/results/issue6_h200_2026-11-27/id_length_probe_10M_cpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from msa.data.bios import BiosConfig, BiosWorld
from msa.engine import Engine
from msa.engine.generation import Timer
from msa.memory import MemoryBank
from msa.model import MSAForCausalLM, resolve_model_path
from msa.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--model", default="msa-bios-tiny")
    ap.add_argument("--world-seed", type=int, default=7)
    ap.add_argument("--people", type=int, default=186, help="short ids: the first PEOPLE people")
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--lookup-k", type=int, default=4000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = resolve_model_path(args.model)
    model, tok = MSAForCausalLM.from_pretrained(path, device=args.device), load_tokenizer(path)
    bank = MemoryBank.open(args.bank, model, tok, readonly=True)
    n = len(bank)
    eng = Engine(model, tok, bank, lookup_k=args.lookup_k)
    names = BiosWorld(BiosConfig(num_people=n, seed=args.world_seed)).names(0, n)
    by_first: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_first.setdefault(name.split()[0], []).append(i)
    access = bank.snapshot()
    slots = access.slot_ids
    rng = random.Random(0)
    late = max(args.people, n - 10 * args.people)
    groups = {f"ids < {args.people}": range(args.people), f"ids >= {late}": range(late, n)}
    result = {"bank": args.bank, "documents": n, "lookup_k": args.lookup_k, "groups": {}}
    for label, pool in groups.items():
        people = rng.sample(list(pool), min(args.sample, len(pool)))
        found = eng._look_up({0: [names[p] for p in people]}, access, slots, Timer())[0]
        ranks = []
        for p in people:
            rivals = set(by_first[names[p].split()[0]])
            order = [d for d in found[names[p]] if d in rivals]
            ranks.append(order.index(p) / max(1, len(rivals) - 1) if p in order else 1.0)
        result["groups"][label] = {"people": len(people), "median_relative_rank": statistics.median(ranks),
                                   "first_among_same_first_name": sum(r == 0 for r in ranks),
                                   "median_same_first_name": statistics.median(len(by_first[names[p].split()[0]]) for p in people)}  # fmt: skip
        print(label, result["groups"][label])
    bank.close()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
