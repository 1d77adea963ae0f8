"""The fast training path (``speed.path="fast"``): the reference training forward's function, computed
for long packed steps on a GPU.

Per step, once: the batch is padded to a length bucket, the TrainContext gets a static RouterLayout
(every chunk of every document in a fixed slot, slot counts padded), and the FlexAttention block masks
(local, and local + chunk slots) are built. The layers then read no host values and see the same
shapes in every layer, so every decoder block can be compiled once and checkpointed. The LM loss is
cross-entropy chunked and fused with the head (msa.train.fused_ce): no [M, V] logits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from msa.model.context import PackedBatch, TrainContext
from msa.model.memory import Routing
from msa.model.modeling import MSAForCausalLM
from msa.model.train_attention import backend, bucket, prepare_block_masks
from msa.train.config import SpeedConfig
from msa.train.fused_ce import chunked_cross_entropy

__all__ = ["FastTrainOutput", "apply_speed", "forward_fast", "pad_batch"]


@dataclass
class FastTrainOutput:
    """lm_sum: scalar float32, summed cross-entropy over the targets; doc_scores / selected as in
    TrainOutput (doc_scores may have extra -inf columns: document counts are padded)."""

    lm_sum: Tensor
    doc_scores: dict[int, Tensor]
    selected: dict[int, Routing]
    route_inputs: dict = field(default_factory=dict)


def pad_batch(batch: PackedBatch, index: Tensor, length: int) -> tuple[PackedBatch, Tensor]:
    """Right-pad a [B, L] batch to [B, length] (padding: id 0, doc -1, position 0, masked) and remap
    flat indices [M] into B*L to B*length."""
    l = batch.input_ids.shape[1]
    if length == l:
        return batch, index
    pad = functools.partial(F.pad, pad=(0, length - l))
    padded = PackedBatch(pad(batch.input_ids, value=0), pad(batch.doc_ids, value=-1),
                         pad(batch.position_ids, value=0), pad(batch.attention_mask, value=False))  # fmt: skip
    return padded, (index // l) * length + index % l


def forward_fast(model: MSAForCausalLM, batch: PackedBatch, logits_index: Tensor, targets: Tensor,
                 speed: SpeedConfig) -> FastTrainOutput:  # fmt: skip
    """The training forward and the summed LM loss at ``logits_index`` [M] (flat into B*L) against
    ``targets`` [M]; the same values as ``forward_train`` + cross-entropy, up to rounding."""
    model._check_ids(batch.input_ids)
    batch, index = pad_batch(batch, logits_index, bucket(batch.input_ids.shape[1]))
    msa = model.config.msa
    ctx = TrainContext.from_batch(batch, msa.top_k, msa.chunk_size, speed.pad_multiple)
    device = batch.input_ids.device
    ctx.layout.backend = backend(device)
    prepare_block_masks(ctx.layout, ctx.router.slot_first if model.router_layers else None, device)
    h = model.model.run(batch.input_ids, batch.position_ids, ctx)
    h = h.flatten(0, 1).index_select(0, index)
    return FastTrainOutput(chunked_cross_entropy(h, model.lm_head.weight, targets, speed.ce_chunk), ctx.scores,
                           ctx.selected, ctx.route_inputs)  # fmt: skip


def _checkpointed(fn):
    def run(*args):
        return checkpoint(fn, *args, use_reentrant=False)

    return run


def apply_speed(model: MSAForCausalLM, speed: SpeedConfig) -> None:
    """Activation checkpointing and per-block compilation, in place (parameter names unchanged; a
    second call replaces the first's).

    "block" checkpointing recomputes each (compiled) block in the backward; "mlp" checkpoints the MLP
    inside each block (selective). With ``compile`` the blocks without a router are compiled whole
    (static shapes: the fast path pads them; they share one compiled graph). A router block records
    its scores under its own layer index, which a compiled graph would specialise on (one compile per
    layer), so there only the norms and the MLP are compiled (FlexAttention is compiled either way)."""
    if speed.compile:  # one compiled entry per (code, shapes, dtype): steps of several length buckets
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    layer: nn.Module
    for layer in model.model.layers:
        for module in (layer, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
            module.__dict__.pop("forward", None)  # applying again replaces the earlier wrappers
        whole = speed.compile and not layer.self_attn.is_router
        if speed.compile and not whole:
            for module in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                module.forward = torch.compile(module.forward, dynamic=False)
        if speed.checkpoint == "mlp":
            layer.mlp.forward = _checkpointed(layer.mlp.forward)
        fwd = torch.compile(layer.forward, dynamic=False) if whole else layer.forward
        if speed.checkpoint == "block":
            fwd = _checkpointed(fwd)
        if fwd is not layer.forward:
            layer.forward = fwd
