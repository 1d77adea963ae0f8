"""Router initialisations applied by the trainer (msa.model keeps its own default init).

``mirror``: every router-Q head starts as a copy of its GQA partner router-K head
(W_QR[h] = W_KR[h // (Hq / Hkv)]), so the initial routing score is the cosine of the SAME projection of
query and document states: a query token that also occurs in a document already scores that document
higher. From a random init the max-over-tokens routing otherwise starts from scores no query token
can discriminate, and the aux loss has to find that symmetry by itself (slow on small models).
"""

from __future__ import annotations

import torch

from msa.model.modeling import MSAForCausalLM

__all__ = ["ROUTER_INITS", "apply_router_init"]


@torch.no_grad()
def mirror_router_init(model: MSAForCausalLM) -> None:
    cfg = model.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    d = cfg.head_dim
    for layer in model.model.layers:
        attn = layer.self_attn
        if not hasattr(attn, "router_q_proj"):
            continue
        wk = attn.router_k_proj[0].weight  # [Hkv*D, hidden]
        wq = attn.router_q_proj[0].weight  # [Hq*D, hidden]
        wq.copy_(wk.view(cfg.num_key_value_heads, 1, d, -1).expand(-1, group, -1, -1).reshape_as(wq))


ROUTER_INITS = {"default": lambda model: None, "mirror": mirror_router_init}


def apply_router_init(model: MSAForCausalLM, name: str) -> None:
    try:
        fn = ROUTER_INITS[name]
    except KeyError:
        raise ValueError(f"unknown router_init {name!r}; expected one of {sorted(ROUTER_INITS)}") from None
    fn(model)
