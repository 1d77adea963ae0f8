"""The shipped model's accuracy with its memory's content K/V resident on the device as stored, in
bfloat16, and in float8 with per-chunk scales (``BankSnapshot.make_resident``).

A bios memory of --people people (world seed 3, new to the model, as ``make demo``) is encoded by
``msa-bios-small``; held-out single- and 2-hop questions are asked with Memory Interleave through
``Engine`` once per content dtype. Reported per dtype: exact match, router recall (first round), the
share of answers equal to those with the stored content, content bytes.
Routing keys are untouched (float8 routing keys: bench/fp8_recall.py).

    python bench/fp8_content.py [--people 2048] [--questions 60] [--device cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
from pathlib import Path

import torch

from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine
from msa.eval.scaling import evaluate_questions, held_out_questions, summarize_records
from msa.memory import MemoryBank
from msa.model import MSAForCausalLM, shipped_models
from msa.prompt import prompt_format
from msa.tokenizer import load_tokenizer

log = logging.getLogger("bench.fp8_content")
MODEL = "msa-bios-small"
WORLD_SEED = 3
CONTENT = {"stored": None, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}


class ResidentView:
    """A MemoryBank whose snapshots hold their content on the device in ``content_dtype``."""

    def __init__(self, bank: MemoryBank, content_dtype: torch.dtype | None):
        self.bank, self.content_dtype, self.prefix = bank, content_dtype, bank.prefix
        self.content_bytes = 0

    def snapshot(self):
        snap = self.bank.snapshot().make_resident(self.content_dtype)
        self.content_bytes = snap._resident.nbytes  # type: ignore[union-attr]
        return snap

    def __len__(self) -> int:
        return len(self.bank)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=2048)
    ap.add_argument("--questions", type=int, default=60, help="per kind (single-hop, 2-hop)")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="a small memory and few questions")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.people, args.questions = 128, 4
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = MSAForCausalLM.from_pretrained(MODEL, device=device)
    tok = load_tokenizer(shipped_models()[MODEL])
    world = BiosWorld(BiosConfig(num_people=args.people, seed=WORLD_SEED))
    qs = held_out_questions(WORLD_SEED, args.people, args.questions, args.questions, seed=1)
    questions = {k: [{"question": q.text, "answers": [q.answer], "gold_ids": list(q.gold_ids)} for q in v]
                 for k, v in qs.items()}  # fmt: skip
    rows = {}
    with tempfile.TemporaryDirectory(prefix="msa-fp8-content-") as tmp:
        bank = MemoryBank.create(Path(tmp) / "bank", model, tok, prompt_format(model.config.policy.prompt_format),
                                 model_source=MODEL, device=str(device))  # fmt: skip
        try:
            bank.add(list(world.iter_documents(0, args.people)), ids=list(range(args.people)))
            for name, dtype in CONTENT.items():
                view = ResidentView(bank, dtype)
                engine = Engine(model, tok, view)
                row = {}
                for kind, qd in questions.items():
                    recs = evaluate_questions(engine, qd, True, model.config.policy.max_rounds,
                                              model.config.policy.max_new_tokens, args.batch)  # fmt: skip
                    s = summarize_records(recs)
                    row[kind] = {"n": s["n"], **{k: s[k]["mean"] for k in ("exact_match", "router_recall") if k in s}}
                    answers = [r["prediction"] for r in recs]
                    stored = rows["stored"][kind]["answers"] if rows else answers
                    row[kind]["same_answer_as_stored"] = sum(a == b for a, b in zip(answers, stored)) / max(1, len(answers))
                    row[kind]["answers"] = answers
                row["content_bytes"] = view.content_bytes
                rows[name] = row
                log.info("%6s content: EM single %.3f 2-hop %.3f, router recall %.3f; content %.1f MB", name,
                         row["single"].get("exact_match", 0.0), row["multi"].get("exact_match", 0.0),
                         row["single"].get("router_recall", 0.0), row["content_bytes"] / 1e6)  # fmt: skip
            tokens = bank.stats()["tokens"]
        finally:
            bank.close()
    result = {
        "bench": "fp8_content", "model": MODEL, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "people": args.people, "memory_tokens": tokens,
        "world_seed": WORLD_SEED, "questions_per_kind": args.questions, "content": rows,
        "stored_dtype": str(model.dtype),
    }  # fmt: skip
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"fp8_content_{result['device'].replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("-> %s", out)
    return result


if __name__ == "__main__":
    main()
