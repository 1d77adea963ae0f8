"""Which named requests of a scaling run's records a change of ``snap_name`` would look up differently.

    python experiments/snap_equivalence.py RECORDS.jsonl.gz [WORLD_SEED]

Replays every non-numeric request in the records' transcripts against the text the engine shows
the snapping (the question and the documents read before it, in id order) with the first version
of ``snap_name`` (any run of words: ``match_case=False``) and the current one (runs capitalised like
the name). A record whose requests all snap alike runs identically under both (greedy decoding,
deterministic routing), so its result carries over. Prints the counts and every differing request.
"""

import gzip
import json
import re
import sys

from msa.data.bios import BiosConfig, BiosWorld
from msa.engine.engine import REQUEST_PATTERN, snap_name


def main() -> None:
    world = BiosWorld(BiosConfig(num_people=0, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 7))
    total, differ = 0, []
    for line in gzip.open(sys.argv[1], "rt"):
        r = json.loads(line)
        if not r["section"].startswith("bios"):
            continue
        t = r["transcript"]
        for m in REQUEST_PATTERN.finditer(t):
            name = m.group(1).strip()
            if name.isdigit():
                continue
            read = sorted({int(g) for g in re.findall(r"\[(\d+)\]\. ", t[: m.start()])})
            visible = "\n".join([r["question"], *(world.document(g) for g in read)])
            total += 1
            first, now = snap_name(name, visible, match_case=False), snap_name(name, visible)
            if first != now:
                differ.append((r["memory_tokens"], r["section"], r["question"], name, first, now, r["exact_match"]))
    print(f"{total} requests, {len(differ)} snap differently")
    for d in differ:
        print(d)


if __name__ == "__main__":
    main()
