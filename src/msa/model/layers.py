"""Qwen3 building blocks in plain PyTorch: RMSNorm, SwiGLU MLP, rotary embedding, masked attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = w * x / rms(x), computed in float32 and cast back (Qwen3's numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / self.head_dim
        inv_freq = 1.0 / (self.theta**exponent)
        freqs = position_ids.float()[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [..., T, H, D]; cos/sin: [..., T, D] (broadcast over heads)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + _rotate_half(x) * sin


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
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    attn_mask = None if mask is None else mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    return out.transpose(1, 2)
