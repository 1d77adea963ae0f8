"""Synthetic corpora and data readers: bios (people with relations), RULER NIAH, JSONL."""

from msa.data.bios import ATTRIBUTES, BLOCK, RELATIONS, BiosConfig, BiosWorld, Person, Question
from msa.data.jsonl import read_jsonl, write_jsonl
from msa.data.ruler import (
    TASKS,
    NiahSample,
    NiahTask,
    approx_token_count,
    make_sample,
    render_prompt,
    score,
    segment_context,
    split_sentences,
)

__all__ = [
    "ATTRIBUTES",
    "BLOCK",
    "RELATIONS",
    "TASKS",
    "BiosConfig",
    "BiosWorld",
    "NiahSample",
    "NiahTask",
    "Person",
    "Question",
    "approx_token_count",
    "make_sample",
    "read_jsonl",
    "render_prompt",
    "score",
    "segment_context",
    "split_sentences",
    "write_jsonl",
]
