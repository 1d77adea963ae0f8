"""Where single-hop bios answers are lost: the request the model wrote, the document read, the answer.

    python bench/answer_losses.py bench/results/issue16_h200_2026-12-01/scaling_small_h200.records.jsonl.gz

For every single-hop section of a scaling run's records (``msa bench scaling``), it counts the
questions by three outcomes: whether the first request the model wrote (``[...]`` at the start of
its transcript) is the asked person's name, whether a gold document was read, and whether the answer
matched. Names are found as two capitalised words of the question, so the lower-cased wording shows
every request as wrong there.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re

NAME = re.compile(r"[A-Z][a-z]+ [A-Z][a-z]+")
REQUEST = re.compile(r"\[([^\]]+)\]")


def outcomes(records: list[dict]) -> dict[tuple[str, int], collections.Counter]:
    """(section, memory tokens) -> Counter of (right request, gold read, exact match) triples."""
    out: dict[tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        if not r["section"].startswith("bios/single"):
            continue
        req = REQUEST.match(r["transcript"])
        asked = NAME.findall(r["question"])
        right = bool(req and asked and req.group(1).lower() == asked[-1].lower())
        read = bool(set(r["retrieved"]) & set(r["gold_ids"]))
        out[(r["section"], r.get("memory_tokens", -1))][(right, read, r["exact_match"] > 0)] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", help="*.records.jsonl or *.records.jsonl.gz of a scaling run")
    args = ap.parse_args()
    opener = gzip.open if args.records.endswith(".gz") else open
    with opener(args.records, "rt") as f:
        records = [json.loads(line) for line in f]
    sign = lambda b: "+" if b else "-"  # noqa: E731
    for (section, tokens), c in sorted(outcomes(records).items()):
        cells = " ".join(f"req{sign(a)}read{sign(b)}em{sign(e)}:{v}" for (a, b, e), v in sorted(c.items(), reverse=True))
        print(f"{section:36s} {tokens:>10d} n={sum(c.values())} {cells}")


if __name__ == "__main__":
    main()
