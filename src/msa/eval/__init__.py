"""Evaluation: offline metrics, an LLM judge, the RAG / full-context baselines and the scaling run.

Submodules import torch and the model only when used: ``msa.eval.metrics`` and ``msa.eval.judge``
need neither.
"""

from msa.eval.metrics import (
    contains_answer,
    exact_match,
    normalize_answer,
    recall_at_k,
    retrieval_scores,
    ruler_score,
    summarize,
    token_f1,
)

__all__ = [
    "contains_answer",
    "exact_match",
    "normalize_answer",
    "recall_at_k",
    "retrieval_scores",
    "ruler_score",
    "summarize",
    "token_f1",
]
