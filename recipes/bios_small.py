"""msa-bios-small: msa-bios-tiny trained on for the general ``routed`` protocol (issue 16).

    msa train bios_small [key=value ...]
    python bench/train_shipped.py --recipe bios_small --minutes 9 --out runs/msa-bios-small data.workers=12

What changes against bios_tiny, each for a measured failure of msa-bios-tiny without the engine's
former name heuristics (bench/results/issue16_*/README.md):
  * hard negatives (``data.bios.hard_negative_fraction``): half of every memory's distractors share
    the first or the last name with a gold person. In a memory of millions, people sharing a first
    name are the router's mistakes.
  * name lookups (``data.bios.lookup_fraction``): samples whose question is a person's name alone,
    which is how ``doc_choice="routed"`` routes a request the model writes.
  * ids of every length up to 10^7 (``data.bios.max_doc_id``): short and long document ids equally
    often, as across a large bank.
  * larger memories (32 -> 64 -> 128 documents a sample; documents are encoded independently).
  * wording (``data.bios.wording="train"``, lead-ins, lower-cased names): more phrasings than the
    three per attribute; the held-out paraphrases and lead-ins of msa.data.bios_text stay unseen.
It starts from msa-bios-tiny's weights (same architecture; its reading was the slow part to learn).
"""

from msa.model import resolve_model_path
from msa.train.config import (
    BiosSampling, CheckpointConfig, CurriculumStage, LoggingConfig, ModelSpec, OptimizerConfig, Phase, ScheduleConfig,
    TrainConfig,
)  # fmt: skip


def recipe() -> TrainConfig:
    base = _recipe("bios_tiny")
    tiny = str(resolve_model_path("msa-bios-tiny"))
    data = base.data
    data.tokenizer = tiny
    data.curriculum = [CurriculumStage(600, 32), CurriculumStage(600, 64), CurriculumStage(0, 128)]
    data.recite_fraction = 0.1
    data.niah_fraction = 0.1
    data.micro_batch_size = 32
    data.workers = 12
    data.bios = BiosSampling(hard_negative_fraction=0.5, max_doc_id=10**7, lookup_fraction=0.25, wording="train",
                             lead_fraction=0.2, lower_fraction=0.15)  # fmt: skip
    return TrainConfig(
        model=ModelSpec(config=base.model.config, init=tiny),
        data=data,
        optimizer=OptimizerConfig(grad_clip=1.0),
        schedule=ScheduleConfig([
            Phase("router", steps=600, lr=1e-3, lm_weight=0.5, aux_weight=1.0, warmup_steps=50),
            Phase("main", steps=2400, lr=5e-4, lm_weight=1.0, aux_weight=0.5, decay="cosine"),
        ]),
        aux_layers="all",
        checkpoint=CheckpointConfig(dir="runs/bios_small/ckpt", every=500),
        logging=LoggingConfig(every=50, metrics_file="runs/bios_small/metrics.jsonl"),
        parallel=base.parallel,
    )  # fmt: skip


def _recipe(name: str) -> TrainConfig:
    from msa.train import load_recipe

    return load_recipe(name)
