"""MSA-4B-shaped model (Qwen3-4B backbone: 36 layers, hidden 2560, 32/8 heads, head_dim 128; router
layers 18..35, top-16, P=64), random init, a few bf16 steps on bios samples: GPU throughput / MFU.

    msa train msa4b_shape_smoke            (one GPU; torchrun for several)
    msa train msa4b_shape_smoke speed.path=fast speed.compile=true speed.checkpoint=block   (the fast path)
    python bench/train.py                  (tokens/s and MFU of this shape, reference vs fast path)
"""

from msa.config import MSAConfig, ModelConfig
from msa.data.bios import BiosConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, OptimizerConfig, ParallelConfig,
    Phase, ScheduleConfig, TrainConfig,
)  # fmt: skip


def recipe() -> TrainConfig:
    model = ModelConfig(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, rope_theta=5_000_000.0, tie_word_embeddings=True,
        msa=MSAConfig(router_layer_idx="half", top_k_docs=16, pooling_kernel_size=64),
    )  # fmt: skip
    return TrainConfig(
        model=ModelSpec(config=model, seed=0, dtype="bfloat16"),
        data=DataConfig(
            source="bios", world=BiosConfig(num_people=65536, seed=0), kind="mixed",
            target_format="interleave_transcript", curriculum=[CurriculumStage(0, 64)],
            tokenizer="runs/msa4b_smoke/tokenizer", tokenizer_vocab=4096, tokenizer_docs=8192,
            micro_batch_size=1, grad_accum=1,
        ),  # fmt: skip
        optimizer=OptimizerConfig(grad_clip=1.0),
        schedule=ScheduleConfig([Phase("warmup", steps=8, lr=1e-4, lm_weight=0.1, aux_weight=1.0)]),
        checkpoint=CheckpointConfig(dir=""),
        logging=LoggingConfig(every=1),
        parallel=ParallelConfig(device="cuda", autocast="bf16"),
    )
