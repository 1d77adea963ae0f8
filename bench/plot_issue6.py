"""One figure for issue 6: MSA scores vs memory size beside the RAG and full-context baselines.

    python bench/plot_issue6.py --scaling S.json [--scaling S2.json] [--extra-records R100M.records.jsonl] \
        [--rag RAG.json] [--note TEXT] --out F.png

``--scaling``: a ``msa bench scaling`` result (repeatable: each drawn with its own line style and
labelled by its engine's ``name_match``, ``lookup_k`` and ``snap_names``, or by ``=LABEL`` after the
files; ``A.json+B.json`` joins the sizes of two runs); ``--extra-records`` (added to the first):
per-question records of further sizes (e.g. a 100M run cut short: whatever sections it finished are
averaged); ``--rag``: a ``msa bench rag`` result (``A.json+B.json`` joins sizes too; best k per size and question kind, and the
full-context reader); ``--note``: a caveat printed under the plot.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from msa.eval.scaling import DEFAULT_SIZES, format_size

MSA_LINES = [("single", "single-hop EM", "C0"), ("multi_interleave", "2-hop EM, interleave", "C1"),
             ("multi_no_interleave", "2-hop EM, one round", "C2")]  # fmt: skip


def msa_points(scaling: dict, extra: list[dict]) -> dict[str, dict[int, float]]:
    """section -> memory tokens -> EM, from the scaling result plus extra per-question records."""
    pts: dict[str, dict[int, float]] = defaultdict(dict)
    for e in scaling["bios"]:
        for section, _, _ in MSA_LINES:
            if section in e:
                pts[section][e["target_tokens"]] = e[section]["exact_match"]["mean"]
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in extra:  # records carry the memory's real size: file them under the nearest standard size
        size = min(DEFAULT_SIZES, key=lambda t: abs(math.log(t / r["memory_tokens"])))
        acc[(r["section"].split("/", 1)[1], size)].append(r["exact_match"])
    for (section, tokens), v in acc.items():
        pts[section][tokens] = sum(v) / len(v)
    return pts


def rag_points(rag: dict) -> dict[str, dict[int, tuple[float, str]]]:
    """"rag single" / "rag multi" / "full single" / "full multi" -> tokens -> (EM, label)."""
    pts: dict[str, dict[int, tuple[float, str]]] = defaultdict(dict)
    for s in rag["sizes"]:
        for kind in ("single", "multi"):
            best = max(((v[kind]["exact_match"]["mean"], k) for k, v in s["rag"].items()), default=None)
            if best is not None:
                pts[f"rag {kind}"][s["target_tokens"]] = best
            if s.get("full_context"):
                pts[f"full {kind}"][s["target_tokens"]] = (s["full_context"][kind]["exact_match"]["mean"], "")
    return pts


def _joined(arg: str, key: str = "bios") -> dict:
    """A result, or several (``A.json+B.json``) with their memory sizes (the ``key`` list) joined."""
    parts = [json.loads(Path(p).read_text()) for p in arg.split("+")]
    out = parts[0]
    out[key] = sorted((e for p in parts for e in p[key]), key=lambda e: e["target_tokens"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scaling", required=True, action="append")
    ap.add_argument("--extra-records", default=None)
    ap.add_argument("--rag", default=None)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = [_joined(arg.split("=", 1)[0]) for arg in args.scaling]
    labels = [arg.split("=", 1)[1] if "=" in arg else None for arg in args.scaling]
    extra = [json.loads(line) for line in Path(args.extra_records).read_text().splitlines()] if args.extra_records else []
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 1)
    ticks: set[int] = set()
    for n, (scaling, label, style) in enumerate(zip(runs, labels, ("-", "-."))):
        pts = msa_points(scaling, extra if n == 0 else [])
        cfg = scaling["config"]
        match = "name_match" if cfg.get("name_match") else "no name_match"
        if cfg.get("name_match") and cfg.get("lookup_k"):
            match += f", lookup_k {cfg['lookup_k']}"
        if cfg.get("snap_names"):
            match += ", snap_names"
        match = label or match
        for section, label, color in MSA_LINES:
            xs = sorted(pts[section])
            ax.plot(xs, [pts[section][x] for x in xs], marker="o", linestyle=style, color=color,
                    label=f"MSA {label} ({match})")  # fmt: skip
            ticks.update(xs)
    if args.rag:
        rag = rag_points(_joined(args.rag, "sizes"))
        for key, color, style in (("rag single", "C0", "--"), ("rag multi", "C1", "--"),
                                  ("full single", "C0", ":"), ("full multi", "C1", ":")):  # fmt: skip
            xs = sorted(rag[key])
            if not xs:
                continue
            name = "MiniLM RAG best k" if key.startswith("rag") else "full attention, 4K tokens"
            ax.plot(xs, [rag[key][x][0] for x in xs], marker="s", linestyle=style, color=color, alpha=0.7,
                    label=f"{name}, {'single-hop' if key.endswith('single') else '2-hop'}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [format_size(t) for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("memory size (tokens)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"msa-bios-tiny on unseen people (world seed {runs[0]['config']['world_seed']})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.01, 0.05))
    if args.note:
        fig.text(0.5, 0.01, args.note, fontsize=7, ha="center", va="bottom")
    fig.tight_layout(rect=(0, 0.06 if args.note else 0, 1, 1))
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
