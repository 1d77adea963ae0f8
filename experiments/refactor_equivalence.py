"""Do two source trees answer exactly alike through the official ``generated`` protocol?

    python experiments/refactor_equivalence.py OLD_TREE old.json    # e.g. a `git worktree add` of the old commit
    python experiments/refactor_equivalence.py .        new.json
    # then compare the transcripts / routings of the two files question by question

msa-bios-tiny over a bank of 1024 people (world seed 3), 20 single- and 20 2-hop questions, CPU.
"""
import sys, json
sys.path.insert(0, sys.argv[1] + "/src")
import tempfile, torch
from pathlib import Path
from msa.data import BiosConfig, BiosWorld
from msa.engine import Engine
from msa.eval.metrics import exact_match
from msa.memory import MemoryBank
from msa.model import MSAForCausalLM, shipped_models
from msa.prompt import prompt_format
from msa.tokenizer import load_tokenizer
torch.manual_seed(3)
model = MSAForCausalLM.from_pretrained("msa-bios-tiny")
tok = load_tokenizer(shipped_models()["msa-bios-tiny"])
world = BiosWorld(BiosConfig(num_people=1024, seed=3))
out = []
with tempfile.TemporaryDirectory() as tmp:
    bank = MemoryBank.create(Path(tmp) / "bank", model, tok, prompt_format(getattr(model.config, 'policy', model.config.msa).prompt_format), model_source="msa-bios-tiny")
    bank.add(list(world.iter_documents(0, 1024)), ids=list(range(1024)))
    eng = Engine(model, tok, bank, doc_choice="generated")
    held = list(world.iter_questions(20, "single", seed=4)) + list(world.iter_questions(20, "multi", seed=4))
    ans = eng.ask_batch([q.text for q in held], max_new_tokens=48, return_routing=True)
    for a, q in zip(ans, held):
        out.append({"t": a.transcript, "text": a.text, "em": exact_match(a.text, q.answer), "read": a.doc_ids,
                    "routing": {str(k): [d for d, _ in v] for k, v in a.rounds[0].routing.items()}})
    bank.close()
json.dump(out, open(sys.argv[2], "w"))
print(sum(o["em"] for o in out))
