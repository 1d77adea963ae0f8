"""The random-tensor bank of bench/parallel.py: the same bank whatever the world size.

Documents of 64-200 tokens (seeded), cut into contiguous segments of about ``segment_chunks`` chunks
and sharded with the library's assignment. Every segment's routing keys come from a generator seeded
by the segment's index, on the device that holds them, so a document's keys (and therefore the
selection) do not depend on which rank builds them: runs at W=1, 4 and 8 are comparable slot by slot.
Content K/V of every chunk is one random host chunk expanded over the shard (fetch copies the right
sizes, the values are meaningless, and they cost no memory).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from msa import ModelConfig
from msa.kernels import RoutingKeys, prepare_routing_keys
from msa.memory import BankSnapshot, LoadedSegment
from msa.memory.catalog import DocRow
from msa.model.memory import RoutingOptions
from msa.parallel import ShardLayout, assign_segments

KEY_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
_ROWS = 1 << 18  # rows generated at once (bounds the float32 temporary)


@dataclass
class RandomBank:
    """This rank's shard (raw scores: ``coupled_scale`` 1) and the global layout; ``info`` for the JSON."""

    shard: BankSnapshot
    layout: ShardLayout
    info: dict


def random_prepared(c: int, hkv: int, d: int, device: torch.device, gen: torch.Generator, dtype: torch.dtype) -> RoutingKeys:
    """Random cosine-prepared routing keys [C, Hkv*D] (bf16, or fp8 + [C] scales), generated in blocks."""
    keys = torch.empty(c, hkv * d, dtype=dtype, device=device)
    scale = torch.empty(c, dtype=torch.float32, device=device) if dtype == torch.float8_e4m3fn else None
    for r0 in range(0, c, _ROWS):
        block = prepare_routing_keys(torch.randn(min(_ROWS, c - r0), hkv, d, device=device, generator=gen), True, dtype)
        keys[r0 : r0 + block.num_chunks] = block.keys
        if scale is not None:
            scale[r0 : r0 + block.num_chunks] = block.scale  # type: ignore[index]
    return RoutingKeys(keys, scale, hkv, d, True)


def random_bank(cfg: ModelConfig, options: RoutingOptions, tokens: float, segment_chunks: int, rank: int, world: int,
                device: torch.device, dtype: torch.dtype, tile_chunks: int, key_dtype: str = "bf16") -> RandomBank:  # fmt: skip
    """This rank's shard of a random bank of about ``tokens`` tokens. On CUDA the shard takes the fused
    routing path with prepared keys of ``key_dtype``; elsewhere the tiled path with raw keys of ``dtype``."""
    g = torch.Generator().manual_seed(0)
    n_docs = max(1, int(tokens / 132))
    lengths = torch.randint(64, 201, (n_docs,), generator=g)
    chunks = (lengths + cfg.msa.chunk_size - 1) // cfg.msa.chunk_size
    seg_of = torch.cumsum(chunks, 0).sub(chunks).div(segment_chunks, rounding_mode="floor")  # contiguous segments
    n_segs = int(seg_of[-1]) + 1
    seg_chunks = torch.bincount(seg_of, weights=chunks, minlength=n_segs).long().tolist()
    assignment = assign_segments(seg_chunks, world)
    owner = torch.empty(n_segs, dtype=torch.long)
    for r, segs in enumerate(assignment):
        owner[segs] = r
    layout = ShardLayout.build(torch.arange(n_docs), owner[seg_of], chunks, world)
    hkv, d = cfg.num_key_value_heads, cfg.head_dim
    content = torch.randn(1, hkv, d, generator=g).to(dtype)
    loaded, rows = [], []
    starts = torch.searchsorted(seg_of, torch.arange(n_segs + 1))
    for si, s in enumerate(assignment[rank]):
        a, b = int(starts[s]), int(starts[s + 1])
        c = chunks[a:b]
        c_total = int(c.sum())
        gen = torch.Generator(device=device).manual_seed(1000 + s)  # the segment's keys, whoever builds them
        placeholder = content.expand(c_total, hkv, d)  # raw keys: unused by fused routing, zero bytes
        if device.type == "cuda":  # the fused kernel path a CUDA bank takes: prepared keys only
            routing = {i: placeholder for i in cfg.router_layers}
            prepared = {i: random_prepared(c_total, hkv, d, device, gen, KEY_DTYPES[key_dtype]) for i in cfg.router_layers}
        else:
            routing = {i: torch.randn(c_total, hkv, d, device=device, generator=gen).to(dtype) for i in cfg.router_layers}
            prepared = None
        loaded.append(LoadedSegment(
            file=f"random-{s}", num_docs=b - a, chunk_doc=torch.repeat_interleave(torch.arange(b - a), c).to(device),
            doc_chunk_start=torch.cumsum(c, 0) - c, routing=routing, keys={i: placeholder for i in cfg.router_layers},
            values={i: placeholder for i in cfg.router_layers}, prepared=prepared,
        ))  # fmt: skip
        offs = (torch.cumsum(c, 0) - c).tolist()
        rows += [DocRow(a + j, None, "", int(lengths[a + j]), si, j, offs[j], int(c[j]), False) for j in range(b - a)]
    raw = replace(options, coupled_scale=1.0)  # the distributed access scales after the global merge
    shard = BankSnapshot(loaded, rows, {i: i for i in range(len(loaded))}, -1, raw, device, tile_chunks)
    key_bytes = 2 if key_dtype == "bf16" or device.type != "cuda" else 1
    info = {"documents": n_docs, "chunks": int(chunks.sum()), "segments": n_segs, "rank_chunks": layout.rank_chunks(),
            "key_dtype": key_dtype if device.type == "cuda" else str(dtype).removeprefix("torch."),
            "routing_key_gb_per_rank": [n * len(cfg.router_layers) * hkv * d * key_bytes / 1e9 for n in layout.rank_chunks()]}  # fmt: skip
    return RandomBank(shard, layout, info)
