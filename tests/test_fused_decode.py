"""The fused one-token decode layers (``msa.model.fused_decode``) equal the reference layers.

On CUDA they run compiled (the GPU test in tests/test_static_decode.py); here their plain ops run on
the CPU, forced on, so the logic (concatenated projections, the cache write, the mask, attention over
the whole buffer, the deferred residual add, the carry layer's input) is checked against the eager
static-cache path and the reference ``KVCache`` path.
"""

import pytest
import torch
import torch.nn.functional as F

from msa.model import fused_decode
from msa.model.fused_decode import fused_weights, weights_stamp
from msa.model.layers import ConcatWeights
from msa.model.static_cache import StaticKVCache
from tests.conftest import build_tiny_model
from tests.test_static_decode import _eager_and_static, _prefill


@pytest.fixture
def forced(monkeypatch):
    """The fused layers on the CPU (their plain ops), counting the steps that took them."""
    steps = []

    def applies(layers, h, ctx):
        ok = isinstance(ctx.cache, StaticKVCache) and h.shape[1] == 1
        steps.append(ok)
        return ok

    monkeypatch.setattr(fused_decode, "applies", applies)
    return steps


def test_the_cpu_takes_the_reference_layers():
    model = build_tiny_model()
    out, tokens = _prefill(model)
    cache = StaticKVCache.allocate(3, [k.shape[1] - tokens for k in out.cache.keys], tokens + 4, 2, 16, torch.float32,
                                   torch.device("cpu"))  # fmt: skip

    class Ctx:
        pass

    ctx = Ctx()
    ctx.cache = cache
    assert not fused_decode.applies(model.model.layers, torch.zeros(3, 1, 64), ctx)


def test_the_fused_layers_need_aligned_buffers(monkeypatch):
    """Where fused inference is on (CUDA), the layers need every buffer a multiple of ALIGN slots (the
    compiled attention's mask); the static decoder allocates so."""
    model = build_tiny_model()
    monkeypatch.setattr(fused_decode, "fused_inference_here", lambda x: True)

    class Ctx:
        pass

    ctx = Ctx()
    for context, aligned in (([5, 13, 5, 13], False), ([8, 16, 8, 8], True)):
        ctx.cache = StaticKVCache.allocate(1, context, 16, 2, 16, torch.float32, torch.device("cpu"))
        assert fused_decode.applies(model.model.layers, torch.zeros(1, 1, 64), ctx) == aligned


@pytest.mark.parametrize("pad_rows", [0, 2])
def test_fused_layers_equal_the_reference_over_64_steps(forced, pad_rows):
    model = build_tiny_model()
    out, tokens = _prefill(model)
    (f_toks, f_logits), (e_toks, e_logits) = _eager_and_static(model, out, tokens, 64, pad_rows=pad_rows)
    assert sum(forced) >= 60  # the one-token steps went through the fused layers
    assert torch.equal(f_toks, e_toks)
    for a, b in zip(f_logits, e_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_layers_keep_the_carry_layer_input(monkeypatch):
    """The input of the first router layer per fed token (what Memory Interleave reuses) is the same."""
    from msa.engine.static_decode import StaticDecoder

    model = build_tiny_model()
    hidden = []
    for force in (False, True):
        if force:
            monkeypatch.setattr(fused_decode, "applies", lambda layers, h, ctx: isinstance(ctx.cache, StaticKVCache) and h.shape[1] == 1)
        out, tokens = _prefill(model)
        with StaticDecoder(model, graphs=False).session(out.cache, tokens, 16) as st:
            tok = out.logits.argmax(-1)
            for _ in range(6):
                _, tok = st.step(tok, torch.tensor([True, False, True]))
            hidden.append((st.cache.hidden.clone(), st.cache.hidden_valid.clone()))
    assert torch.equal(hidden[0][1], hidden[1][1])
    torch.testing.assert_close(hidden[0][0], hidden[1][0], atol=1e-6, rtol=1e-6)


def test_concatenated_projections_equal_separate_ones_and_follow_the_parameters():
    model = build_tiny_model()
    layer = model.model.layers[1]
    a, m = layer.self_attn, layer.mlp
    x = torch.randn(2, 3, model.config.hidden_size)
    wqkv, wgu = fused_weights(layer)
    sizes = [a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features]
    q, k, v = F.linear(x, wqkv).split(sizes, -1)
    torch.testing.assert_close(q, a.q_proj(x))
    torch.testing.assert_close(k, a.k_proj(x))
    torch.testing.assert_close(v, a.v_proj(x))
    gate, up = F.linear(x, wgu).chunk(2, -1)
    torch.testing.assert_close(gate, m.gate_proj(x))
    torch.testing.assert_close(up, m.up_proj(x))
    stamp = weights_stamp(model.model.layers)
    assert fused_weights(layer)[0] is wqkv  # built once
    with torch.no_grad():  # changed in place: copied into the same buffer (captured graphs stay valid)
        a.k_proj.weight.mul_(2.0)
    again, _ = fused_weights(layer)
    assert again.data_ptr() == wqkv.data_ptr() and weights_stamp(model.model.layers) == stamp
    torch.testing.assert_close(F.linear(x, again).split(sizes, -1)[1], a.k_proj(x))
    model.to(torch.float64)  # replaced: new buffers, a new stamp
    new, _ = fused_weights(layer)
    assert new.dtype == torch.float64 and weights_stamp(model.model.layers) != stamp
    assert isinstance(a.__dict__["_concat_weights"], ConcatWeights)
    assert not any("concat" in name for name in model.state_dict())


def test_fused_inference_pieces_equal_the_eager_ops(monkeypatch):
    """The prefill's and encode's fused inference (one matmul for q/k/v and for gate/up, q/k norms with
    RoPE in one function), forced on the CPU with the plain ops of every compiled function."""
    from msa.model import attention, layers

    model = build_tiny_model()
    ref, tokens = _prefill(model)
    ref_step = model.decode(torch.tensor([[5], [6], [7]]), ref.cache)
    ref_mem = model.encode([[4, 5, 6, 7, 8, 9, 10, 11, 12]])
    for f in (layers._fused_rms_norm, layers._fused_silu_mul, layers._fused_rope, layers.fused_qk_norm_rope,
              layers._fused_rope_table, fused_decode._compiled_layer):  # fmt: skip
        monkeypatch.setattr(f, "failed", True)  # their plain ops
    monkeypatch.setattr(layers, "_fused_here", lambda x: True)
    monkeypatch.setattr(attention, "fused_inference_here", lambda x: True)
    out, _ = _prefill(model)
    assert "_concat_weights" in model.model.layers[0].self_attn.__dict__  # the fused pieces ran
    for layer in ref.routings:
        assert torch.equal(ref.routings[layer].docs, out.routings[layer].docs)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode(torch.tensor([[5], [6], [7]]), out.cache), ref_step, atol=1e-5, rtol=1e-5)
    mem = model.encode([[4, 5, 6, 7, 8, 9, 10, 11, 12]])
    for layer in ref_mem.layers:
        torch.testing.assert_close(mem.layers[layer].keys, ref_mem.layers[layer].keys, atol=1e-5, rtol=1e-5)
