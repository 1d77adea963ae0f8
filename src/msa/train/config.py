"""Typed, nested training configuration. Recipes (``recipes/*.py``) are functions returning a TrainConfig;
``key.sub=value`` overrides are applied by msa.train.overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msa.config import MSAConfig, ModelConfig
from msa.data.bios import BiosConfig

__all__ = [
    "ModelSpec",
    "CurriculumStage",
    "DataConfig",
    "OptimizerConfig",
    "Phase",
    "ScheduleConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "ParallelConfig",
    "SpeedConfig",
    "TrainConfig",
]


@dataclass
class ModelSpec:
    """The model to train.

    config: architecture + MSA options (ignored where ``init`` is a checkpoint that carries its own).
    init: "random" (seeded init), or a directory: an MSA checkpoint (config.json has msa_config) or a
        base Qwen3 checkpoint (routers freshly initialised with ``config.msa``).
    seed: init seed. dtype: parameter (master weight) dtype, "float32" or "bfloat16".
    router_init: a name in msa.train.init.ROUTER_INITS applied after a random / base init.
    msa_changes: routing options to change on an MSA checkpoint ``init`` (``MSA_CHANGEABLE`` fields of
        MSAConfig, none of which changes a parameter), e.g. ``{"chunk_reduce_method": "max"}``.
    """

    config: ModelConfig = field(default_factory=ModelConfig)
    init: str = "random"
    seed: int = 0
    dtype: str = "float32"
    router_init: str = "default"
    msa_changes: dict[str, Any] = field(default_factory=dict)


MSA_CHANGEABLE = ("head_reduce_method", "query_reduce_method", "chunk_reduce_method", "top_k_docs", "routing_cosine",
                  "infonce_loss_temp")  # fmt: skip
"""MSAConfig fields ``ModelSpec.msa_changes`` may set on a trained checkpoint."""


@dataclass
class CurriculumStage:
    """Memory size of an SFT curriculum stage: ``num_docs`` documents per sample for ``steps`` steps
    (the last stage lasts until the end of training). ``max_tokens``: tokens per packed sample, any
    source (distractor documents are left out, last first, until a sample fits; None = no limit)."""

    steps: int
    num_docs: int
    max_tokens: int | None = None


@dataclass
class BiosSampling:
    """How bios samples are drawn beyond their kind and memory size (all off by default).

    hard_negative_fraction: share of the distractor documents that are namesakes of a gold person
        (same first or same last name): in a memory of millions the router must separate full names.
    max_doc_id: documents get distinct random ids whose number of digits is uniform in 1..digits of
        ``max_doc_id - 1`` (so short and long ids are equally common, as across a bank of that size);
        None = the person's index in the world.
    lookup_fraction: share of samples whose question is a person's name alone (how ``doc_choice=
        "routed"`` routes a request the model writes); the answer is the biography.
    wording: question phrasings, a split of ``msa.data.bios_text.WORDINGS`` ("base" or "train");
        lead_fraction: questions behind a training lead-in (``TRAIN_LEADS``); lower_fraction:
        questions (and name lookups) with the names lower-cased. Requests copy the name as written.
    """

    hard_negative_fraction: float = 0.0
    max_doc_id: int | None = None
    lookup_fraction: float = 0.0
    wording: str = "base"
    lead_fraction: float = 0.0
    lower_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hard_negative_fraction", "lookup_fraction", "lead_fraction", "lower_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_doc_id is not None and self.max_doc_id < 2:
            raise ValueError(f"max_doc_id must be >= 2, got {self.max_doc_id}")
        if self.wording not in ("base", "train"):
            raise ValueError(f'wording for training must be "base" or "train", got {self.wording!r}')


@dataclass
class DataConfig:
    """Training data.

    source: "bios" (generated samples, see BiosSamples) or "jsonl" (``path``, the JSONL training format).
    world / kind / seed / multi_fraction: bios source options.
    curriculum: memory sizes by stage (bios only; JSONL samples carry their own memory).
    target_format: a name in msa.train.targets.TARGET_FORMATS.
    tokenizer: tokenizer directory; when it does not exist it is trained on ``tokenizer_docs`` bios
        documents with ``tokenizer_vocab`` tokens and saved there.
    micro_batch_size: samples per forward per rank; grad_accum: micro-batches per optimizer step.
    Global batch = micro_batch_size * grad_accum * world_size.
    answer_round_fraction: ``interleave_round`` / ``interleave_named`` only: share of answer rounds
        (None = uniform over rounds). ``interleave_named`` trains the ``doc_choice="routed"`` protocol
        and sets it in the model's config.
    answer_round_hide_read: ``interleave_round`` / ``interleave_named`` only: answer rounds leave the
        documents read so far out of the memory (their text stays appended), so answers must be read
        from text (``InterleaveRounds``).
    answer_round_extra_read: ``interleave_round`` / ``interleave_named`` only: answer rounds also have
        read up to this many other documents of the memory (a number drawn per sample, 0..N; rounds in
        random order), so the answer is read out of several appended texts, as after a retrieval miss
        or when a round reads several documents.
    answer_round_chain_order: with ``answer_round_extra_read``, the chain's documents keep their hop
        order and only the extra reads are placed at random (``InterleaveRounds.chain_order``).
    niah_fraction / niah_doc_tokens: bios source only: share of samples that are RULER NIAH tasks
        (``NiahSamples``, documents of about ``niah_doc_tokens`` tokens), for NIAH-capable models.
    recite_fraction: bios source only: share of bios samples that ask for a whole biography (the
        document's text is the answer; ``BiosSamples``): dense in-context copying signal for reading.
    bios: bios source only: hard negatives, id range, name lookups, question wording (``BiosSampling``).
    workers: processes that generate and collate the next steps' batches while the model trains (0 = in
        the training process). Needs a source with random access (bios); a JSONL stream ignores it.
    """

    source: str = "bios"
    path: str = ""
    world: BiosConfig = field(default_factory=BiosConfig)
    kind: str = "single"
    seed: int = 0
    multi_fraction: float = 0.5
    curriculum: list[CurriculumStage] = field(default_factory=lambda: [CurriculumStage(0, 16)])
    target_format: str = "interleave_transcript"
    max_doc_tokens: int | None = None
    tokenizer: str = "runs/tokenizer"
    tokenizer_vocab: int = 1024
    tokenizer_docs: int = 2048
    micro_batch_size: int = 4
    grad_accum: int = 1
    answer_round_fraction: float | None = None
    answer_round_hide_read: bool = False
    answer_round_extra_read: int = 0
    answer_round_chain_order: bool = False
    workers: int = 0
    niah_fraction: float = 0.0
    niah_doc_tokens: int = 96
    recite_fraction: float = 0.0
    bios: BiosSampling = field(default_factory=BiosSampling)


@dataclass
class OptimizerConfig:
    """AdamW; the learning rate comes from the schedule."""

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class Phase:
    """One training phase: its length, peak lr, loss weights and lr shape (linear warm-up over
    ``warmup_steps``, then ``decay`` "cosine" down to ``min_lr_ratio * lr`` or "constant")."""

    name: str
    steps: int
    lr: float
    lm_weight: float
    aux_weight: float
    warmup_steps: int = 0
    decay: str = "constant"
    min_lr_ratio: float = 0.1


def _paper_phases() -> list[Phase]:
    return [
        Phase("warmup", steps=1000, lr=1e-4, lm_weight=0.1, aux_weight=1.0, warmup_steps=50),
        Phase("main", steps=10000, lr=6e-6, lm_weight=1.0, aux_weight=0.1, decay="cosine"),
    ]


@dataclass
class ScheduleConfig:
    """Phases run in order; the paper's two: warm-up (0.1 LM + 1.0 AUX, lr 1e-4), main (1.0 LM + 0.1 AUX, lr 6e-6)."""

    phases: list[Phase] = field(default_factory=_paper_phases)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


