"""MSAForCausalLM: a Qwen3-family decoder whose router layers attend to routed compressed memory.

Three forward modes share one stack of layers:
  train   (``forward_train``)  packed ``[template | documents | query + response]`` samples;
  encode  (``encode``)         documents only -> CompressedMemory (and ``encode_prefix`` for the template);
  query   (``prefill``/``decode``) routing against a MemoryAccess, then cached decoding.
``forward`` is the plain causal LM (no memory), numerically the HF Qwen3 model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from msa.config import ModelConfig
from msa.model.attention import MemorySparseAttention
from msa.model.context import EncodeContext, KVCache, PackedBatch, QueryContext, TrainContext
from msa.model import fused_decode
from msa.model.layers import MLP, RMSNorm, RotaryEmbedding
from msa.model.static_cache import StaticKVCache
from msa.model.memory import (
    CompressedMemory,
    DenseMemoryAccess,
    MemoryAccess,
    PrefixCache,
    Routing,
    RoutingOptions,
)
from msa import functional as MF

if TYPE_CHECKING:
    from msa.model.carry import Carry


ENCODE_PAD = 32  # encode pads documents to a multiple of this many tokens (see ``encode``)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MemorySparseAttention(config, layer_idx)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, ctx) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, ctx)
        return h + self.mlp(self.post_attention_layernorm(h))


class MSAModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)

    def run(self, input_ids: Tensor, position_ids: Tensor, ctx, num_layers: int | None = None) -> Tensor:
        """input_ids, position_ids: [B, T] -> hidden states [B, T, hidden] after ``num_layers`` layers
        (all layers, then the final norm, when None)."""
        return self.run_layers(self.embed_tokens(input_ids), position_ids, ctx, 0, num_layers)

    def run_layers(self, h: Tensor, position_ids: Tensor, ctx, start: int, stop: int | None = None) -> Tensor:
        """Layers [start, stop) on hidden states h [B, T, hidden] (then the final norm when stop is None).
        A query context with ``carry_layer`` set hands that layer's input to its cache (``keep_hidden``)."""
        cos, sin = self.rotary_emb(position_ids, h.dtype)
        carry = ctx.carry_layer if isinstance(ctx, QueryContext) else None
        end = stop if stop is not None else len(self.layers)
        if isinstance(ctx, QueryContext) and fused_decode.applies(self.layers, h, ctx):  # a one-token static step on CUDA
            h = fused_decode.run_layers(self.layers, h, cos, sin, ctx, start, end)
            return self.norm(h) if stop is None else h
        for i in range(start, end):
            if i == carry:
                ctx.cache.keep_hidden(h, ctx.attention_mask)
            h = self.layers[i](h, cos, sin, ctx)
        return self.norm(h) if stop is None else h


@dataclass
class TrainOutput:
    """logits: [B, L, V] (or [M, V] at ``logits_index``); doc_scores: router layer -> [B, Nmax] float32
    (-inf where the sample has no such document); selected: router layer -> Routing (0-based docs);
    route_inputs: router layer -> what its scores came from (``msa.model.context.RouteInputs``)."""

    logits: Tensor
    doc_scores: dict[int, Tensor]
    selected: dict[int, Routing]
    route_inputs: dict = field(default_factory=dict)


@dataclass
class PrefillOutput:
    """logits: [B, T, V] (or [B, V] with ``last_only``); cache for decoding; routings per router layer."""

    logits: Tensor
    cache: KVCache
    routings: dict[int, Routing]


