"""Training: the JSONL sample format, collator, objective, schedules, loop, checkpoints, DDP/FSDP2, and
the fast path (``SpeedConfig``: msa.train.fast, msa.train.fused_ce).

``msa.train.main(recipe, overrides)`` is the entry point behind ``msa train RECIPE [key=value ...]``.
"""

from msa.train.collator import IGNORE, Collator, TrainBatch
from msa.train.config import (
    CheckpointConfig,
    CurriculumStage,
    DataConfig,
    LoggingConfig,
    ModelSpec,
    OptimizerConfig,
    ParallelConfig,
    Phase,
    ScheduleConfig,
    SpeedConfig,
    TrainConfig,
    tiny_model_config,
)
from msa.train.data import BiosSamples, Document, JsonlSamples, TrainSample, sample_from_json, sample_to_json
from msa.train.entry import load_recipe, main
from msa.train.objective import LossWeights, Metrics, Objective
from msa.train.overrides import OverrideError, apply_overrides
from msa.train.targets import TARGET_FORMATS, Segment, answer_only, ids_only, ids_then_answer, interleave_transcript

__all__ = [
    "IGNORE", "Collator", "TrainBatch", "CheckpointConfig", "CurriculumStage", "DataConfig", "LoggingConfig",
    "ModelSpec", "OptimizerConfig", "ParallelConfig", "Phase", "ScheduleConfig", "SpeedConfig", "TrainConfig", "tiny_model_config",
    "BiosSamples", "Document", "JsonlSamples", "TrainSample", "sample_from_json", "sample_to_json", "load_recipe",
    "main", "LossWeights", "Metrics", "Objective", "OverrideError", "apply_overrides", "TARGET_FORMATS", "Segment",
    "answer_only", "ids_only", "ids_then_answer", "interleave_transcript",
]  # fmt: skip
