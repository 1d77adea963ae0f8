"""Learning test: a tiny seeded model, warm-up phase (aux dominant), on bios memories of 8 documents.

Known open problem (see the issue 4 part 3 report): on CPU budgets of a few hundred steps the router
of a from-scratch 2-layer model stays at chance on fresh samples (it overfits a fixed batch to recall 1.0
in 15 steps, so the gradient path works). The loss-decrease part holds; the recall part is xfail.
"""

import pytest
import torch

from msa.data.bios import BiosConfig, BiosWorld
from msa.train import (
    BiosSamples, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
    TrainConfig, tiny_model_config,
)  # fmt: skip
from msa.train.loop import Trainer
from msa.train.objective import mean_recall

WORLD = BiosConfig(num_people=1024, seed=0)


@pytest.mark.xfail(reason="router recall does not yet leave chance within the CPU budget", strict=False)
def test_tiny_model_learns_to_route(tmp_path):
    from msa.tokenizer import train_tokenizer

    tok = train_tokenizer(BiosWorld(WORLD).iter_documents(0, 1024), 512, tmp_path / "tok")
    torch.set_num_threads(2)
    cfg = TrainConfig(
        model=ModelSpec(config=tiny_model_config(512, top_k_docs=4, pooling_kernel_size=16), seed=0, router_init="mirror"),
        data=DataConfig(world=WORLD, curriculum=[CurriculumStage(0, 8)], target_format="ids_only",
                        micro_batch_size=8, seed=1, max_doc_tokens=32),
        schedule=ScheduleConfig([Phase("warmup", 150, 3e-3, 0.1, 1.0, warmup_steps=10, decay="cosine")]),
        logging=LoggingConfig(every=0), parallel=ParallelConfig(device="cpu"),
    )  # fmt: skip
    trainer = Trainer(cfg, tokenizer=tok)
    held = [BiosSamples(WORLD, 8, "single", seed=999).sample(i) for i in range(64)]
    before = mean_recall(trainer.evaluate(held, 16), 1, trainer.objective.layers)
    hist = trainer.fit()
    after = mean_recall(trainer.evaluate(held, 16), 1, trainer.objective.layers)
    losses = [r["loss"] for r in hist]
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert before < 0.3
    assert after > 0.9, (before, after)