class MSAForCausalLM(nn.Module):
    """The MSA model. See the module docstring for the modes; weights follow the official layout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = MSAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        method = config.msa.aux_loss_method
        if "INFONCE" in method:  # the official checkpoint's frozen top-level scalar; a buffer, not trained
            self.register_buffer("temperature", torch.tensor(float(config.msa.infonce_loss_temp)))
        elif method == "BCE":
            self.b = nn.Parameter(torch.tensor(-20.0))

    # -- construction ----------------------------------------------------------------------------
    def init_weights(self, seed: int = 0) -> "MSAForCausalLM":
        """Random init (normal, std = initializer_range; norms = 1), seeded, whatever the device."""
        g = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name in ("temperature", "b"):
                    continue
                else:
                    p.copy_(torch.randn(p.shape, generator=g, device="cpu") * std)
        return self

    @property
    def router_layers(self) -> tuple[int, ...]:
        return self.config.router_layers

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".router_q_proj." in n or ".router_k_proj." in n]

    # -- plain LM ----------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Plain causal LM without memory. input_ids: [B, T] -> logits [B, T, V]."""
        self._check_ids(input_ids)
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        ones = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)
        ctx = QueryContext(attention_mask=ones, query_mask=ones, cache=KVCache.empty(len(self.model.layers)), routing=False)
        return self.lm_head(self.model.run(input_ids, position_ids, ctx))

    # -- train mode --------------------------------------------------------------------------------
    def forward_train(self, batch: PackedBatch, logits_index: Tensor | None = None) -> TrainOutput:
        """Packed training forward (see PackedBatch). Selection is hard (top-k, no gradient); the router
        projections get gradient only through ``doc_scores`` (the aux loss), the rest through the logits.

        logits_index: optional [M] long flat indices into B*L where logits are needed (saves memory).
        """
        self._check_ids(batch.input_ids)
        ctx = TrainContext.from_batch(batch, self.config.msa.top_k)
        h = self.model.run(batch.input_ids, batch.position_ids, ctx)
        if logits_index is not None:
            h = h.flatten(0, 1).index_select(0, logits_index)
        return TrainOutput(self.lm_head(h), ctx.scores, ctx.selected, ctx.route_inputs)

    # -- encode mode -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, docs: list[Tensor] | list[list[int]], packed: bool = False) -> CompressedMemory:
        """Encode documents independently (causal within each, positions from 0).

        Args:
            docs: N token-id sequences (each non-empty).
            packed: one row of all documents back to back with a block-diagonal causal mask (no padding
                memory or work; FlexAttention on CUDA) instead of one padded row per document. Either
                gives the same memory; padded is the default (docs/decisions.md), so sort by length.

        Returns:
            CompressedMemory over the N documents for every router layer (model dtype, model device).
        """
        if len(docs) == 0:
            raise ValueError("encode() needs at least one document")
        seqs = [torch.as_tensor(d, dtype=torch.long) for d in docs]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        if int(lengths.min()) == 0:
            raise ValueError("cannot encode an empty document")
        if not self.router_layers:
            raise ValueError("this model has no router layers: nothing to encode")
        for s in seqs:
            self._check_ids(s)
        device = self.device
        if packed:
            from msa.model.train_attention import TrainLayout

            t = int(lengths.sum())
            ids = torch.cat(seqs)[None].to(device)
            doc = torch.repeat_interleave(torch.arange(len(seqs)), lengths)[None].to(device)
            positions = MF.doc_position_ids(lengths)[None].to(device)
            layout = TrainLayout(doc=doc, stream=torch.zeros_like(doc, dtype=torch.bool), valid=torch.ones_like(doc, dtype=torch.bool))
            ctx = EncodeContext(lengths=lengths.to(device), tokens=torch.arange(t, device=device), packed=layout)
            self.model.run(ids, positions, ctx, num_layers=max(self.router_layers) + 1)
            return CompressedMemory(layers=ctx.out, chunk_doc=ctx.chunk_doc.cpu(), doc_lengths=lengths)
        # Documents are grouped by padded length (a multiple of ENCODE_PAD tokens): a document's rows
        # then have the same shapes whatever else is in the batch, so on the CPU its memory is bitwise
        # the same alone, in any batch and in any order, and padding stays under ENCODE_PAD tokens.
        pad = [-(-int(n) // ENCODE_PAD) * ENCODE_PAD for n in lengths]
        order = sorted(range(len(seqs)), key=lambda i: (pad[i], i))
        parts, start = [], 0
        while start < len(order):
            stop = start
            while stop < len(order) and pad[order[stop]] == pad[order[start]]:
                stop += 1
            parts.append(self._encode_padded([seqs[i] for i in order[start:stop]], pad[order[start]]))
            start = stop
        memory = CompressedMemory.cat(parts) if len(parts) > 1 else parts[0]
        if order != list(range(len(seqs))):
            memory = memory.select(torch.tensor(order).argsort())
        return memory

    def _encode_padded(self, seqs: list[Tensor], width: int) -> CompressedMemory:
        """Encode documents as rows of ``width`` tokens (right padding; causal, so pads change nothing)."""
        device = self.device
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
        real = torch.arange(width)[None, :] < lengths[:, None]
        ctx = EncodeContext(lengths=lengths.to(device), tokens=real.flatten().nonzero().squeeze(-1).to(device))
        positions = torch.arange(width, device=device).expand(len(seqs), width)
        self.model.run(ids.to(device), positions, ctx, num_layers=max(self.router_layers) + 1)
        return CompressedMemory(layers=ctx.out, chunk_doc=ctx.chunk_doc.cpu(), doc_lengths=lengths)

    @torch.no_grad()
    def encode_prefix(self, token_ids: Tensor | list[int]) -> PrefixCache:
        """K/V of the template prefix at positions 0..P-1 in every layer ([Hkv, P, D] each)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)[None]
        self._check_ids(ids)
        p = ids.shape[1]
        ones = torch.ones(1, p, dtype=torch.bool, device=self.device)
        cache = KVCache.empty(len(self.model.layers))
        ctx = QueryContext(attention_mask=ones, query_mask=ones, cache=cache, routing=False)
        self.model.run(ids, torch.arange(p, device=self.device)[None], ctx)
        return PrefixCache(
            token_ids=ids[0].cpu(),
            keys=[k[0].transpose(0, 1).contiguous() for k in cache.keys],  # type: ignore[union-attr]
            values=[v[0].transpose(0, 1).contiguous() for v in cache.values],  # type: ignore[union-attr]
        )

    # -- query mode --------------------------------------------------------------------------------
    def routing_options(self) -> RoutingOptions:
        m = self.config.msa
        cosine = m.inference_cosine()
        return RoutingOptions(
            cosine=cosine,
            head_reduce=m.head_reduce_method,
            query_reduce=m.query_reduce_method,
            chunk_reduce=m.chunk_reduce_method,
            coupled_scale=1.0 / math.sqrt(self.config.head_dim) if (cosine and not m.decouple_router) else 1.0,
        )

    def memory_access(self, memory: CompressedMemory, live: Tensor | None = None) -> DenseMemoryAccess:
        """The reference MemoryAccess over a resident memory, with this model's routing options."""
        return DenseMemoryAccess(memory, self.routing_options(), live)

    @torch.no_grad()
    def prefill(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
        memory: MemoryAccess | CompressedMemory | None = None,
        prefix: PrefixCache | None = None,
        position_offset: int | None = None,
        last_only: bool = False,
        top_k: int | None = None,
        keep_carry: bool = False,
    ) -> PrefillOutput:
        """Route and run the query tokens over ``[prefix | selected chunks | query]`` per layer.

        Args:
            input_ids: [B, T] left-padded query tokens.
            attention_mask: [B, T] bool real tokens (default all).
            query_mask: [B, T] bool routing-query tokens (doc_ids == 0; default = attention_mask).
            memory: CompressedMemory (wrapped in the reference access) or any MemoryAccess; None = no memory.
            prefix: template prefix K/V (or None).
            position_offset: position of the first real token (default msa_config query offset).
            last_only: return logits of the last position only ([B, V]).
            top_k: documents each router layer selects (default ``msa.top_k``).
            keep_carry: the cache keeps what a next Memory Interleave round reuses (``msa.model.carry``).
        """
        self._check_ids(input_ids)
        b, t = input_ids.shape
        dev = self.device
        input_ids = input_ids.to(dev)
        attention_mask = (torch.ones(b, t, dtype=torch.bool) if attention_mask is None else attention_mask).to(dev).bool()
        query_mask = (attention_mask if query_mask is None else query_mask.to(dev).bool() & attention_mask)
        if isinstance(memory, CompressedMemory):
            memory = self.memory_access(memory)
        offset = self.config.msa.query_offset if position_offset is None else position_offset
        return self.prefill_on_device(input_ids, attention_mask, query_mask, memory, prefix, offset, last_only,
                                      self.config.msa.top_k if top_k is None else top_k, keep_carry)  # fmt: skip

    @torch.no_grad()
    def prefill_on_device(self, input_ids: Tensor, attention_mask: Tensor, query_mask: Tensor, memory: MemoryAccess | None,
                          prefix: PrefixCache | None, position_offset: int, last_only: bool, top_k: int,
                          keep_carry: bool) -> PrefillOutput:  # fmt: skip
        """``prefill`` of inputs already checked and on the model's device (bool masks, the query mask
        within the attention mask): no host work of its own, so with a memory that routes and fetches
        on the device it can be captured in a CUDA graph (``msa.engine.graphed_prefill``)."""
        positions = MF.query_position_ids(attention_mask, position_offset)
        carry = self.carry_layer if keep_carry else None
        cache = KVCache.empty(len(self.model.layers), carry)
        ctx = QueryContext(
            attention_mask=attention_mask, query_mask=query_mask, cache=cache, memory=memory,
            prefix=prefix, top_k=top_k, routing=True, carry_layer=carry,
        )  # fmt: skip
        h = self.model.run(input_ids, positions, ctx)
        cache.next_position = positions[:, -1] + 1
        logits = self.lm_head(h[:, -1] if last_only else h)
        return PrefillOutput(logits, cache, ctx.routings)

    @property
    def carry_layer(self) -> int | None:
        """The first router layer: layers below it do not read memory, so their state carries across
        Memory Interleave rounds (None without router layers)."""
        return min(self.router_layers) if self.router_layers else None

    @torch.no_grad()
    def resume(self, carries: list[Carry], suffix: Tensor, suffix_mask: Tensor, query_mask: Tensor,
               memory: MemoryAccess | CompressedMemory | None = None, prefix: PrefixCache | None = None, last_only: bool = False,
               top_k: int | None = None) -> PrefillOutput:  # fmt: skip
        """``prefill`` of sequences that continue carried ones, reusing the layers below the first
        router layer (``msa.model.carry.resume_prefill``; arguments there). Equal to ``prefill`` of
        the whole sequences up to rounding."""
        from msa.model.carry import resume_prefill

        self._check_ids(suffix)
        top_k = self.config.msa.top_k if top_k is None else top_k
        if isinstance(memory, CompressedMemory):
            memory = self.memory_access(memory)
        return resume_prefill(self, carries, suffix, suffix_mask, query_mask, memory, prefix, last_only, top_k)

    @torch.no_grad()
    def decode(self, input_ids: Tensor, cache: KVCache | StaticKVCache, attention_mask: Tensor | None = None) -> Tensor:
        """Feed new tokens against the cache (no re-routing). input_ids: [B, t] -> logits [B, t, V].

        attention_mask: [B, t] bool; a False token is not attended to and does not advance positions.
        """
        self._check_ids(input_ids)
        b, t = input_ids.shape
        dev = self.device
        mask = (torch.ones(b, t, dtype=torch.bool) if attention_mask is None else attention_mask).to(dev).bool()
        if isinstance(cache, StaticKVCache):
            return self.decode_static(input_ids.to(dev), cache, mask)
        positions = cache.next_position[:, None] + (torch.cumsum(mask.long(), -1) - mask.long())  # type: ignore[index]
        ctx = QueryContext(attention_mask=mask, query_mask=torch.zeros_like(mask), cache=cache, routing=False,
                           carry_layer=cache.carry_layer)  # fmt: skip
        h = self.model.run(input_ids.to(dev), positions, ctx)
        cache.next_position = cache.next_position + mask.long().sum(-1)  # type: ignore[operator]
        return self.lm_head(h)

    @torch.no_grad()
    def decode_static(self, input_ids: Tensor, cache: StaticKVCache, attention_mask: Tensor) -> Tensor:
        """``decode`` into a preallocated cache, written in place: no host synchronisation and no new
        buffers, so a step of fixed shape can be captured in a CUDA graph. input_ids: [B, t] long,
        attention_mask: [B, t] bool, both on the model's device (ids unchecked) -> logits [B, t, V]."""
        if cache.used + input_ids.shape[1] > cache.capacity:
            raise ValueError(f"the static cache holds {cache.capacity} tokens; {cache.used + input_ids.shape[1]} needed")
        mask = attention_mask
        positions = cache.next_position[:, None] + (torch.cumsum(mask.long(), -1) - mask.long())
        ctx = QueryContext(attention_mask=mask, query_mask=torch.zeros_like(mask), cache=cache, routing=False,  # type: ignore[arg-type]
                           carry_layer=cache.carry_layer)  # fmt: skip
        h = self.model.run(input_ids, positions, ctx)
        cache.advance(mask)
        return self.lm_head(h)

    # -- checks / io -------------------------------------------------------------------------------
    def _check_ids(self, ids: Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]"
            )

    def save_pretrained(self, path: str | Path, max_shard_bytes: int | None = None) -> None:
        """Write config.json + model.safetensors in the official MSA checkpoint format (sharded with an
        index file when ``max_shard_bytes`` is given)."""
        from msa.model.checkpoint import save_pretrained

        save_pretrained(self, path, max_shard_bytes)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> "MSAForCausalLM":
        """Load an MSA checkpoint directory (ours or the official MSA-4B) or a shipped model name."""
        from msa.model.checkpoint import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device)

    @classmethod
    def from_base(cls, path: str | Path, msa_config=None, seed: int = 0, dtype: torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> "MSAForCausalLM":  # fmt: skip
        """A base HF Qwen3 checkpoint directory -> MSA model with freshly (seeded) initialised routers."""
        from msa.model.checkpoint import load_base

        return load_base(cls, path, msa_config, seed=seed, dtype=dtype, device=device)

    def fingerprint(self) -> str:
        """Hash of config + weights: memory encoded by one model is refused by another."""
        from msa.model.checkpoint import fingerprint

        return fingerprint(self)
