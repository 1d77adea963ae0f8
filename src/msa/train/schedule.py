"""Pure functions of the step: the phase, its learning rate and loss weights, the curriculum stage."""

from __future__ import annotations

import math

from msa.train.config import CurriculumStage, Phase, ScheduleConfig
from msa.train.objective import LossWeights

__all__ = ["phase_at", "lr_at", "weights_at", "num_docs_at", "stage_at"]


def phase_at(schedule: ScheduleConfig, step: int) -> tuple[Phase, int]:
    """(phase, step within it) of global step ``step`` (0-based); past the end: the last phase."""
    start = 0
    for p in schedule.phases:
        if step < start + p.steps:
            return p, step - start
        start += p.steps
    last = schedule.phases[-1]
    return last, step - (start - last.steps)


def lr_at(schedule: ScheduleConfig, step: int) -> float:
    p, i = phase_at(schedule, step)
    if i < p.warmup_steps:
        return p.lr * (i + 1) / p.warmup_steps
    if p.decay == "constant":
        return p.lr
    span = max(p.steps - p.warmup_steps, 1)
    frac = min(max((i - p.warmup_steps) / span, 0.0), 1.0)
    floor = p.lr * p.min_lr_ratio
    return floor + (p.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def weights_at(schedule: ScheduleConfig, step: int) -> LossWeights:
    p, _ = phase_at(schedule, step)
    return LossWeights(lm=p.lm_weight, aux=p.aux_weight)


def stage_at(curriculum: list[CurriculumStage], step: int) -> CurriculumStage:
    """The curriculum stage of ``step``: stages in order, the last one open-ended."""
    start = 0
    for stage in curriculum[:-1]:
        if step < start + stage.steps:
            return stage
        start += stage.steps
    return curriculum[-1]


def num_docs_at(curriculum: list[CurriculumStage], step: int) -> int:
    """Memory documents per sample at ``step``."""
    return stage_at(curriculum, step).num_docs
