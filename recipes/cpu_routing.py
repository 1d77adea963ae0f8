"""CPU routing: a 0.1M-parameter model learns to route questions to the right biography (2 cores, minutes).

    msa train cpu_routing                        (writes runs/cpu_routing/: tokenizer, ckpt/step_N, metrics)
    msa bank create people.bank --model runs/cpu_routing/ckpt

The world has 64 people; every sample holds the asked person's biography and 7 others of that world, and
the router (layer 1 of 2) must rank the right one first. The log line of every 25 steps shows
``recall@1/layer1``, the share of those steps' training questions whose gold biography the router ranks
first: it starts near chance (1/8) and passes 0.9 within the 300 steps (measured: 0.15 at step 25, 0.69
at 200, 0.93 at 300; 29 s on 2 CPU cores with little else running, 2.6 min at a load average of 3-4).
The model only routes (``ids_only`` targets: it is trained to write the document's id, not to answer),
so ``msa ask BANK Q --json --routing`` with it shows which biographies the router picks; its answers
are not useful. Runs on the CPU
(``parallel.device="cpu"``); the GPU recipes are bios_tiny (the shipped model) and msa4b_shape_smoke."""

from msa.data.bios import BiosConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
    TrainConfig, tiny_model_config,
)  # fmt: skip


def recipe() -> TrainConfig:
    world = BiosConfig(num_people=64, seed=0)
    model = tiny_model_config(512, top_k_docs=4, pooling_kernel_size=16, query_reduce_method="mean", template_len=4)
    return TrainConfig(
        model=ModelSpec(config=model, seed=0, router_init="mirror"),
        data=DataConfig(
            world=world, curriculum=[CurriculumStage(0, 8)], target_format="ids_only", micro_batch_size=8, seed=1,
            max_doc_tokens=32, tokenizer="runs/cpu_routing/tokenizer", tokenizer_vocab=512, tokenizer_docs=64,
        ),  # fmt: skip
        schedule=ScheduleConfig([Phase("warmup", 300, 3e-3, 0.1, 1.0, warmup_steps=10, decay="cosine")]),
        checkpoint=CheckpointConfig(dir="runs/cpu_routing/ckpt", every=100),
        logging=LoggingConfig(every=25, metrics_file="runs/cpu_routing/metrics.jsonl"),
        parallel=ParallelConfig(device="cpu", threads=2),
    )
