"""CPU probe: does a tiny MSA model learn generative retrieval + Memory Interleave on a small bios world?

    python experiments/learning_probe.py STEPS PEOPLE HIDDEN        e.g. 900 64 64  (~15 min on 2 cores)

Trains with interleave_round targets (query_reduce mean, chunk 8, top-4), then asks held-out
single-hop questions through the Engine over the whole world and prints: first requested id correct,
gold routed in the first round's top-k, exact match. Results are kept in bench/NOTES_training.md.
"""
import sys, time, torch, json
from msa.data.bios import BiosConfig, BiosWorld
from msa.train import (CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig, TrainConfig, tiny_model_config)
from msa.train.loop import Trainer
from msa.tokenizer import train_tokenizer
from msa.engine import Engine, InMemoryView
from msa.eval.metrics import exact_match
steps = int(sys.argv[1]); people = int(sys.argv[2]); hidden = int(sys.argv[3])
WORLD = BiosConfig(num_people=people, seed=0)
torch.set_num_threads(2)
w = BiosWorld(WORLD)
tok = train_tokenizer(w.iter_documents(0, people), 512, f"runs/probe_tok{people}")
mc = tiny_model_config(len(tok), top_k_docs=4, pooling_kernel_size=8, query_reduce_method="mean", template_len=4)
mc.hidden_size = hidden; mc.intermediate_size = 2 * hidden; mc.num_hidden_layers = 4; mc.head_dim = hidden // 4
cfg = TrainConfig(
    model=ModelSpec(config=mc, seed=0, router_init="mirror"),
    data=DataConfig(world=WORLD, kind="single", curriculum=[CurriculumStage(0, 8)], target_format="interleave_round", micro_batch_size=8, seed=1),
    schedule=ScheduleConfig([Phase("warmup", steps // 3, 3e-3, 0.1, 1.0, warmup_steps=10), Phase("main", steps - steps // 3, 2e-3, 1.0, 0.1, decay="cosine")]),
    logging=LoggingConfig(every=100), parallel=ParallelConfig(device="cpu"))
tr = Trainer(cfg, tokenizer=tok)
t = time.time(); hist = tr.fit(); print("train s", time.time() - t, flush=True)
model = tr.model.eval()
view = InMemoryView(model, tok, list(w.iter_documents(0, people)))
eng = Engine(model, tok, view)
qs = list(w.iter_questions(40, "single", seed=123))
ans = eng.ask_batch([q.text for q in qs], max_new_tokens=32, max_rounds=3, return_routing=True)
first_ok = sum(a.rounds[0].requested[:1] == [q.gold_ids[0]] for a, q in zip(ans, qs)) / len(qs)
route_ok = sum(any(q.gold_ids[0] in {d for d, _ in sel} for sel in a.rounds[0].routing.values()) for a, q in zip(ans, qs)) / len(qs)
em = sum(exact_match(a.text, q.answer) for a, q in zip(ans, qs)) / len(qs)
print(json.dumps({"steps": steps, "people": people, "hidden": hidden, "first_id_correct": first_ok, "gold_routed_top4": route_ok, "em": em,
                  "examples": [(q.text, q.answer, a.rounds[0].requested, a.text[:60]) for a, q in list(zip(ans, qs))[:4]]}, indent=1))
