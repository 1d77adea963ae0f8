"""MemorySparseAttention: Qwen3 GQA attention plus, in router layers, routing over compressed memory."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from msa import functional as MF
from msa.config import ModelConfig
from msa.model.context import EncodeContext, QueryContext, RouteInputs, TrainContext
from msa.model.layers import RMSNorm, apply_rope, attend, concat_weights, fused_inference_here, fused_qk_norm_rope
from msa.model.memory import LayerMemory, Routing
from msa.model.static_cache import StaticKVCache
from msa.model.train_attention import train_attention


def attend_grouped(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """GQA attention without repeating K/V: each KV head's query group is folded into the query axis.

    q: [B, t, Hq, D]; k, v: [B, Hkv, S, D]; mask: [B, t, S] bool (every row needs one True) -> [B, t, Hq, D].
    """
    b, t, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    qg = q.view(b, t, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * t, d)  # rows (group, token)
    m = mask[:, None] if t == 1 else mask[:, None, None].expand(b, 1, g, t, s).reshape(b, 1, g * t, s)  # [B, 1, *, S]
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m)  # [B, Hkv, g*t, D]
    return out.view(b, hkv, g, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, hq, d)


def _slots(group: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """For elements sorted by ``group`` (values 0..n-1): each one's slot within its group, and the
    group sizes [n] (to scatter a flat list into padded [n, max size] rows)."""
    counts = torch.bincount(group, minlength=n)
    return torch.arange(len(group), device=group.device) - (torch.cumsum(counts, 0) - counts)[group], counts


class MemorySparseAttention(nn.Module):
    """Attention of one layer. Parameter names follow the HF Qwen3 / official MSA checkpoints.

    Router layers own ``router_q_proj.0`` ([Hq*D, hidden]) and ``router_k_proj.0`` ([Hkv*D, hidden])
    when ``decouple_router`` is set; both read the same normed hidden state as q/k/v, without
    q/k-norm or RoPE.
    """

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.num_heads = c.num_attention_heads
        self.num_kv_heads = c.num_key_value_heads
        self.head_dim = c.head_dim
        self.msa = c.msa
        self.is_router = layer_idx in c.router_layers
        self.decoupled = c.msa.decouple_router
        hq, hkv, d = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.head_dim
        self.q_proj = nn.Linear(c.hidden_size, hq, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, hkv, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, hkv, bias=c.attention_bias)
        self.o_proj = nn.Linear(hq, c.hidden_size, bias=c.attention_bias)
        self.q_norm = RMSNorm(d, c.rms_norm_eps)
        self.k_norm = RMSNorm(d, c.rms_norm_eps)
        if self.is_router and self.decoupled:
            self.router_q_proj = nn.Sequential(nn.Linear(c.hidden_size, hq, bias=False))
            self.router_k_proj = nn.Sequential(nn.Linear(c.hidden_size, hkv, bias=False))

    # -- projections -------------------------------------------------------------------------
    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, T, hidden] -> q [B, T, Hq, D], k, v [B, T, Hkv, D] (q, k normed and rotated)."""
        b, t, _ = x.shape
        if fused_inference_here(x) and self.q_proj.bias is None:  # inference on CUDA: one matmul, one fused pass
            w = concat_weights(self, (self.q_proj, self.k_proj, self.v_proj))
            q, k, v = F.linear(x, w).view(b, t, -1, self.head_dim).split([self.num_heads, self.num_kv_heads, self.num_kv_heads], 2)
            q, k = fused_qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, cos, sin, self.q_norm.eps)
            return q, k, v
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _router_q(self, x: Tensor, q: Tensor) -> Tensor:
        """Router queries [..., Hq, D] for hidden states x [..., hidden] (attention q when coupled)."""
        if not self.decoupled:
            return q
        return self.router_q_proj(x).unflatten(-1, (self.num_heads, self.head_dim))

    def _router_k(self, x: Tensor, k: Tensor) -> Tensor:
        if not self.decoupled:
            return k
        return self.router_k_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim))

    # -- modes --------------------------------------------------------------------------------
    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx: TrainContext | EncodeContext | QueryContext) -> Tensor:
        """x: [B, T, hidden] normed hidden states -> [B, T, hidden]."""
        q, k, v = self._qkv(x, cos, sin)
        if isinstance(ctx, TrainContext):
            out = self._train(x, q, k, v, ctx)
        elif isinstance(ctx, EncodeContext):
            out = self._encode(x, q, k, v, ctx)
        else:
            out = self._query(x, q, k, v, ctx)
        return self.o_proj(out.flatten(-2))

    def _encode(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: EncodeContext) -> Tensor:
        """Documents attend causally within themselves; router layers pool K, V and router K."""
        if self.is_router:
            flat = lambda t: t.flatten(0, 1).index_select(0, ctx.tokens)  # noqa: E731  [T, Hkv, D]
            kr = self._router_k(x, k)
            pooled = [MF.chunk_mean_pool(flat(t), ctx.lengths, self.msa.chunk_size) for t in (kr, k, v)]
            ctx.out[self.layer_idx] = LayerMemory(*(p for p, _ in pooled))
            ctx.chunk_doc = pooled[0][1]
        if ctx.packed is not None:
            return train_attention(q, k, v, ctx.packed)
        return attend(q, k, v, None, causal=True)

    def _train(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: TrainContext) -> Tensor:
        """Packed samples: local masks everywhere; router layers add the selected documents' chunks."""
        if not self.is_router:
            return train_attention(q, k, v, ctx.layout)
        if ctx.router is not None:
            return self._train_static(x, q, k, v, ctx)
        b, l = x.shape[:2]
        flat = lambda t: t.flatten(0, 1).index_select(0, ctx.doc_tokens)  # noqa: E731
        kr_bar, chunk_doc = MF.chunk_mean_pool(flat(self._router_k(x, k)), ctx.doc_lengths, self.msa.chunk_size)
        k_bar, _ = MF.chunk_mean_pool(flat(k), ctx.doc_lengths, self.msa.chunk_size)
        v_bar, _ = MF.chunk_mean_pool(flat(v), ctx.doc_lengths, self.msa.chunk_size)
        # Sequence index of every chunk's first token: chunks are visible to stream tokens after it.
        token_chunk, _ = MF.chunk_layout(ctx.doc_lengths, self.msa.chunk_size)
        chunk_first = torch.full((len(chunk_doc),), l, dtype=torch.long, device=x.device)
        chunk_first.scatter_reduce_(0, token_chunk, ctx.doc_tokens % l, reduce="amin")
        chunk_sample = ctx.doc_sample[chunk_doc]
        local_chunk_doc = ctx.doc_local[chunk_doc]
        # All samples at once: each sample's routing tokens against its own chunks, padded per sample
        # (chunks are in sample order). Two host reads per layer instead of several per sample.
        rows, cols = ctx.query_mask.nonzero(as_tuple=True)
        q_slot, q_counts = _slots(rows, b)
        c_slot, c_counts = _slots(chunk_sample, b)
        tq, cm = (int(v) for v in torch.stack([q_counts.max(), c_counts.max()]).tolist())
        qr_tok = self._router_q(x[rows, cols], q[rows, cols])  # only routing tokens need router queries
        qr = qr_tok.new_zeros(b, tq, *qr_tok.shape[1:])
        qr[rows, q_slot] = qr_tok
        q_mask = torch.zeros(b, tq, dtype=torch.bool, device=x.device)
        q_mask[rows, q_slot] = True
        kr = kr_bar.new_zeros(b, cm, *kr_bar.shape[1:])
        kr[chunk_sample, c_slot] = kr_bar
        kr_doc = torch.full((b, cm), -1, dtype=torch.long, device=x.device)
        kr_doc[chunk_sample, c_slot] = local_chunk_doc
        picked = self._route(qr, q_mask, kr, kr_doc, ctx)
        keep = picked[chunk_sample, local_chunk_doc]
        # Gather kept chunks into per-sample slots [B, Cmax] appended after the L token keys.
        kept = keep.nonzero().squeeze(-1)
        ks = chunk_sample[kept]
        slot, counts = _slots(ks, b)
        cmax = int(counts.max()) if len(kept) else 0
        ck = k.new_zeros(b, cmax, self.num_kv_heads, self.head_dim)
        cv = v.new_zeros(b, cmax, self.num_kv_heads, self.head_dim)
        ck[ks, slot] = k_bar[kept].to(k.dtype)
        cv[ks, slot] = v_bar[kept].to(v.dtype)
        first = torch.full((b, cmax), l, dtype=torch.long, device=x.device)
        first[ks, slot] = chunk_first[kept]
        return train_attention(q, torch.cat([k, ck], 1), torch.cat([v, cv], 1), ctx.layout, first)

    def _route(self, qr: Tensor, q_mask: Tensor, kr: Tensor, kr_doc: Tensor, ctx: TrainContext) -> Tensor:
        """Score each sample's documents (router queries qr [B, Tq, Hq, D] over its chunks' router keys
        kr [B, C, Hkv, D] owned by kr_doc [B, C], -1 = padding), record scores and selection in ctx;
        -> [B, max_docs] bool selected documents."""
        b = qr.shape[0]
        with torch.autocast(qr.device.type, enabled=False):  # scores in float32 under bf16 autocast too
            scores = MF.batched_doc_scores(
                qr, q_mask, kr, kr_doc, ctx.max_docs, cosine=self.msa.train_cosine(),
                head_reduce=self.msa.head_reduce_method, query_reduce=self.msa.query_reduce_method,
                chunk_reduce=self.msa.chunk_reduce_method,
            )  # fmt: skip
        if self.msa.train_cosine() and not self.decoupled:
            scores = scores / math.sqrt(self.head_dim)  # the official coupled path scales cosines by 1/sqrt(D)
        top = MF.batched_select_docs(scores.detach(), ctx.top_k)
        docs = torch.full((b, ctx.top_k), -1, dtype=torch.long, device=qr.device)
        docs[:, : top.shape[1]] = top
        picked = torch.zeros(b, ctx.max_docs + 1, dtype=torch.bool, device=qr.device)
        picked.scatter_(1, top.masked_fill(top < 0, ctx.max_docs), True)
        ctx.scores[self.layer_idx] = scores
        ctx.route_inputs[self.layer_idx] = RouteInputs(qr, q_mask, kr, kr_doc)
        # Empty slots (-1) read a -inf column: also right for a batch without any memory document.
        padded = F.pad(scores, (0, 1), value=float("-inf"))
        ctx.selected[self.layer_idx] = Routing(docs, padded.gather(1, docs.masked_fill(docs < 0, ctx.max_docs)))
        return picked[:, : ctx.max_docs]

    def _train_static(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: TrainContext) -> Tensor:
        """The fast path of ``_train``: the same function over the step's static RouterLayout (every
        chunk in a fixed slot, unselected ones masked), so no host reads and fixed shapes per step."""
        r = ctx.router
        assert r is not None
        pick = lambda t: t.flatten(0, 1)[r.query_index]  # noqa: E731  [B, Tq, H, D]
        qr = self._router_q(pick(x), pick(q))
        kr, k_bar, v_bar = (r.pool(t) for t in (self._router_k(x, k), k, v))
        picked = self._route(qr, r.query_valid, kr, r.slot_doc, ctx)
        keep = picked.gather(1, r.slot_doc.clamp(min=0)) & (r.slot_doc >= 0)  # [B, Cs]
        return train_attention(q, torch.cat([k, k_bar], 1), torch.cat([v, v_bar], 1), ctx.layout, r.slot_first, keep)

    def _query(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, ctx: QueryContext) -> Tensor:
        """Prefill (route + assemble [prefix | chunks | query]) or decode against the cached context."""
        b, t = x.shape[:2]
        i = self.layer_idx
        cache = ctx.cache
        if isinstance(cache, StaticKVCache):
            return attend_grouped(q, *cache.write(i, k, v, ctx.attention_mask))
        if cache.keys[i] is None:
            parts_k, parts_v, parts_valid = [], [], []
            if ctx.prefix is not None:
                pk = ctx.prefix.keys[i].to(k.dtype).transpose(0, 1)  # [P, Hkv, D]
                pv = ctx.prefix.values[i].to(v.dtype).transpose(0, 1)
                parts_k.append(pk.expand(b, -1, -1, -1))
                parts_v.append(pv.expand(b, -1, -1, -1))
                parts_valid.append(torch.ones(b, pk.shape[0], dtype=torch.bool, device=x.device))
            if self.is_router and ctx.memory is not None and ctx.routing:
                qr = self._router_q(x, q)  # [B, T, Hq, D]
                routing = ctx.memory.route(i, qr, ctx.query_mask, ctx.top_k)
                ctx.routings[i] = routing
                ck, cv, cvalid = ctx.memory.fetch(i, routing.docs)
                parts_k.append(ck.to(k.dtype))
                parts_v.append(cv.to(v.dtype))
                parts_valid.append(cvalid)
            empty = k.new_zeros(b, 0, self.num_kv_heads, self.head_dim)
            cache.keys[i] = torch.cat(parts_k, 1) if parts_k else empty
            cache.values[i] = torch.cat(parts_v, 1) if parts_v else empty
            cache.valid[i] = torch.cat(parts_valid, 1) if parts_valid else torch.zeros(b, 0, dtype=torch.bool, device=x.device)
        old_valid = cache.valid[i]
        s_old = old_valid.shape[1]
        new_valid = ctx.attention_mask.bool()
        mask = torch.cat([old_valid[:, None, :].expand(b, t, s_old), ctx.self_mask], dim=-1)
        keys = torch.cat([cache.keys[i], k], 1)
        values = torch.cat([cache.values[i], v], 1)
        cache.keys[i], cache.values[i] = keys, values
        cache.valid[i] = torch.cat([old_valid, new_valid], 1)
        return attend(q, keys, values, mask)
