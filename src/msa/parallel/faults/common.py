"""What every fault kind shares: the model, texts, a trial record, and how a bank's answers are read."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

MODEL = "msa-bios-tiny"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()  # fmt: skip


@dataclass
class Trial:
    """One trial: its kind and case, whether it passed (None: skipped), what was seen."""

    kind: str
    case: str
    passed: bool | None
    detail: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model():
    """The shipped tiny model and its tokenizer, on the CPU."""
    from msa.model import MSAForCausalLM, resolve_model_path
    from msa.tokenizer import load_tokenizer

    path = resolve_model_path(MODEL)
    return MSAForCausalLM.from_pretrained(path).eval(), load_tokenizer(path)


def texts(n: int, seed: int, tag: str = "doc") -> list[str]:
    rng = random.Random(seed)
    return [f"{tag} {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "." for i in range(n)]


def long_text(seed: int) -> str:
    rng = random.Random(seed)
    return "  ".join(f"Sentence {i} of {seed} is about {rng.choice(WORDS)} and {rng.choice(WORDS)}." for i in range(40))


def observe(bank, queries: int = 2, seed: int = 0) -> dict[str, Any]:
    """Every answer of a bank a user could see: ids, whole texts, counts, and routing of fixed queries."""
    ids = bank.list_ids()
    out: dict[str, Any] = {"ids": ids, "texts": {repr(i): bank.get_text(i) for i in ids}}
    stats = bank.stats()
    out["stats"] = {k: stats[k] for k in ("documents", "slots", "tokens", "chunks", "deleted", "segments")}
    snap = bank.snapshot()
    out["slots"] = snap.slot_ids.tolist()
    out["slot_texts"] = [snap.text(i) for i in out["slots"]]
    g = torch.Generator().manual_seed(seed)
    routed = {}
    if snap.num_docs:
        for layer in bank.router_layers:
            hq = bank.model.config.num_attention_heads if bank.model is not None else 8
            d = snap.segments[0].routing[layer].shape[-1]
            q = torch.randn(queries, 5, hq, d, generator=g)
            r = snap.route(layer, q, torch.ones(queries, 5, dtype=torch.bool), 3)
            routed[str(layer)] = snap.ids(r.docs).tolist()
    out["routing"] = routed
    return out
