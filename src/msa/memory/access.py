"""Tiered, snapshot-consistent MemoryAccess over a bank's segments.

Routing keys of every router layer are resident on the compute device, per segment (a new snapshot
shares the segments it has in common with the previous one and loads only new ones). Content K/V stay
on the host: in (pinned, on CUDA) RAM with ``content_tier="host"``, or memory-mapped from the segment
files with ``content_tier="disk"``. ``fetch`` copies only the selected chunks to the device.
Routing, fused path (CUDA, or float8 keys; head mean, chunk max, query max or mean): every segment
holds its routing keys prepared for the routing GEMM (``msa.kernels.prepare_routing_keys``, bfloat16 or
float8 + scales), the snapshot concatenates them into one [C, Hkv*D] matrix per router layer and routes
all B questions in one ``msa.kernels.route_topk`` call (query mean: one pre-reduced row per question). Chunks of deleted documents map to a dummy slot N; k+1 documents
are requested and the dummy dropped, so the result is the exact top-k over live documents.
Routing, per-document path (any device; head, query and chunk means, as ``msa-bios-tiny`` routes): the
score is then linear in the keys, so every segment holds one row per document, the mean of its
chunks' (normalised) keys (``msa.kernels.prepare_doc_mean_keys``; float32, or float8 + scales), and
routing is one GEMV per question over documents instead of chunks, through the same fused call.
Routing, tiled path (CPU, other reductions): document-aligned tiles of at most ``tile_chunks`` chunks
with a running exact top-k, scored by ``tile_doc_scores``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from msa import functional as MF
from msa.kernels.dispatch import RoutingPrep, fused_routing  # the routing backend is chosen in msa.kernels
from msa.kernels import RoutingKeys, prepare_doc_mean_keys, prepare_routing_keys
from msa.memory.catalog import CatalogSnapshot, DocRow, SegmentRow
from msa.memory.errors import BankCorruptError
from msa.memory.resident import ResidentContent
from msa.memory.segments import load_segment, map_segment, segment_metadata
from msa.model.memory import CompressedMemory, LayerMemory, PrefixCache, Routing, RoutingOptions

log = logging.getLogger(__name__)

CONTENT_TIERS = ("host", "disk")


def tile_doc_scores(q_router: Tensor, k_router: Tensor, chunk_doc: Tensor, num_docs: int, query_mask: Tensor,
                    options: RoutingOptions) -> Tensor:  # fmt: skip
    """The one place the bank scores documents: [Tq, Hq, D] x [C, Hkv, D] -> [num_docs] float32.

    ``msa.functional.doc_scores`` (float32); the fused path is chosen by ``msa.kernels.RoutingPrep``.
    """
    return MF.doc_scores(
        q_router, k_router, chunk_doc, num_docs, query_mask, options.cosine,
        head_reduce=options.head_reduce, query_reduce=options.query_reduce, chunk_reduce=options.chunk_reduce,  # type: ignore[arg-type]
    )  # fmt: skip


@dataclass
class LoadedSegment:
    """One segment's tensors in their tiers.

    routing: layer -> [C, Hkv, D] raw router keys, on the compute device for the tiled path, on the host
    when ``prepared`` is set; keys, values: layer -> [C, Hkv, D] on the host (pinned RAM or a read-only
    file mapping). chunk_doc: [C] long local document (compute device). doc_chunk_start: [n] long first
    chunk of every local document (CPU). prepared: layer -> RoutingKeys ([C, Hkv*D] bfloat16 or float8
    + [C] scales; with ``per_doc`` [n, Hkv*D], one row per local document) on the compute device for
    the fused path, else None.
    """

    file: str
    routing: dict[int, Tensor]
    keys: dict[int, Tensor]
    values: dict[int, Tensor]
    chunk_doc: Tensor
    doc_chunk_start: Tensor
    num_docs: int
    prepared: dict[int, RoutingKeys] | None = field(default=None)
    per_doc: bool = False
    doc_ids: Tensor | None = None  # [n] long bank id of every local document (CPU; None: a synthetic segment)
    doc_lengths: Tensor | None = None  # [n] long tokens of every local document (CPU)

    @classmethod
    def load(cls, directory: Path, row: SegmentRow, fingerprint: str, device: torch.device, tier: str,
             verify: bool = True, prep: RoutingPrep | None = None) -> "LoadedSegment":  # fmt: skip
        path = directory / row.file
        if tier == "host":
            t = load_segment(path, row.checksum, row.bytes, verify=verify)
        elif tier == "disk":
            t = map_segment(path, row.checksum, row.bytes, verify=verify)
        else:
            raise ValueError(f"content_tier must be one of {CONTENT_TIERS}, got {tier!r}")
        meta_fp = segment_metadata(path).get("fingerprint")
        if meta_fp != fingerprint:
            raise BankCorruptError(str(path), f"segment fingerprint {meta_fp} differs from the bank's {fingerprint}")
        layers = sorted({int(name.split(".")[0]) for name in t if name.endswith(".routing_keys")})
        pin = device.type == "cuda" and tier == "host"
        host = (lambda x: x.pin_memory()) if pin else (lambda x: x)  # noqa: E731
        chunk_doc = t["chunk_doc"].long()
        n = int(t["doc_ids"].numel())
        if chunk_doc.numel() != row.num_chunks or n != row.num_docs:
            raise BankCorruptError(str(path), "chunk/document counts differ from the catalog")
        counts = torch.bincount(chunk_doc, minlength=n)
        prepared = None
        if prep is not None:
            # Only the prepared keys live on the device; the raw ones stay on the host for materialize().
            if prep.per_doc:  # document means on the host (deterministic order), then the rows to the device
                prepared = {i: prepare_doc_mean_keys(t[f"{i}.routing_keys"], chunk_doc, n, prep.cosine, prep.dtype).to(device)
                            for i in layers}  # fmt: skip
            else:
                prepared = {i: prepare_routing_keys(t[f"{i}.routing_keys"].to(device), prep.cosine, prep.dtype) for i in layers}
            routing = {i: t[f"{i}.routing_keys"] for i in layers}
        else:
            # clone: on the CPU .to() is a no-op and the disk tier must not route from the mapping
            routing = {i: t[f"{i}.routing_keys"].to(device).clone() for i in layers}
        return cls(
            file=row.file,
            routing=routing,
            keys={i: host(t[f"{i}.keys"]) for i in layers},
            values={i: host(t[f"{i}.values"]) for i in layers},
            chunk_doc=chunk_doc.to(device),
            doc_chunk_start=torch.cumsum(counts, 0) - counts,
            num_docs=n,
            prepared=prepared,
            per_doc=prep is not None and prep.per_doc,
            doc_ids=t["doc_ids"].long().clone(),
            doc_lengths=t["doc_lengths"].long().clone(),
        )


def _check_places(segments: list[LoadedSegment], places: dict[int, list[tuple[int, int, int, int, int]]], where: str) -> None:
    """BankCorruptError unless every live row's place (per segment index: local document, id, first
    chunk, chunks, tokens) agrees with its segment file (synthetic segments are not checked)."""
    for si, rows in places.items():
        seg = segments[si]
        if seg.doc_ids is None or seg.doc_lengths is None:
            continue
        t = torch.tensor(rows, dtype=torch.long)  # [n, 5]
        d = t[:, 0].clamp(0, max(seg.num_docs - 1, 0))
        counts = torch.bincount(seg.chunk_doc.cpu(), minlength=seg.num_docs)
        ok = (t[:, 0] >= 0) & (t[:, 0] < seg.num_docs) & (seg.doc_ids[d] == t[:, 1]) & (seg.doc_chunk_start[d] == t[:, 2])
        ok &= (counts[d] == t[:, 3]) & (seg.doc_lengths[d] == t[:, 4])
        if not bool(ok.all()):
            bad = int(t[int((~ok).nonzero()[0, 0]), 1])
            raise BankCorruptError(where or seg.file, f"document {bad} disagrees with segment {seg.file}")


def _row_slots(seg: LoadedSegment, slot_of: Tensor, n: int) -> Tensor:
    """Slot of every row of ``seg``'s prepared keys ([C] chunks, or [n_local] documents when per_doc;
    every stored document has a chunk), int32; ``n`` (the dummy) for deleted documents."""
    rows = slot_of if seg.per_doc else slot_of[seg.chunk_doc]
    return torch.where(rows >= 0, rows, n).to(torch.int32)


@dataclass(frozen=True)
class Tile:
    """Chunks [c0, c1) = local documents [d0, d1) of segment ``seg`` (index in the snapshot)."""

    seg: int
    c0: int
    c1: int
    d0: int
    d1: int


class BankSnapshot:
    """An immutable view of the live documents of a bank at one catalog state; a ``MemoryAccess``.

    Document slots 0..N-1 follow the catalog's live order (segment order, then position in the
    segment); ``slot_ids`` (= ``slot_to_id``) [N] long maps them to the bank's internal ids;
    ``Routing.docs`` are slots. ``text`` and ``user_id`` answer from the same catalog state
    (``catalog``: the catalog snapshot the rows were read from; None for synthetic snapshots).
    Every row's place is checked against its segment file (ids, chunk ranges, lengths).
    """

    def __init__(self, segments: list[LoadedSegment], rows: list[DocRow], seg_index: dict[int, int],
                 generation: int, options: RoutingOptions, device: torch.device, tile_chunks: int,
                 prefix: PrefixCache | None = None, rescore: int = 0, catalog: "CatalogSnapshot | None" = None):  # fmt: skip
        if tile_chunks < 1:
            raise ValueError(f"tile_chunks must be >= 1, got {tile_chunks}")
        self.segments = segments
        self.generation = generation
        self.rescore = rescore  # fp8 fused path: exact rescoring of the top rescore*k candidates (0 = off)
        self.options = options
        self.device = device
        self.tile_chunks = tile_chunks
        self.prefix = prefix
        self.catalog = catalog
        slot_of = [torch.full((s.num_docs,), -1, dtype=torch.long) for s in segments]
        ids, loc, lengths = [], [], []
        places: dict[int, list[tuple[int, int, int, int, int]]] = {}
        for r in rows:
            if r.deleted:
                continue
            si = seg_index[r.segment]
            places.setdefault(si, []).append((r.seg_doc, r.id, r.chunk_start, r.num_chunks, r.num_tokens))
        _check_places(segments, places, str(catalog.path) if catalog is not None else "")
        for r in rows:
            if r.deleted:
                continue
            si = seg_index[r.segment]
            slot_of[si][r.seg_doc] = len(ids)
            ids.append(r.id)
            loc.append((si, r.chunk_start, r.num_chunks))
            lengths.append(r.num_tokens)
        self.slot_to_id = torch.tensor(ids, dtype=torch.long)
        self.doc_lengths = torch.tensor(lengths, dtype=torch.long)
        self._loc = loc
        self._slot_of = [s.to(device) for s in slot_of]
        self._tiles = self._make_tiles(slot_of)
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._fused_lock = threading.Lock()
        self._fused_keys: dict[int, RoutingKeys] = {}
        self._chunk_slot: Tensor | None = None  # [C] int32 slot of every loaded chunk, N for deleted ones
        self._has_dead = any(bool((s < 0).any()) for s in slot_of)
        self._resident: ResidentContent | None = None

    @property
    def num_docs(self) -> int:
        return int(self.slot_to_id.numel())

    @property
    def slot_ids(self) -> Tensor:
        """[N] long internal id of every slot."""
        return self.slot_to_id

    def text(self, internal_id: int) -> str | None:
        """The text of a routed row (a piece: its own text) in this snapshot's state; None if the
        snapshot holds no such row. Checksum-verified (BankCorruptError)."""
        return None if self.catalog is None else self.catalog.text(internal_id)

    def user_id(self, internal_id: int):
        """The user's id (int or str) of a routed row in this snapshot's state (a piece: its document's)."""
        return int(internal_id) if self.catalog is None else self.catalog.user_id(internal_id)

    def close(self) -> None:
        """Release the catalog state held for ``text`` (also done when the snapshot is garbage-collected)."""
        if self.catalog is not None:
            self.catalog.close()

    @property
    def num_chunks(self) -> int:
        return sum(n for _, _, n in self._loc)

    def ids(self, docs: Tensor) -> Tensor:
        """Map slots (any shape, -1 = none) to bank ids (-1 stays -1)."""
        docs = docs.cpu().long()
        out = torch.full_like(docs, -1)
        ok = docs >= 0
        out[ok] = self.slot_to_id[docs[ok]]
        return out

    def _make_tiles(self, slot_of: list[Tensor]) -> list[Tile]:
        tiles = []
        for si, seg in enumerate(self.segments):
            starts = seg.doc_chunk_start.tolist() + [int(seg.chunk_doc.numel())]
            live = (slot_of[si] >= 0).tolist()
            d0 = 0
            while d0 < seg.num_docs:
                d1 = d0 + 1
                while d1 < seg.num_docs and starts[d1 + 1] - starts[d0] <= self.tile_chunks:
                    d1 += 1
                if any(live[d0:d1]):
                    tiles.append(Tile(si, starts[d0], starts[d1], d0, d1))
                d0 = d1
        return tiles

    # -- fused routing -----------------------------------------------------------------------------
    def uses_fused_routing(self, layer: int) -> bool:
        """Whether ``route`` of this layer runs the one-call fused path (all segments prepared)."""
        return (
            fused_routing(self.options) and bool(self.segments)
            and all(s.prepared is not None and layer in s.prepared for s in self.segments)
        )  # fmt: skip

    def routing_keys(self, layer: int) -> tuple[RoutingKeys, Tensor]:
        """The layer's prepared keys over all loaded segments ([R, Hkv*D]: R chunks, or documents with
        per-document keys) and the slot of every row [R] int32 (N, a dummy, for deleted documents).

        Built on first use. After concatenating, every segment's prepared keys become views of the
        concatenation, so the per-segment copies are freed: one copy per layer stays resident.
        """
        with self._fused_lock:
            if self._chunk_slot is None:
                n = self.num_docs
                self._chunk_slot = torch.cat([_row_slots(s, so, n) for s, so in zip(self.segments, self._slot_of)])
            keys = self._fused_keys.get(layer)
            if keys is None:
                parts = [s.prepared[layer] for s in self.segments]  # type: ignore[index]
                if len(parts) == 1:
                    keys = parts[0]
                else:
                    scale = torch.cat([p.scale for p in parts]) if parts[0].scale is not None else None  # type: ignore[misc]
                    keys = RoutingKeys(torch.cat([p.keys for p in parts]), scale, parts[0].num_kv_heads,
                                       parts[0].head_dim, parts[0].cosine)  # fmt: skip
                    off = 0
                    for s, p in zip(self.segments, parts):
                        c = p.num_chunks
                        sc = keys.scale[off : off + c] if keys.scale is not None else None
                        s.prepared[layer] = RoutingKeys(keys.keys[off : off + c], sc, p.num_kv_heads, p.head_dim, p.cosine)  # type: ignore[index]
                        off += c
                self._fused_keys[layer] = keys
            return keys, self._chunk_slot

    def _route_fused(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        from msa import kernels

        b, n = q_router.shape[0], self.num_docs
        keys, chunk_slot = self.routing_keys(layer)
        rescore = self.rescore if keys.keys.dtype == torch.float8_e4m3fn else 0
        kc = min(n, k * rescore) if rescore else k  # candidates the kernel returns
        extra = int(self._has_dead)  # the dummy slot n takes at most one place
        docs, scores = kernels.route_topk(q_router.to(self.device), keys, chunk_slot, n + extra, kc + extra,
                                          query_mask.to(self.device), self.options.cosine,
                                          query_reduce=self.options.query_reduce)  # fmt: skip
        if extra:
            # a stable sort moving the dummy last keeps the live documents in order
            order = torch.sort((docs == n).to(torch.int8), dim=1, stable=True).indices[:, :kc]
            docs, scores = docs.gather(1, order), scores.gather(1, order)
        if rescore:
            docs, scores = self._rescore(layer, q_router, query_mask, docs.cpu(), k)
            b = docs.shape[0]
        scores = torch.where(docs >= 0, scores, float("-inf"))
        if self._resident is not None and not rescore:  # stays on the device: fetch gathers there
            return Routing(docs.reshape(b, k), (scores * self.options.coupled_scale).reshape(b, k))
        return Routing(docs.cpu().reshape(b, k), (scores * self.options.coupled_scale).cpu().reshape(b, k))

    def _rescore(self, layer: int, q_router: Tensor, query_mask: Tensor, cand: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact top-k among float8 candidates: every candidate document is scored again from its raw
        routing keys (host) with the reference scoring. Equal to exact routing whenever the exact
        top-k lies inside the candidates. cand: [B, kc] slots (-1 = none) -> docs, scores [B, k]."""
        b = cand.shape[0]
        docs = torch.full((b, k), -1, dtype=torch.long)
        scores = torch.full((b, k), float("-inf"))
        for s in range(b):
            slots = torch.sort(cand[s][cand[s] >= 0]).values  # slot order: ties go to the lower slot
            if slots.numel() == 0:
                continue
            places = [self._loc[int(x)] for x in slots]
            kr = torch.cat([self.segments[si].routing[layer][c0 : c0 + m] for si, c0, m in places]).to(self.device)
            counts = torch.tensor([m for _, _, m in places])
            chunk_doc = torch.repeat_interleave(torch.arange(len(places)), counts).to(self.device)
            sc = tile_doc_scores(q_router[s].to(self.device), kr, chunk_doc, len(places), query_mask[s].to(self.device),
                                 self.options)  # fmt: skip
            top = MF.select_docs(sc, k).cpu()
            docs[s, : len(top)] = slots[top]
            scores[s, : len(top)] = sc.cpu()[top]
        return docs, scores

    # -- MemoryAccess ------------------------------------------------------------------------------
    def route(self, layer: int, q_router: Tensor, query_mask: Tensor, k: int) -> Routing:
        """q_router: [B, Tq, Hq, D]; query_mask: [B, Tq] bool -> Routing with docs [B, k] slots.

        Exact: equal to scoring every live document at once and taking ``select_docs`` (the fused path
        scores with the prepared keys' dtype: bfloat16 or float8 operands, float32 accumulation).
        """
        if self.num_docs > 0 and k > 0 and self.uses_fused_routing(layer):
            return self._route_fused(layer, q_router, query_mask, k)
        b = q_router.shape[0]
        docs = torch.full((b, k), -1, dtype=torch.long)
        scores = torch.full((b, k), float("-inf"))
        for s in range(b):
            q = q_router[s].to(self.device)
            m = query_mask[s].to(self.device)
            best = torch.zeros(0, device=self.device)
            best_slot = torch.zeros(0, dtype=torch.long, device=self.device)
            for t in self._tiles:
                seg = self.segments[t.seg]
                sc = tile_doc_scores(q, seg.routing[layer][t.c0 : t.c1].to(self.device), seg.chunk_doc[t.c0 : t.c1] - t.d0,
                                     t.d1 - t.d0, m, self.options)  # fmt: skip
                slots = self._slot_of[t.seg][t.d0 : t.d1]
                sc = sc.masked_fill(slots < 0, float("-inf"))
                # Candidates so far all have lower slots than this tile's, so the stable selection
                # over [best | tile] breaks ties towards the lower slot, as one global selection would.
                cand, cand_slot = torch.cat([best, sc]), torch.cat([best_slot, slots])
                top = MF.select_docs(cand, k)
                best, best_slot = cand[top], cand_slot[top]
            docs[s, : len(best)] = best_slot.cpu()
            scores[s, : len(best)] = best.cpu() * self.options.coupled_scale
        return Routing(docs, scores)

    # -- content on the device ---------------------------------------------------------------------
    def make_resident(self, content_dtype: torch.dtype | None = None) -> "BankSnapshot":
        """Copy the content K/V to the compute device (where it fits). ``fetch`` then gathers there,
        without host work or synchronisation, into a fixed [B, k * max_doc_chunks] layout, and the
        fused routing leaves its result on the device (no float8 rescoring). ``content_dtype``: None (as
        stored), ``torch.bfloat16``, or ``torch.float8_e4m3fn`` (one float32 scale per chunk; see
        ``msa.memory.resident``). Returns self."""
        if not self.segments or not self.segments[0].keys:
            raise ValueError("the snapshot holds no content to make resident")
        self._resident = ResidentContent.build(self.segments, self._loc, self.device, content_dtype)
        return self

    @property
    def resident(self) -> ResidentContent | None:
        """The content on the device (``make_resident``), or None."""
        return self._resident

    def on_device(self, layers) -> bool:
        """Whether ``route`` and ``fetch`` of these router layers run on the device alone (resident content,
        the fused routing, no float8 rescoring): no host work, so a prefill over them can be captured in
        a CUDA graph (``msa.engine.graphed_prefill``)."""
        if self._resident is None or self.device.type != "cuda" or self.num_docs == 0:
            return False
        if not all(self.uses_fused_routing(i) for i in layers):
            return False
        return not self.rescore or all(self.routing_keys(i)[0].keys.dtype != torch.float8_e4m3fn for i in layers)

    def fetch(self, layer: int, docs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """docs: [B, k] slots (-1 = none) -> keys, values [B, Cmax, Hkv, D] on the device (chunks of the
        selected documents in the order given, zero padded; with resident content, Cmax is
        k * max_doc_chunks and padding is not zero, only invalid) and valid [B, Cmax] bool."""
        if self._resident is not None:
            return self._resident.fetch(layer, docs)
        docs = docs.cpu().long()
        b = docs.shape[0]
        per = [[self._loc[int(x)] for x in row if int(x) >= 0] for row in docs]
        cmax = max((sum(n for _, _, n in p) for p in per), default=0)
        ref = self.segments[0].keys[layer] if self.segments else None
        hkv, d = (ref.shape[1], ref.shape[2]) if ref is not None else (0, 0)
        dtype = ref.dtype if ref is not None else torch.float32
        pin = self.device.type == "cuda"
        keys = torch.zeros(b, cmax, hkv, d, dtype=dtype, pin_memory=pin)
        values = torch.zeros(b, cmax, hkv, d, dtype=dtype, pin_memory=pin)
        valid = torch.zeros(b, cmax, dtype=torch.bool, pin_memory=pin)
        for s, places in enumerate(per):
            off = 0
            for si, c0, n in places:
                seg = self.segments[si]
                keys[s, off : off + n] = seg.keys[layer][c0 : c0 + n]
                values[s, off : off + n] = seg.values[layer][c0 : c0 + n]
                off += n
            valid[s, :off] = True
        return self._to_device(keys, values, valid)

    def _to_device(self, *host: Tensor) -> tuple[Tensor, ...]:
        if self._copy_stream is None:
            return tuple(t.to(self.device) for t in host)
        # Pinned host -> device on a side stream; the compute stream waits on an event, and the
        # allocator is told the results are used there.
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            out = tuple(t.to(self.device, non_blocking=True) for t in host)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        compute.wait_event(done)
        for t in out:
            t.record_stream(compute)
        return out

    # -- whole-memory view -------------------------------------------------------------------------
    def materialize(self, device: torch.device | str = "cpu") -> CompressedMemory:
        """The live documents as one resident CompressedMemory (slot order; doc_ids = bank ids)."""
        layers: dict[int, list[list[Tensor]]] = {}
        chunk_doc = []
        for slot, (si, c0, n) in enumerate(self._loc):
            seg = self.segments[si]
            for layer in seg.routing:
                parts = layers.setdefault(layer, [[], [], []])
                parts[0].append(seg.routing[layer][c0 : c0 + n].to(device))
                parts[1].append(seg.keys[layer][c0 : c0 + n].to(device))
                parts[2].append(seg.values[layer][c0 : c0 + n].to(device))
            chunk_doc.append(torch.full((n,), slot, dtype=torch.long))
        if not chunk_doc:
            raise ValueError("the snapshot holds no documents")
        return CompressedMemory(
            layers={i: LayerMemory(*(torch.cat(p) for p in parts)) for i, parts in layers.items()},
            chunk_doc=torch.cat(chunk_doc),
            doc_lengths=self.doc_lengths.clone(),
            doc_ids=self.slot_to_id.clone(),
        )
