"""MSA-4B from a Qwen3 base (the paper's path): routers added to Qwen3-4B, two-phase training, 8K -> 64K.

    msa train msa4b_cpt model.init=/path/to/Qwen3-4B-Instruct-2507 data.path=train.jsonl
    torchrun --nproc_per_node 8 -m msa train msa4b_cpt model.init=... data.path=... parallel.data_parallel=fsdp

``model.init`` is a Hugging Face Qwen3 directory as released (sharded safetensors with
model.safetensors.index.json, generation_config.json, the tokenizer with its chat template): the
backbone is loaded from it and the router projections of the latter half of the layers (18..35) are
freshly initialised (``MSAForCausalLM.from_base``). Its tokenizer is the run's tokenizer and the
prompt is the official one (``<|im_start|>`` template, ``[id]<|object_ref_end|>`` rounds,
``<End-of-Retrieve>``), so every checkpoint step_N/ is a model directory that ``msa bank create
--model`` and the engine serve with the official protocol unchanged; the checkpoint carries the base's
tokenizer files, chat template and generation config.

Schedule (MSA paper): warm-up phase 0.1 LM + 1.0 aux at lr 1e-4 (the routers learn while the backbone
barely moves), then the main phase 1.0 LM + 0.1 aux at lr 6e-6 (cosine). Curriculum: samples of up to
8K tokens during the warm-up, 64K after (``max_tokens`` leaves distractor documents out until a sample
fits). ``data.path`` is JSONL in the training format (msa.train.data); with ``data.source=bios`` the
same recipe trains on generated biographies (64 documents a sample, then 600).

Speed (bench/train.py on one H200, docs/training.md): the fast path with compiled blocks and per-block
activation checkpointing. Weights and optimizer state are float32 under bf16 autocast: at lr 6e-6 an
update is ~3e-4 of a weight, below bfloat16's resolution (~4e-3), so bf16 weights would not move
(``model.dtype=bfloat16`` is faster and smaller, for the warm-up alone).
"""

import torch

from msa.config import MSAConfig, ModelConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, OptimizerConfig, ParallelConfig, Phase,
    ScheduleConfig, SpeedConfig, TrainConfig,
)  # fmt: skip

BASE = "models/Qwen3-4B-Instruct-2507"
WARMUP_STEPS = 1000


def recipe() -> TrainConfig:
    msa = MSAConfig(router_layer_idx="half", top_k_docs=16, pooling_kernel_size=64)
    return TrainConfig(
        model=ModelSpec(config=ModelConfig(msa=msa), init=BASE, dtype="float32"),
        data=DataConfig(
            source="jsonl", path="data/msa_train.jsonl", tokenizer=BASE, target_format="interleave_transcript",
            micro_batch_size=1, grad_accum=16,
            curriculum=[CurriculumStage(WARMUP_STEPS, 64, max_tokens=8192), CurriculumStage(0, 600, max_tokens=65536)],
        ),  # fmt: skip
        optimizer=OptimizerConfig(grad_clip=1.0),
        schedule=ScheduleConfig([
            Phase("warmup", steps=WARMUP_STEPS, lr=1e-4, lm_weight=0.1, aux_weight=1.0, warmup_steps=50),
            Phase("main", steps=10000, lr=6e-6, lm_weight=1.0, aux_weight=0.1, decay="cosine"),
        ]),  # fmt: skip
        checkpoint=CheckpointConfig(dir="runs/msa4b_cpt/ckpt", every=500),
        logging=LoggingConfig(every=10, metrics_file="runs/msa4b_cpt/metrics.jsonl"),
        parallel=ParallelConfig(device="auto", autocast="auto"),
        speed=SpeedConfig(path="fast", compile=torch.cuda.is_available(), checkpoint="block"),
    )
