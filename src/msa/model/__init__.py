"""Single-device model code: the Qwen3-family decoder with Memory Sparse Attention."""

from msa.model.checkpoint import CheckpointError, resolve_model_path, shipped_models
from msa.model.context import KVCache, PackedBatch
from msa.model.memory import (
    CompressedMemory,
    DenseMemoryAccess,
    LayerMemory,
    MemoryAccess,
    PrefixCache,
    Routing,
    RoutingOptions,
)
from msa.model.modeling import MSAForCausalLM, PrefillOutput, TrainOutput

__all__ = [
    "CheckpointError",
    "CompressedMemory",
    "DenseMemoryAccess",
    "KVCache",
    "LayerMemory",
    "MSAForCausalLM",
    "MemoryAccess",
    "PackedBatch",
    "PrefillOutput",
    "PrefixCache",
    "Routing",
    "RoutingOptions",
    "TrainOutput",
    "resolve_model_path",
    "shipped_models",
]
