"""Fast paths of MSA ops, each beside a plain-PyTorch version with the same signature.

The choice of backend for every routing call is made in ``msa.kernels.dispatch`` (see there):
``route_docs`` is ``msa.functional.route_topk`` on the fastest backend; ``route_topk`` /
``doc_scores_batched`` route over keys prepared once (``prepare_routing_keys``,
``prepare_doc_mean_keys``) with the Triton kernel on CUDA and the PyTorch GEMM formulation elsewhere.
"""

from msa.kernels.dispatch import (
    RoutingPrep,
    doc_scores_batched,
    force_reference,
    fused_routing,
    kernel_applies,
    per_doc_routing,
    route_docs,
    route_topk,
    use_triton,
)
from msa.kernels.routing_prep import (
    RoutingKeys,
    chunk_doc_from_offsets,
    prepare_doc_mean_keys,
    prepare_routing_keys,
    router_query_matrix,
)
from msa.kernels.routing_torch import (
    doc_scores_batched_torch,
    doc_scores_rows_torch,
    route_topk_rows,
    route_topk_torch,
    router_query_rows,
    topk_docs,
)

__all__ = [
    "RoutingKeys",
    "RoutingPrep",
    "chunk_doc_from_offsets",
    "doc_scores_batched",
    "doc_scores_batched_torch",
    "doc_scores_rows_torch",
    "force_reference",
    "fused_routing",
    "kernel_applies",
    "per_doc_routing",
    "prepare_doc_mean_keys",
    "prepare_routing_keys",
    "route_docs",
    "route_topk",
    "route_topk_rows",
    "route_topk_torch",
    "router_query_matrix",
    "router_query_rows",
    "topk_docs",
    "use_triton",
]
