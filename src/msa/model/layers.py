"""Qwen3 building blocks in plain PyTorch: RMSNorm, SwiGLU MLP, rotary embedding, masked attention.

Fused inference: without gradients on a CUDA device, the element-wise pieces (every RMSNorm, RoPE,
SwiGLU's gate) run as ``torch.compile``d kernels, one kernel each instead of 3-8, linears reading
the same input run as one matmul (``concat_weights``: q/k/v, gate/up), and attention reads grouped
K/V without repeating them (``enable_gqa``). A decode step of a 36-layer model is
thousands of tiny kernels, so their number, not their bytes, sets its time. Same formulas, fused:
results differ from the eager ops only by floating-point rounding. Training (gradients on) and the
CPU always take the eager ops. ``set_fused_inference(False)`` (or ``MSA_FUSED_INFERENCE=0``) turns
it off; a function that fails to compile falls back to its eager ops, with one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_FUSED = [os.environ.get("MSA_FUSED_INFERENCE", "1") != "0"]


def set_fused_inference(on: bool) -> bool:
    """Turn fused inference on or off (module docstring); returns the previous setting."""
    before, _FUSED[0] = _FUSED[0], bool(on)
    return before


def fused_inference_enabled() -> bool:
    """The setting (``set_fused_inference``, ``MSA_FUSED_INFERENCE``)."""
    return _FUSED[0]


def fused_inference_here(x: Tensor) -> bool:
    """Whether work on ``x`` takes the fused kernels: fused inference on, CUDA, no gradients, not
    already inside a compiled function."""
    return _FUSED[0] and x.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


_fused_here = fused_inference_here


class _Fused:
    """``fn`` compiled on first use (dynamic shapes); its eager ops if compiling fails (``failed``)."""

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn, self.compiled, self.failed = fn, None, False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=True)
            return self.compiled(*args)
        except Exception as e:  # noqa: BLE001  (no compiler, an unsupported op: the eager ops instead)
            self.failed = True
            logger.warning("fused %s unavailable, eager ops instead: %s", self.fn.__name__, str(e).splitlines()[0][:200])
            return self.fn(*args)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + _rotate_half(x) * sin


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor,
                 eps: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Attention's q-norm and k-norm, then RoPE: q [..., T, Hq, D], k [..., T, Hkv, D]; cos/sin [..., T, D]."""
    return _rope(_rms_norm(q, q_weight, eps), cos, sin), _rope(_rms_norm(k, k_weight, eps), cos, sin)


_fused_rms_norm, _fused_silu_mul, _fused_rope = _Fused(_rms_norm), _Fused(_silu_mul), _Fused(_rope)
fused_qk_norm_rope = _Fused(qk_norm_rope)


class ConcatWeights:
    """The weights of linears reading the same input, concatenated ([sum of outputs, input]): one
    matmul instead of several in fused inference. A copy, kept in step with the parameters: one
    changed in place (its ``_version``) is copied in again into the same buffer (captured CUDA graphs
    stay valid); one replaced by a new tensor gives a new buffer (``data_ptr`` changes)."""

    def __init__(self, linears):
        self.params = tuple(lin.weight for lin in linears)
        self.tensor = torch.cat(self.params)
        self.key = self._key()

    def _key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.params)

    def get(self) -> Tensor:
        """The concatenation, refreshed if a parameter changed since it was built."""
        key = self._key()
        if key != self.key:
            new = torch.cat(self.params)
            same = new.shape == self.tensor.shape and new.dtype == self.tensor.dtype and new.device == self.tensor.device
            if same:
                self.tensor.copy_(new)
            else:
                self.tensor = new
            self.key = key
        return self.tensor


def concat_weights(owner: nn.Module, linears) -> Tensor:
    """``owner``'s concatenated weights of ``linears`` (built on first use, kept as a plain attribute:
    not a parameter, not in the state dict; ``ConcatWeights``)."""
    cw = owner.__dict__.get("_concat_weights")
    if cw is None:
        cw = ConcatWeights(linears)
        owner.__dict__["_concat_weights"] = cw
    return cw.get()


class RMSNorm(nn.Module):
    """y = w * x / rms(x), computed in float32 and cast back (Qwen3's numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return (_fused_rms_norm if _fused_here(x) else _rms_norm)(x, self.weight, self.eps)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if _fused_here(x):  # one matmul for gate and up
            gate, up = F.linear(x, concat_weights(self, (self.gate_proj, self.up_proj))).chunk(2, dim=-1)
            return self.down_proj(_fused_silu_mul(gate, up))
        return self.down_proj(_silu_mul(self.gate_proj(x), self.up_proj(x)))


class RotaryEmbedding(nn.Module):
    """Default (unscaled) RoPE: cos/sin tables for arbitrary position ids.

    The inverse frequencies are recomputed in float32 on every call rather than kept in a buffer, so
    casting the model to bfloat16 cannot degrade them.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """position_ids: [...] long -> cos, sin: [..., D] in ``dtype``."""
        table = _fused_rope_table if _fused_here(position_ids) else _rope_table
        return table(position_ids, self.head_dim, self.theta, dtype)


def _rope_table(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


_fused_rope_table = _Fused(_rope_table)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [..., T, H, D]; cos/sin: [..., T, D] (broadcast over heads)."""
    return (_fused_rope if _fused_here(x) else _rope)(x, cos, sin)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
    """Softmax attention with GQA.

    Args:
        q: [B, T, Hq, D]; k, v: [B, S, Hkv, D].
        mask: [B, T, S] bool, True = may attend (every row needs one True), or None.
        causal: plain causal attention (T == S); ``mask`` must be None.

    Returns:
        [B, T, Hq, D].
    """
    group = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T|S, D]
    if group > 1 and _fused_here(q):  # grouped K/V read in place, not repeated
        attn_mask = None if mask is None else mask[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, enable_gqa=True).transpose(1, 2)
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    attn_mask = None if mask is None else mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    return out.transpose(1, 2)
