"""The scaling run's figures: score vs memory size (log axis), like the paper's Figure 1, and MSA beside
the RAG baseline."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _figure(size: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas, or None (and a log line) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
        return None
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> bool:
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120)
    return True


def _log_axis(ax, ticks: dict[int, str], xlabel: str, title: str) -> None:
    """A log x axis ticked at ``ticks`` (tokens -> label; none: no ticks set), scores 0..1, a grid."""
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(sorted(ticks), [ticks[t] for t in sorted(ticks)])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


def plot_scaling(result: dict[str, Any], path: str | Path) -> bool:
    """Score vs memory size (log x), like the paper's Figure 1; False (and a log line) without matplotlib."""
    ruler = result.get("ruler", [])
    fig = _figure((11, 4.2) if ruler else (6, 4.2))
    if fig is None:
        return False
    ax1, ax2 = fig.subplots(1, 2) if ruler else (fig.subplots(1, 1), None)
    bios = result.get("bios", [])
    x = [e["target_tokens"] for e in bios]
    lines = [("single", "exact_match", "single-hop EM"), ("multi_interleave", "exact_match", "multi-hop EM (interleave)"),
             ("multi_no_interleave", "exact_match", "multi-hop EM (no interleave)"),
             ("single", "router_recall", f"router recall@{result.get('router_k')} (single)"),
             ("single_own", "exact_match", "single-hop EM, anyone in memory"),
             ("multi_interleave_own", "exact_match", "multi-hop EM (interleave), anyone in memory"),
             ("single_own", "router_recall", f"router recall@{result.get('router_k')}, anyone in memory"),
             ("single_own", "router_top1", "router top-1, anyone in memory")]  # fmt: skip
    for section, key, label in lines:
        # "_own" questions are the shared ones where the memory is the questions' own (the smallest)
        y = [(e.get(section, e.get(section.removesuffix("_own"), {}) if j == 0 else {}).get(key) or {}).get("mean")
             for j, e in enumerate(bios)]  # fmt: skip
        if sum(v is not None for v in y) > (1 if section.endswith("_own") else 0):
            ax1.plot(x, [_nan(v) for v in y], marker="o", label=label,
                     linestyle="--" if section.endswith("_own") else "-")  # fmt: skip
    _log_axis(ax1, {e["target_tokens"]: e["label"] for e in bios}, "memory size (tokens)", "bios QA vs memory size")
    ax1.set_ylabel("score")
    if bios:
        ax1.legend(fontsize=8)
    if ax2 is not None:  # RULER panel only when RULER ran
        rx = [e["context_tokens"] for e in ruler]
        ax2.plot(rx, [_nan(e["average"]) for e in ruler], marker="o", label="average")
        ax2.legend(fontsize=8)
        _log_axis(ax2, {e["context_tokens"]: e["label"] for e in ruler}, "context (tokens)", "RULER NIAH")
    return _save(fig, path)


def _own(entry: dict[str, Any], section: str, first: bool) -> float | None:
    """EM of a section's ``_own`` questions; at the smallest memory the shared ones are its own."""
    s = entry.get(section + "_own") or (entry.get(section) if first else None) or {}
    return (s.get("exact_match") or {}).get("mean")


def plot_against_baselines(scaling: dict[str, Any], rag: dict[str, Any], path: str | Path) -> bool:
    """EM vs memory size (log x) of MSA (a scaling result) beside the RAG baseline read by the same model
    (a ``msa bench rag`` result), on the questions about anyone in each memory; single-hop and 2-hop
    panels. False (and a log line) without matplotlib."""
    fig = _figure((11, 4.2))
    if fig is None:
        return False
    panels = [("single-hop EM", "single", "single"), ("2-hop EM", "multi_interleave", "multi")]
    bios = sorted(scaling.get("bios", []), key=lambda e: e["target_tokens"])
    sizes = sorted(rag.get("sizes", []), key=lambda e: e["target_tokens"])
    for ax, (title, msa_section, rag_kind) in zip(fig.subplots(1, 2), panels):
        x = [e["target_tokens"] for e in bios]
        ax.plot(x, [_nan(_own(e, msa_section, j == 0)) for j, e in enumerate(bios)], marker="o", label="MSA")
        ks = sorted({k for e in sizes for k in e.get("rag", {})}, key=lambda k: int(k[1:]))
        for k in ks:
            y = [_nan(_own(e["rag"].get(k, {}), rag_kind, j == 0)) for j, e in enumerate(sizes)]
            ax.plot([e["target_tokens"] for e in sizes], y, marker="s", linestyle="--", label=f"RAG top-{k[1:]}")
        _log_axis(ax, {e["target_tokens"]: e["label"] for e in bios + sizes}, "memory size (tokens)",
                  f"{title}, anyone in memory")  # fmt: skip
        ax.legend(fontsize=8)
    return _save(fig, path)
