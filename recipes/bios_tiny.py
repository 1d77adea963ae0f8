"""A tiny MSA model trained from scratch on the bios world (CPU-friendly).

    msa train bios_tiny [key=value ...]        e.g. checkpoint.dir=runs/bios_tiny schedule.phases.0.steps=500

The tokenizer is trained on the world's documents on first use (data.tokenizer).
"""

from msa.data.bios import BiosConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase,
    ScheduleConfig, TrainConfig, tiny_model_config,
)  # fmt: skip


def recipe() -> TrainConfig:
    world = BiosConfig(num_people=4096, seed=0)
    model = tiny_model_config(1024, top_k_docs=4, pooling_kernel_size=16)
    model.hidden_size, model.intermediate_size, model.head_dim = 128, 256, 32
    return TrainConfig(
        model=ModelSpec(config=model, seed=0, router_init="mirror"),
        data=DataConfig(
            source="bios", world=world, kind="mixed", target_format="interleave_transcript",
            curriculum=[CurriculumStage(600, 8), CurriculumStage(600, 16), CurriculumStage(0, 32)],
            tokenizer="runs/bios_tiny/tokenizer", tokenizer_vocab=1024, tokenizer_docs=4096,
            micro_batch_size=8, grad_accum=1,
        ),
        schedule=ScheduleConfig([
            Phase("warmup", steps=600, lr=3e-3, lm_weight=0.1, aux_weight=1.0, warmup_steps=20),
            Phase("main", steps=1200, lr=1e-3, lm_weight=1.0, aux_weight=0.1, decay="cosine"),
        ]),
        checkpoint=CheckpointConfig(dir="runs/bios_tiny/ckpt", every=200),
        logging=LoggingConfig(every=20, metrics_file="runs/bios_tiny/metrics.jsonl"),
        parallel=ParallelConfig(device="auto"),
    )  # fmt: skip
