"""Reading check for a trained model: can it answer once the right documents are in memory?

    python bench/reading_probe.py MODEL_DIR [--questions 60] [--distractors 0]

Each held-out question (bios world seed 7, a world no shipped recipe trains on) gets its own memory:
its gold documents plus ``--distractors`` random others. With 0 distractors Memory Interleave with
``doc_choice="routed"`` must read the gold documents, so EM measures reading and answering alone
(routing factored out); the official ``generated`` choice is reported beside it.

Prints a JSON record with the device, torch and msa versions. Floor: none; the model with its
gold documents is the ceiling the full engine run (bench/scaling.py) is compared with.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import msa
from msa.data.bios import BiosConfig, BiosWorld
from msa.engine import Engine, InMemoryView
from msa.eval.metrics import exact_match, token_f1
from msa.model import MSAForCausalLM, resolve_model_path
from msa.tokenizer import load_tokenizer


def reading(model, tok, questions: int, distractors: int = 0, choices=("routed", "generated")) -> dict:
    """EM / token F1 / share of gold documents read, per question kind and doc choice."""
    world = BiosWorld(BiosConfig(num_people=1 << 20, seed=7))
    rng = np.random.default_rng(5)
    out: dict = {}
    for kind in ("single", "multi"):
        qs = list(world.iter_questions(questions, kind, seed=11))
        for choice in choices:
            em = f1 = read = 0.0
            examples = []
            for q in qs:
                gold = list(q.gold_ids)
                ids = gold + [int(i) for i in rng.choice(world.config.num_people, distractors) if i not in gold]
                eng = Engine(model, tok, InMemoryView(model, tok, world.documents(ids), ids=ids), doc_choice=choice)
                a = eng.ask(q.text, max_new_tokens=48)
                em += exact_match(a.text, q.answer)
                f1 += token_f1(a.text, q.answer)
                read += len(set(sum(a.doc_ids, [])) & set(gold)) / len(gold)
                if len(examples) < 4:
                    examples.append({"q": q.text, "gold": q.answer, "pred": a.text, "read": a.doc_ids})
            n = len(qs)
            out[f"{kind}_{choice}"] = {"em": em / n, "f1": f1 / n, "gold_read": read / n, "examples": examples}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--distractors", type=int, default=0)
    args = ap.parse_args()
    path = resolve_model_path(args.model)  # a directory or a shipped model's name
    model = MSAForCausalLM.from_pretrained(path).eval()
    tok = load_tokenizer(path)
    out = {"model": args.model, "device": str(model.device), "torch": torch.__version__, "msa": msa.__version__,
           "distractors": args.distractors, **reading(model, tok, args.questions, args.distractors)}
    for key, r in out.items():
        if isinstance(r, dict):
            print(key, {k: round(v, 3) for k, v in r.items() if k != "examples"})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