@dataclass
class CheckpointConfig:
    """dir: checkpoint directory ("" = none); every: save each N steps (0 = only at the end);
    keep: newest checkpoints kept; resume: continue from the newest checkpoint in dir if any."""

    dir: str = ""
    every: int = 0
    keep: int = 2
    resume: bool = True


@dataclass
class LoggingConfig:
    """every: log each N steps; metrics_file: JSONL of the logged metrics ("" = none)."""

    every: int = 10
    metrics_file: str = ""
    level: str = "INFO"


@dataclass
class ParallelConfig:
    """device: "auto" (cuda if available), "cpu", "cuda". data_parallel: "ddp" or "fsdp" (FSDP2,
    fully_shard per decoder layer), used when launched with torchrun (WORLD_SIZE > 1).
    autocast: "auto" (bf16 on CUDA, off on CPU), "bf16", "none". threads: CPU threads (0 = torch default)."""

    device: str = "auto"
    data_parallel: str = "ddp"
    autocast: str = "auto"
    threads: int = 0


@dataclass
class SpeedConfig:
    """How a training step is computed; both paths compute the same function (tests/test_train_fast.py).

    path: "reference" (router layers gather their selected chunks per layer; logits at the targets,
        then plain cross-entropy) or "fast" (msa.train.fast: every chunk in a static slot shared by all
        router layers, FlexAttention block masks built once per step, no host reads inside the layers,
        cross-entropy chunked and fused with the LM head, lengths padded to compile-friendly buckets).
    compile: fast path: ``torch.compile`` every decoder block (CUDA; the same kernels for all blocks).
    checkpoint: activation checkpointing: "none", "block" (every decoder block recomputed in the
        backward) or "mlp" (selective: only the MLPs, the largest activations).
    ce_chunk: fast path: target tokens per cross-entropy chunk (one [ce_chunk, V] float32 block).
    pad_multiple: fast path: chunk slots, routing tokens and documents per sample padded up to a
        multiple of this (fixed shapes across steps, so compiled kernels are reused).
    """

    path: str = "reference"
    compile: bool = False
    checkpoint: str = "none"
    ce_chunk: int = 4096
    pad_multiple: int = 64

    def validate(self) -> None:
        if self.path not in ("reference", "fast"):
            raise ValueError(f"speed.path must be 'reference' or 'fast', got {self.path!r}")
        if self.checkpoint not in ("none", "block", "mlp"):
            raise ValueError(f"speed.checkpoint must be 'none', 'block' or 'mlp', got {self.checkpoint!r}")
        if self.ce_chunk < 1 or self.pad_multiple < 1:
            raise ValueError("speed.ce_chunk and speed.pad_multiple must be >= 1")
        if self.compile and self.path != "fast":
            raise ValueError("speed.compile needs speed.path='fast'")


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    seed: int = 0
    # Router layers trained by the aux loss: "official" = index >= num_layers // 2 (the release's rule),
    # "all" = every router layer (for small models routing from low layers; see recipes/bios_tiny.py).
    aux_layers: str = "official"
    # Negatives of the aux loss: "sample" = the sample's own documents (the paper's), "batch" = every
    # document of the micro-batch except copies of the sample's positives (msa.train.objective).
    aux_negatives: str = "sample"

    def validate(self) -> None:
        """Re-check the model config after overrides and the schedule / data values."""
        cfg = self.model.config
        cfg.__post_init__()
        if not self.schedule.phases or self.schedule.total_steps < 1:
            raise ValueError("schedule.phases must hold at least one step")
        for p in self.schedule.phases:
            if p.decay not in ("constant", "cosine"):
                raise ValueError(f"phase {p.name!r}: decay must be 'constant' or 'cosine', got {p.decay!r}")
        if self.data.source not in ("bios", "jsonl"):
            raise ValueError(f"data.source must be 'bios' or 'jsonl', got {self.data.source!r}")
        if self.data.source == "jsonl" and not self.data.path:
            raise ValueError("data.source='jsonl' needs data.path")
        if not self.data.curriculum:
            raise ValueError("data.curriculum needs at least one stage")
        if self.aux_layers not in ("official", "all"):
            raise ValueError(f"aux_layers must be 'official' or 'all', got {self.aux_layers!r}")
        if self.aux_negatives not in ("sample", "batch"):
            raise ValueError(f"aux_negatives must be 'sample' or 'batch', got {self.aux_negatives!r}")
        for key in ("niah_fraction", "recite_fraction"):
            v = getattr(self.data, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"data.{key} must be in [0, 1], got {v}")
        if self.data.workers < 0:
            raise ValueError(f"data.workers must be >= 0, got {self.data.workers}")
        self.speed.validate()
        if self.parallel.data_parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel.data_parallel must be 'ddp' or 'fsdp', got {self.parallel.data_parallel!r}")


def tiny_model_config(vocab_size: int, **msa: object) -> ModelConfig:
    """A small Qwen3-shaped model for CPU tests and recipes (2 layers, layer 1 routes)."""
    kw: dict[str, object] = dict(top_k_docs=4, pooling_kernel_size=16)
    kw.update(msa)
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=4096,
        msa=MSAConfig(**kw),  # type: ignore[arg-type]
    )  # fmt: skip
