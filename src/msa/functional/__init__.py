"""Pure tensor math of MSA: pooling, routing, positions, routing losses. The readable reference."""

from msa.functional.losses import (
    bce_loss,
    decoupled_focal_infonce_loss,
    decoupled_infonce_loss,
    focal_infonce_loss,
    infonce_loss,
    recall_at,
    recall_rows,
    routing_loss,
    routing_loss_rows,
)
from msa.functional.pooling import chunk_layout, chunk_mean_pool
from msa.functional.positions import doc_position_ids, query_position_ids
from msa.functional.routing import (
    batched_doc_scores, batched_select_docs, chunk_scores, cross_doc_scores, doc_scores, reduce_chunks_to_docs, route_topk,
    select_docs,
)

__all__ = [
    "batched_doc_scores",
    "batched_select_docs",
    "bce_loss",
    "chunk_layout",
    "chunk_mean_pool",
    "chunk_scores",
    "cross_doc_scores",
    "decoupled_focal_infonce_loss",
    "decoupled_infonce_loss",
    "doc_position_ids",
    "doc_scores",
    "focal_infonce_loss",
    "infonce_loss",
    "query_position_ids",
    "recall_at",
    "recall_rows",
    "reduce_chunks_to_docs",
    "route_topk",
    "routing_loss",
    "routing_loss_rows",
    "select_docs",
]
