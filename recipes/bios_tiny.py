"""msa-bios-tiny: a small MSA model trained from scratch on the bios world (one GPU, minutes).

    msa train bios_tiny [key=value ...]
    python bench/train_shipped.py --minutes 8      (trains, evaluates, writes the shipped files)

Choices (measured on CPU runs, see the training log / closing note):
  * query_reduce_method="mean": with the official max over query tokens only the arg-max token gets
    gradient and a from-scratch router stays at chance; mean learns.
  * chunk 8 tokens: the document's first chunk is exactly ``<|im_start|>[gid]. `` so ids are readable
    from memory; 8x compression instead of 64x is affordable for a model this small.
  * interleave_round targets: every sequence is one engine round, so routing and id generation are
    trained on the query the engine routes with.
"""

from msa.config import MSAConfig, ModelConfig
from msa.data.bios import BiosConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, OptimizerConfig, ParallelConfig,
    Phase, ScheduleConfig, TrainConfig,
)  # fmt: skip


def recipe() -> TrainConfig:
    model = ModelConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, rope_theta=10000.0, max_position_embeddings=8192,
        msa=MSAConfig(router_layer_idx="1,2,3", top_k_docs=16, pooling_kernel_size=8, query_reduce_method="mean",
                      template_len=4,  # our BPE splits "<|im_start|>user\n" into 4 tokens
                      routing_cosine=False),
    )  # fmt: skip
    return TrainConfig(
        aux_layers="all",
        model=ModelSpec(config=model, seed=0, router_init="mirror"),
        data=DataConfig(
            source="bios", world=BiosConfig(num_people=1 << 20, seed=0), kind="mixed", multi_fraction=0.5,
            target_format="interleave_round", answer_round_fraction=0.2,
            curriculum=[CurriculumStage(1500, 16), CurriculumStage(1500, 32), CurriculumStage(0, 64)],
            tokenizer="runs/bios_tiny/tokenizer", tokenizer_vocab=2048, tokenizer_docs=20000,
            micro_batch_size=16, grad_accum=1, workers=6,
        ),
        optimizer=OptimizerConfig(grad_clip=1.0),
        schedule=ScheduleConfig([
            Phase("warmup", steps=1500, lr=2e-3, lm_weight=0.1, aux_weight=1.0, warmup_steps=50),
            Phase("main", steps=4500, lr=1e-3, lm_weight=1.0, aux_weight=0.3, decay="cosine"),
        ]),
        checkpoint=CheckpointConfig(dir="runs/bios_tiny/ckpt", every=1000),
        logging=LoggingConfig(every=50, metrics_file="runs/bios_tiny/metrics.jsonl"),
        parallel=ParallelConfig(device="auto", autocast="auto"),
    )  # fmt: skip
