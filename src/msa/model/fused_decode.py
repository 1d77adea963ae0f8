"""A one-token decoding step into a static cache, each decoder layer as one compiled function.

At batch 1 a graphed step's time is set by how many kernels it runs, not by their bytes (the
weights are read once either way). The reference layer runs ~35 kernels; this one runs its four
matmuls and a few fused element-wise kernels:

    h = h + mlp_out(previous layer); x = norm(h)            one kernel (the residual add is deferred)
    qkv = x @ [Wq; Wk; Wv]                                   one matmul (weights concatenated)
    q/k norm, RoPE, the cache write, the mask, attention     compiled (SDPA over the whole buffer)
    h = h + attn @ Wo; x = norm(h)                           one matmul, one kernel
    mlp_out = silu(x @ Wg) * (x @ Wu) @ Wd                   two matmuls ([Wg; Wu] concatenated), one kernel

The formulas are the layer's (``DecoderLayer`` over a ``StaticKVCache``): results differ from the
eager ops by floating-point rounding only. Used without gradients on CUDA with fused inference on
(``msa.model.layers.set_fused_inference``), for steps feeding one token per row; everything else,
the CPU and training run the eager ops.

The concatenated weights are copies, built on first use per layer (``fused_weights``, shared with
the prefill's fused inference): a model in bf16 holds its attention and MLP input projections twice.
They follow the parameters: a parameter changed in place (its ``_version``) is copied in again into
the same buffers, so captured graphs stay valid; one replaced by a new tensor gives new buffers
(``weights_stamp`` changes, and ``msa.engine.static_decode`` captures its step again).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from msa.model.layers import _Fused, _rms_norm, _rotate_half, concat_weights, fused_inference_enabled, fused_inference_here
from msa.model.static_cache import StaticKVCache

if TYPE_CHECKING:
    from msa.model.modeling import DecoderLayer

logger = logging.getLogger(__name__)


def fused_weights(layer: "DecoderLayer") -> tuple[Tensor, Tensor]:
    """The layer's [Wq; Wk; Wv] ([(Hq + 2 Hkv) D, hidden]) and [Wgate; Wup] ([2 I, hidden]), built on first
    use and kept in step with the parameters (``msa.model.layers.ConcatWeights``; the prefill's fused
    inference uses the same)."""
    a, m = layer.self_attn, layer.mlp
    return concat_weights(a, (a.q_proj, a.k_proj, a.v_proj)), concat_weights(m, (m.gate_proj, m.up_proj))


def weights_stamp(layers) -> tuple[int, ...]:
    """Addresses of the concatenated weights built so far (refreshed first): a captured step that
    reads them is valid while this stays the same."""
    owners = (o for layer in layers for o in (layer.self_attn, layer.mlp))
    built = (o.__dict__.get("_concat_weights") for o in owners)
    return tuple(cw.get().data_ptr() for cw in built if cw is not None)


def applies(layers, h: Tensor, ctx) -> bool:
    """Whether this step runs the fused layers: one token per row into a static cache, fused inference
    on here (CUDA, no gradients), a layer without attention biases (the Qwen3 layout), and the layer
    function compiled (after a failure the eager layers run); every layer's buffer a multiple of
    ``ALIGN`` slots (what the compiled attention's mask needs; the static decoder allocates so)."""
    return (isinstance(ctx.cache, StaticKVCache) and h.shape[1] == 1 and fused_inference_here(h)
            and layers[0].self_attn.q_proj.bias is None and not _compiled_layer.failed
            and all(k.shape[2] % ALIGN == 0 for k in ctx.cache.keys))  # fmt: skip


def decode_layer(h: Tensor, delta: Tensor, w: tuple[Tensor, ...], cos: Tensor, sin: Tensor, keys: Tensor,
                 values: Tensor, valid: Tensor, base: Tensor, cursor: Tensor, layer: Tensor, fed: Tensor, eps: float,
                 heads: int, kv_heads: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One decoder layer for one token per row, writing its K/V into the static cache in place.

    h: [B, 1, hidden] residual stream, ``delta`` [B, 1, hidden] the previous layer's MLP output (not
    yet added; zeros before the first layer); w: input norm, [Wq; Wk; Wv], q-norm, k-norm, Wo, post-attention norm,
    [Wg; Wu], Wd; cos, sin: [B, 1, D]; keys, values: [B, Hkv, S, D] and valid [B, S] (the layer's
    buffers, written at slot base[layer] + cursor: base [L] long, cursor [] long, layer [1] long, all
    unsliced tensors, so one compiled function serves every layer); fed: [B] bool (a row feeding
    nothing writes an invalid slot) -> (h + delta + attention, this layer's MLP output), both [B, 1, hidden].
    """
    ln1, wqkv, qn, kn, wo, ln2, wgu, wd = w
    own = base.index_select(0, layer) + cursor  # [1]
    h = h + delta
    b, d = h.shape[0], qn.shape[0]
    qkv = F.linear(_rms_norm(h, ln1, eps), wqkv).view(b, heads + 2 * kv_heads, d)
    qk, v = qkv.split([heads + kv_heads, kv_heads], dim=1)  # [B, Hq + Hkv, D], [B, Hkv, D]
    qk = _rms_norm(qk, torch.cat([qn.expand(heads, d), kn.expand(kv_heads, d)]), eps)  # q and k norms at once
    q, k = (qk * cos + _rotate_half(qk) * sin).split([heads, kv_heads], dim=1)
    keys[:, :, own] = k[:, :, None]  # in place (an index_put a compiler keeps in place)
    values[:, :, own] = v[:, :, None]
    mine = torch.arange(valid.shape[1], device=valid.device) == own  # [S]
    see = valid | mine  # valid slots, and always itself (the slot written now)
    valid.copy_(torch.where(mine, fed[:, None], valid))  # one pass over the mask: its update and ``see``
    qg = q.reshape(b, kv_heads, heads // kv_heads, d)  # each KV head's query group as its query rows
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=see[:, None, None, :])  # [B, Hkv, g, D]
    h = h + F.linear(out.reshape(b, 1, heads * d), wo)
    gate, up = F.linear(_rms_norm(h, ln2, eps), wgu).chunk(2, dim=-1)
    return h, F.linear(F.silu(gate) * up, wd)


_compiled_layer = _Fused(decode_layer)
# The compiled attention (memory-efficient SDPA) needs its mask's rows aligned to 8 elements: every
# buffer, and every trimmed view of one, spans a multiple of ALIGN slots.
ALIGN = 8


def compiled_in_use() -> bool:
    """Whether CUDA steps run the compiled layers (fused inference on, the layer function not given up)."""
    return fused_inference_enabled() and not _compiled_layer.failed


def give_up(error: Exception) -> None:
    """The compiled layers failed where the compiler could not see it (inside a CUDA graph capture, say):
    the eager layers from now on, with one warning."""
    _compiled_layer.failed = True
    logger.warning("fused decode layers unavailable, eager layers instead: %s", str(error).splitlines()[0][:200])


_LAYER_IDS: dict[tuple[int, torch.device], list[Tensor]] = {}


def _layer_ids(n: int, device: torch.device) -> list[Tensor]:
    """[i] long for every layer, each its own allocation (a view's storage offset would be a traced size)."""
    key = (n, device)
    if key not in _LAYER_IDS:
        _LAYER_IDS[key] = [torch.tensor([i], device=device) for i in range(n)]
    return _LAYER_IDS[key]


def run_layers(model_layers, h: Tensor, cos: Tensor, sin: Tensor, ctx, start: int, stop: int) -> Tensor:
    """Layers [start, stop) of a one-token step over ``ctx.cache`` (a StaticKVCache) with the fused
    layer function: compiled on CUDA, its plain ops elsewhere (the CPU tests). h: [B, 1, hidden] ->
    [B, 1, hidden] (the residual stream after layer stop - 1). Keeps the carry layer's input."""
    cache: StaticKVCache = ctx.cache
    fed = ctx.attention_mask[:, 0]
    layer_fn = _compiled_layer if h.is_cuda else decode_layer
    delta = torch.zeros_like(h)  # one compiled function for every layer: always a tensor
    ids = _layer_ids(len(model_layers), h.device)
    for i in range(start, stop):
        layer = model_layers[i]
        if i == ctx.carry_layer:
            cache.keep_hidden(h + delta, ctx.attention_mask)
        a = layer.self_attn
        wqkv, wgu = fused_weights(layer)
        w = (layer.input_layernorm.weight, wqkv, a.q_norm.weight, a.k_norm.weight, a.o_proj.weight,
             layer.post_attention_layernorm.weight, wgu, layer.mlp.down_proj.weight)  # fmt: skip
        full = cache.keys[i].shape[2]
        s = min(-(-(cache.context[i] + cache.used + 1) // ALIGN) * ALIGN, full) if cache.trim else full
        kb, vb, ok = cache.keys[i][:, :, :s], cache.values[i][:, :, :s], cache.valid[i][:, :s]
        h, delta = layer_fn(h, delta, w, cos, sin, kb, vb, ok, cache.base, cache.cursor, ids[i], fed,
                            layer.input_layernorm.eps, a.num_heads, a.num_kv_heads)  # fmt: skip
    return h + delta

