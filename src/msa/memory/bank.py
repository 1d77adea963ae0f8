"""MemoryBank: a persistent, crash-safe document memory (DESIGN.md, Storage).

A bank is a directory:
    catalog.sqlite        documents, text, ranges, tombstones, string keys, add jobs, manifest (WAL)
    prefix.safetensors    template-prefix K/V of every layer (written once, at create)
    segments/seg-*.safetensors   immutable pooled tensors, one per committed add batch
    writer.lock           flock held by the (single) writer during a write

A write = segment to a temp name, fsync, rename, fsync directory, then one catalog transaction that
makes it visible. Files the catalog does not name (a crash between rename and commit, temp files, old
segments of a compaction that crashed before removing them) are never read and are removed at the
next write.

Idempotent ``add``: ``add`` commits batch by batch (a batch = a segment = one transaction; all pieces
of a split text go in the same one). To re-run an interrupted ``add`` safely, either give explicit
``ids`` (int or str): a text whose id already holds the same text is skipped, a different text for a
live id is a ``DuplicateDocumentError`` (use ``update``); or, with ``ids=None``, give ``job="<name>"``:
every committed item records (job, input position, text hash) -> id in the same transaction, and a
re-run of the same job with the same texts skips committed items and returns their ids. ``ids=None``
without a job always adds new documents.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from msa.memory.access import CONTENT_TIERS, BankSnapshot, LoadedSegment, RoutingPrep
from msa.memory.catalog import CATALOG_NAME, Catalog, SegmentRow
from msa.memory.encode import (
    PLACEHOLDER_GID,
    Piece,
    commit_groups,
    encode_group,
    split_text,
    text_hash,
    tokenize,
    tokenizer_fingerprint,
)
from msa.memory.errors import (
    BankCorruptError,
    BankError,
    BankModelMismatch,
    BankReadOnlyError,
    DocumentTooLongError,
    DuplicateDocumentError,
    UnknownDocumentError,
)
from msa.memory.files import TMP_PREFIX, atomic_write, checksum_bytes, fsync_dir
from msa.memory.hooks import pause_point
from msa.memory.segments import segment_metadata, verify_segment, write_segment
from msa.model.memory import CompressedMemory, PrefixCache, RoutingOptions
from msa.prompt import OFFICIAL, PromptFormat

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PREFIX_NAME = "prefix.safetensors"
SEGMENTS_DIR = "segments"
LOCK_NAME = "writer.lock"

DocId = int | str


@dataclass
class BankSettings:
    """Write policy, stored in the manifest at create (change on ``bank.settings`` for one session).

    max_doc_tokens: longest formatted document; longer texts are split (``on_long="split"``) into
        pieces with a ``parent`` reference to the first piece, or rejected (``on_long="error"``).
    batch_tokens: padded tokens per ``model.encode`` call. segment_tokens: tokens per segment/commit.
    compact_chunks: compaction merges adjacent segments up to this many chunks.
    tile_chunks: routing tile (bounds peak device memory of scoring).
    """

    max_doc_tokens: int = 8192
    on_long: str = "split"
    batch_tokens: int = 16384
    segment_tokens: int = 1 << 18
    compact_chunks: int = 1 << 16
    tile_chunks: int = 1 << 16

    def __post_init__(self) -> None:
        if self.on_long not in ("split", "error"):
            raise ValueError(f'on_long must be "split" or "error", got {self.on_long!r}')
        for name in ("max_doc_tokens", "batch_tokens", "segment_tokens", "compact_chunks", "tile_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class MemoryBank:
    """A persistent document memory. Create with ``MemoryBank.create``, reopen with ``MemoryBank.open``.

    Reads (``snapshot``, ``get_text``, ``stats``) see the last committed state; writes (``add``,
    ``update``, ``delete``, ``compact``) need the model and tokenizer the bank was created with (only
    ``delete`` / ``compact`` work without them).
    """

    def __init__(self, path: Path, catalog: Catalog, manifest: dict[str, Any], model, tokenizer,
                 device: torch.device, readonly: bool, content_tier: str, routing_dtype: str = "bf16",
                 fp8_rescore: int = 4):  # fmt: skip
        self.path = path
        self.catalog = catalog
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.readonly = readonly
        self.content_tier = content_tier
        self.fingerprint: str = manifest["fingerprint"]
        self.prompt = PromptFormat.from_dict(manifest["prompt"])
        self.routing_options = RoutingOptions(**manifest["routing"])
        self.router_layers: tuple[int, ...] = tuple(manifest["router_layers"])
        self.settings = BankSettings(**manifest["settings"])
        self._lock = threading.RLock()
        self._cache: dict[str, LoadedSegment] = {}
        self._prefix: PrefixCache | None = None
        self.model_source: str | None = manifest.get("model_source")
        self._view: BankSnapshot | None = None
        self.routing_dtype = routing_dtype
        self._routing_prep = RoutingPrep.choose(routing_dtype, self.routing_options, device, fp8_rescore)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model, tokenizer, prompt: PromptFormat = OFFICIAL, *,
               settings: BankSettings | None = None, device: str | torch.device | None = None,
               content_tier: str = "host", model_source: str | None = None,
               **setting_overrides: Any) -> "MemoryBank":  # fmt: skip
        """Create an empty bank at ``path`` (must not exist, or be an empty directory).

        model_source: where the model comes from (checkpoint dir or shipped name), recorded for tools
        that reopen the bank without knowing the model (``bank.model_source``).

        The template prefix (``prompt.memory_prefix``) is encoded once and stored. The directory is built
        under a temporary name and renamed into place, so a crash leaves no half-created bank.
        ``setting_overrides``: fields of ``BankSettings`` (e.g. ``max_doc_tokens=4096``).
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} exists and is not an empty directory")
        settings = replace(settings or BankSettings(), **setting_overrides)
        cfg = model.config
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        try:
            (tmp / SEGMENTS_DIR).mkdir()
            (tmp / LOCK_NAME).touch()
            prefix = model.encode_prefix(tokenize(tokenizer, prompt.memory_prefix))
            tensors = {"token_ids": prefix.token_ids.cpu().contiguous()}
            for i, (k, v) in enumerate(zip(prefix.keys, prefix.values)):
                tensors[f"{i}.keys"] = k.cpu().contiguous()
                tensors[f"{i}.values"] = v.cpu().contiguous()
            data = safetensors.torch.save(tensors)
            atomic_write(tmp / PREFIX_NAME, data)
            manifest = {
                "format_version": FORMAT_VERSION,
                "fingerprint": model.fingerprint(),
                "model_config": cfg.to_hf_dict(),
                "prompt": asdict(prompt),
                "routing": asdict(model.routing_options()),
                "router_layers": list(cfg.router_layers),
                "chunk_size": cfg.msa.chunk_size,
                "num_kv_heads": cfg.num_key_value_heads,
                "head_dim": cfg.head_dim,
                "dtype": str(model.dtype),
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "prefix": {"file": PREFIX_NAME, "checksum": checksum_bytes(data), "bytes": len(data)},
                "settings": asdict(settings),
                "created": time.time(),
                "model_source": None if model_source is None else str(model_source),
            }
            Catalog.create(tmp / CATALOG_NAME, json.loads(json.dumps(manifest, default=str))).close()
            fsync_dir(tmp)
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("created memory bank %s", path)
        return cls.open(path, model, tokenizer, device=device, content_tier=content_tier)

    @classmethod
    def open(cls, path: str | Path, model=None, tokenizer=None, device: str | torch.device | None = None,
             readonly: bool = False, content_tier: str = "host", routing_dtype: str = "bf16",
             fp8_rescore: int = 4) -> "MemoryBank":  # fmt: skip
        """Open a bank. With a model, its fingerprint must equal the bank's (``BankModelMismatch``).

        device: where routing keys and fetched chunks go (default: the model's device, else CPU).
        content_tier: "host" (content K/V in RAM, pinned on CUDA) or "disk" (memory-mapped segments).
        routing_dtype: "bf16" or "fp8": the routing keys the device keeps for the fused routing kernel
            (fp8: e4m3 + a scale per chunk, half the bytes and device memory; the segment files are
            unchanged). Applies with head mean, chunk max and query max or mean reductions, and with
            head, query and chunk means (one row per document, the mean of its chunks' keys: "bf16"
            keeps it in float32, on any device); fp8 with other reductions raises ValueError; bf16 on
            the CPU with chunk max routes by the exact tiled path.
        fp8_rescore: with fp8 keys, the kernel returns fp8_rescore * k candidates that are scored again
            exactly from the raw keys on the host (0: plain fp8 selection). Measured on a trained
            model's bank: see bench/results/fp8_recall_cpu.json.
        """
        path = Path(path)
        if not (path / CATALOG_NAME).exists():
            raise BankError(f"{path} is not a memory bank (no {CATALOG_NAME})")
        if content_tier not in CONTENT_TIERS:
            raise ValueError(f"content_tier must be one of {CONTENT_TIERS}, got {content_tier!r}")
        catalog = Catalog(path / CATALOG_NAME)
        try:
            with catalog.read() as c:
                manifest = Catalog.manifest(c)
            if manifest.get("format_version") != FORMAT_VERSION:
                raise BankError(f"{path}: bank format {manifest.get('format_version')}, this library reads {FORMAT_VERSION}")
            if model is not None:
                fp = model.fingerprint()
                if fp != manifest["fingerprint"]:
                    raise BankModelMismatch(
                        f"{path} was encoded by model {manifest['fingerprint']}, not by the given model {fp}: "
                        "re-encode the documents into a new bank with this model"
                    )
            if tokenizer is not None and manifest.get("tokenizer") is not None:
                tfp = tokenizer_fingerprint(tokenizer)
                if tfp is not None and tfp != manifest["tokenizer"]:
                    raise BankModelMismatch(f"{path} was built with another tokenizer ({manifest['tokenizer']} != {tfp})")
        except BaseException:
            catalog.close()
            raise
        if device is None:
            device = model.device if model is not None else "cpu"
        return cls(path, catalog, manifest, model, tokenizer, torch.device(device), readonly, content_tier, routing_dtype,
                   fp8_rescore)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "MemoryBank":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self.catalog.read() as c:
            return int(c.execute("SELECT COUNT(*) FROM documents WHERE deleted = 0").fetchone()[0])

    @property
    def generation(self) -> int:
        """Number of committed writes; a snapshot taken now has this generation."""
        with self.catalog.read() as c:
            return int(Catalog.manifest(c)["generation"])

    def ids(self) -> list[int]:
        """Live document ids in bank (slot) order."""
        with self.catalog.read() as c:
            return [r.id for r in Catalog.all_docs(c) if not r.deleted]

    def resolve(self, doc_id: DocId) -> int:
        """Integer id of a document id (a string id is looked up; UnknownDocumentError if never seen)."""
        if isinstance(doc_id, str):
            with self.catalog.read() as c:
                i = Catalog.key_id(c, doc_id)
            if i is None:
                raise UnknownDocumentError([doc_id])
            return i
        return _check_int_id(doc_id)

    def get_text(self, doc_id: DocId) -> str:
        """The stored text of a live document (its own piece for split documents)."""
        i = self.resolve(doc_id)
        with self.catalog.read() as c:
            t = Catalog.text(c, i)
        if t is None:
            raise UnknownDocumentError([doc_id])
        return t

    def parent(self, doc_id: DocId) -> int | None:
        """The first piece's id for a piece of a split document, else None."""
        i = self.resolve(doc_id)
        with self.catalog.read() as c:
            row = Catalog.live_doc(c, i)
        if row is None:
            raise UnknownDocumentError([doc_id])
        return row.parent

    def stats(self) -> dict[str, int]:
        """documents, tokens, chunks (live); deleted (tombstones awaiting compaction); segments and
        their bytes: bytes_routing / bytes_content (tensor bytes), bytes_disk (files)."""
        with self.catalog.read() as c:
            docs, tokens, chunks = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(num_tokens), 0), COALESCE(SUM(num_chunks), 0) FROM documents WHERE deleted = 0"
            ).fetchone()
            dead = c.execute("SELECT COUNT(*) FROM documents WHERE deleted = 1").fetchone()[0]
            segs, br, bc, bd = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes_routing), 0), COALESCE(SUM(bytes_content), 0), COALESCE(SUM(bytes), 0) FROM segments"
            ).fetchone()
            gen = Catalog.manifest(c)["generation"]
        return {
            "documents": docs, "tokens": tokens, "chunks": chunks, "deleted": dead, "segments": segs,
            "bytes_routing": br, "bytes_content": bc, "bytes_disk": bd, "generation": gen,
        }  # fmt: skip

    @property
    def prefix(self) -> PrefixCache:
        """Template-prefix K/V (every layer, [Hkv, P, D]) on the bank's device; checksum-verified."""
        if self._prefix is None:
            with self.catalog.read() as c:
                info = Catalog.manifest(c)["prefix"]
            path = self.path / info["file"]
            data = path.read_bytes() if path.exists() else b""
            if len(data) != info["bytes"] or checksum_bytes(data) != info["checksum"]:
                raise BankCorruptError(str(path), "prefix file is missing, truncated or corrupt")
            t = safetensors.torch.load(data)
            n = sum(1 for k in t if k.endswith(".keys"))
            self._prefix = PrefixCache(
                token_ids=t["token_ids"],
                keys=[t[f"{i}.keys"] for i in range(n)],
                values=[t[f"{i}.values"] for i in range(n)],
            ).to(self.device)
        return self._prefix

    def snapshot(self, tile_chunks: int | None = None, verify: bool = True) -> BankSnapshot:
        """A consistent MemoryAccess over the live documents at the current catalog state; with the
        default arguments the last one is returned again while no write has committed since.

        Segments already loaded by an earlier snapshot of this bank object are shared; new ones are
        loaded (checksum-verified unless ``verify=False``). Segments removed by a concurrent compaction
        between the catalog read and the load are handled by reading the catalog again.
        """
        if tile_chunks is None and verify and self._view is not None and self._view.generation == self.generation:
            return self._view
        for attempt in range(10):
            with self.catalog.read() as c:
                segs = Catalog.segments(c)
                rows = Catalog.all_docs(c)
                gen = Catalog.manifest(c)["generation"]
            try:
                loaded = [self._load_segment(s, verify) for s in segs]
            except BankCorruptError as e:
                if attempt < 9 and not (self.path / SEGMENTS_DIR / Path(e.file).name).exists():
                    continue  # removed after a compaction committed: the next read will not name it
                raise
            with self._lock:
                keep = {s.file for s in segs}
                self._cache = {f: v for f, v in self._cache.items() if f in keep}
            snap = BankSnapshot(
                loaded, rows, {s.id: i for i, s in enumerate(segs)}, gen, self.routing_options, self.device,
                tile_chunks or self.settings.tile_chunks, prefix=self.prefix,
                rescore=self._routing_prep.rescore if self._routing_prep is not None else 0, text=self.text,
            )  # fmt: skip
            if tile_chunks is None and verify:
                self._view = snap
            return snap
        raise BankError("could not take a snapshot")  # unreachable in practice

    # -- the engine's MemoryView ------------------------------------------------------------------
    def access(self) -> BankSnapshot:
        """The current snapshot (a new one only when a write has committed since the last call)."""
        return self.snapshot()

    def slot_ids(self) -> torch.Tensor:
        """[N] long bank id of every slot of the snapshot last returned by ``access``."""
        return self.access().slot_to_id if self._view is None else self._view.slot_to_id

    def text(self, doc_id: int) -> str | None:
        """Stored text of a live document, None if unknown."""
        try:
            return self.get_text(doc_id)
        except (UnknownDocumentError, TypeError):
            return None

    @property
    def routing_prep(self):
        """How this bank's snapshots prepare routing keys (fused kernel path), or None (tiled path)."""
        return self._routing_prep

    def _load_segment(self, row: SegmentRow, verify: bool) -> LoadedSegment:
        with self._lock:
            hit = self._cache.get(row.file)
        if hit is not None:
            return hit
        seg = LoadedSegment.load(self.path / SEGMENTS_DIR, row, self.fingerprint, self.device, self.content_tier, verify,
                                 prep=self._routing_prep)  # fmt: skip
        with self._lock:
            self._cache[row.file] = seg
        return seg

    # -- integrity ---------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Verify the bank: catalog integrity, every segment's size, checksum, header, fingerprint and
        its agreement with the catalog's document rows, and the prefix file. Raises BankCorruptError
        naming the first bad file; returns a report (segments, documents, orphan files)."""
        cat_path = str(self.path / CATALOG_NAME)
        with self.catalog.read() as c:
            if c.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise BankCorruptError(cat_path, "SQLite integrity check failed")
            manifest = Catalog.manifest(c)
            segs = Catalog.segments(c)
            rows = Catalog.all_docs(c)
            dangling = c.execute("SELECT COUNT(*) FROM documents WHERE segment NOT IN (SELECT id FROM segments)").fetchone()[0]
        if dangling:
            raise BankCorruptError(cat_path, f"{dangling} document rows name no segment")
        by_seg: dict[int, list] = {}
        for r in rows:
            by_seg.setdefault(r.segment, []).append(r)
        for s in segs:
            path = self.path / SEGMENTS_DIR / s.file
            verify_segment(path, s.checksum, s.bytes, full=True)
            meta = segment_metadata(path)
            if meta.get("fingerprint") != manifest["fingerprint"] or s.fingerprint != manifest["fingerprint"]:
                raise BankCorruptError(str(path), "segment was encoded by another model")
            t = safetensors.torch.load(path.read_bytes())
            doc_ids = t["doc_ids"].tolist()
            counts = torch.bincount(t["chunk_doc"].long(), minlength=len(doc_ids)).tolist()
            starts = np.cumsum([0] + counts[:-1]).tolist() if counts else []
            srows = by_seg.get(s.id, [])
            if len(doc_ids) != s.num_docs or len(srows) > s.num_docs:
                raise BankCorruptError(str(path), "document count differs from the catalog")
            for r in srows:
                if not (0 <= r.seg_doc < len(doc_ids)) or doc_ids[r.seg_doc] != r.id or \
                        counts[r.seg_doc] != r.num_chunks or starts[r.seg_doc] != r.chunk_start:  # fmt: skip
                    raise BankCorruptError(str(path), f"document {r.id} disagrees with the catalog")
        self.prefix  # noqa: B018  (verifies the prefix file)
        self._prefix = None
        known = {s.file for s in segs}
        orphans = [p.name for p in (self.path / SEGMENTS_DIR).iterdir() if p.name not in known]
        return {"segments": len(segs), "documents": sum(1 for r in rows if not r.deleted), "orphans": orphans}

    # -- writes ------------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive writer: thread lock + flock on writer.lock; then remove files the catalog does not name.

        Every write of this bank holds it; code that commits segments itself (parallel encode) holds it too."""
        if self.readonly:
            raise BankReadOnlyError(f"{self.path} was opened read-only")
        with self._lock:
            with open(self.path / LOCK_NAME, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._remove_orphans()
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_orphans(self) -> None:
        with self.catalog.read() as c:
            known = {s.file for s in Catalog.segments(c)}
        seg_dir = self.path / SEGMENTS_DIR
        for p in seg_dir.iterdir():
            if p.name not in known:
                log.info("removing orphan file %s", p)
                p.unlink(missing_ok=True)
        for p in self.path.iterdir():
            if p.name.startswith(TMP_PREFIX):
                p.unlink(missing_ok=True)

    def _need_encoder(self) -> None:
        if self.model is None or self.tokenizer is None:
            raise BankError("adding or updating documents needs the bank opened with its model and tokenizer")

    def add(self, texts: Sequence[str], ids: Sequence[DocId] | None = None, *, job: str | None = None,
            progress: bool | None = None) -> list[int]:  # fmt: skip
        """Encode and store documents; returns the integer id of every text (a split text: its first piece).

        ids: None (new ids are allocated), or one int (>= 0) or str per text. A str id is mapped to a
            stable integer id (the one the model sees as the document's gid).
        job: makes an ``ids=None`` add resumable (see the module docstring).
        Raises ValueError (empty text), DuplicateDocumentError, DocumentTooLongError before storing
        anything; an interrupted add keeps every batch committed so far.
        """
        self._need_encoder()
        texts = _check_texts(texts)
        keys = _check_ids(ids, len(texts))
        if job is not None and (not isinstance(job, str) or not job):
            raise ValueError("job must be a non-empty string")
        with self.writing():
            result, items, new_keys = self.plan_add(texts, keys, job)
            self._encode_and_commit(items, new_keys, job, progress)
        return [int(r) for r in result]  # type: ignore[arg-type]

    def plan_add(self, texts: list[str], keys: list, job: str | None = None) -> tuple[list[int], list[list[Piece]], dict[int, str]]:
        """The ids of every text, the pieces still to encode and the new string keys (call while writing).

        Texts already stored with the same id and text (or committed by ``job``) are not re-encoded.
        keys: per text None, an int id or a str key (validated by ``_check_ids``).
        """
        hashes = [text_hash(t) for t in texts]
        result: list[int] = [-1] * len(texts)
        with self.catalog.read() as c:
            manifest = Catalog.manifest(c)
            next_id = max(int(manifest["next_id"]), Catalog.max_id(c) + 1,
                          max((k for k in keys if isinstance(k, int)), default=-1) + 1)  # fmt: skip
            new_keys: dict[int, str] = {}
            todo: list[tuple[int, int]] = []  # (item, id)
            for i, (k, h) in enumerate(zip(keys, hashes)):
                if job is not None and (rec := Catalog.job_item(c, job, i)) is not None:
                    if rec[0] != h:
                        raise DuplicateDocumentError(f"job {job!r} item {i} was committed with another text")
                    result[i] = rec[1]
                    continue
                if isinstance(k, str):
                    doc_id = Catalog.key_id(c, k)
                    if doc_id is None:
                        doc_id, next_id = next_id, next_id + 1
                        new_keys[doc_id] = k
                elif isinstance(k, int):
                    doc_id = k
                else:
                    doc_id, next_id = next_id, next_id + 1
                row = Catalog.live_doc(c, doc_id) if k is not None else None
                if row is not None:
                    if row.parent is None and row.source_hash == h:
                        result[i] = doc_id
                        continue
                    raise DuplicateDocumentError(f"document id {k!r} already holds another text (use update)")
                todo.append((i, doc_id))
        items = []
        for i, doc_id in todo:
            pieces, next_id = self._pieces(texts[i], doc_id, None, hashes[i], i, next_id)
            items.append(pieces)
            result[i] = doc_id
        return result, items, new_keys

    def update(self, doc_id: DocId, text: str, *, progress: bool | None = False) -> int:
        """Replace a live document's text; re-encodes only it (and its pieces). Same text: no-op."""
        self._need_encoder()
        (text,) = _check_texts([text])
        i = self.resolve(doc_id)
        h = text_hash(text)
        with self.writing():
            with self.catalog.read() as c:
                row = Catalog.live_doc(c, i)
                if row is None:
                    raise UnknownDocumentError([doc_id])
                if row.source_hash == h:
                    return i
                family = Catalog.live_family(c, i)
                next_id = max(int(Catalog.manifest(c)["next_id"]), Catalog.max_id(c) + 1)
            pieces, _ = self._pieces(text, i, row.parent, h, 0, next_id)
            self._encode_and_commit([pieces], {}, None, progress, replace=family)
        return i

    def delete(self, ids: DocId | Iterable[DocId]) -> None:
        """Tombstone documents (a split document's pieces go with it). All ids must be live, else
        UnknownDocumentError and nothing changes. Space is reclaimed by ``compact``."""
        if isinstance(ids, (int, str)):
            ids = [ids]
        ids = list(ids)
        with self.writing():
            with self.catalog.write() as c:
                missing, victims = [], set()
                for d in ids:
                    i = Catalog.key_id(c, d) if isinstance(d, str) else _check_int_id(d)
                    fam = Catalog.live_family(c, i) if i is not None else []
                    if not fam or i not in fam:
                        missing.append(d)
                    victims.update(fam)
                if missing:
                    raise UnknownDocumentError(missing)
                c.executemany("UPDATE documents SET deleted = 1, text = NULL WHERE id = ? AND deleted = 0",
                              [(v,) for v in sorted(victims)])  # fmt: skip
        log.info("deleted %d document(s) from %s", len(victims), self.path)

    def compact(self) -> dict[str, int]:
        """Rewrite segments without tombstoned documents, merging adjacent small segments (up to
        ``settings.compact_chunks``). Document order, routing and logits are unchanged. Old files are
        removed only after the catalog commit."""
        before = self.stats()
        rewritten = 0
        with self.writing():
            with self.catalog.read() as c:
                segs = Catalog.segments(c)
                rows = Catalog.all_docs(c)
            by_seg: dict[int, list] = {}
            for r in rows:
                by_seg.setdefault(r.segment, []).append(r)
            groups: list[list[SegmentRow]] = []
            used = 0
            for s in segs:
                live = sum(r.num_chunks for r in by_seg.get(s.id, []) if not r.deleted)
                if not groups or used + live > self.settings.compact_chunks:
                    groups.append([])
                    used = 0
                groups[-1].append(s)
                used += live
            for g in groups:
                dirty = len(g) > 1 or any(r.deleted for s in g for r in by_seg.get(s.id, []))
                if dirty:
                    self._rewrite(g, by_seg)
                    rewritten += len(g)
        after = self.stats()
        return {"segments_before": before["segments"], "segments_after": after["segments"],
                "segments_rewritten": rewritten, "bytes_freed": before["bytes_disk"] - after["bytes_disk"]}  # fmt: skip

    # -- write internals ---------------------------------------------------------------------------
    def _pieces(self, text: str, doc_id: int, parent: int | None, h: str, item: int, next_id: int) -> tuple[list[Piece], int]:
        """Tokenised pieces of one text (split when longer than max_doc_tokens); returns next free id."""
        fmt, tok, limit = self.prompt, self.tokenizer, self.settings.max_doc_tokens
        tokens = tokenize(tok, fmt.format_document(doc_id, text))
        if len(tokens) <= limit:
            return [Piece(item, 0, text, doc_id, parent, h, np.asarray(tokens, dtype=np.int32))], next_id
        if self.settings.on_long == "error":
            raise DocumentTooLongError(
                f"document {doc_id} has {len(tokens)} tokens, more than max_doc_tokens={limit} (on_long='error')"
            )
        parts = split_text(text, lambda t: len(tokenize(tok, fmt.format_document(PLACEHOLDER_GID, t))), limit)
        out = []
        for j, part in enumerate(parts):
            pid = doc_id
            if j:
                pid, next_id = next_id, next_id + 1
            toks = tokenize(tok, fmt.format_document(pid, part))
            out.append(Piece(item, j, part, pid, parent if j == 0 else doc_id, h if j == 0 else text_hash(part),
                             np.asarray(toks, dtype=np.int32)))  # fmt: skip
        log.info("document %d (%d tokens) split into %d pieces", doc_id, len(tokens), len(out))
        return out, next_id

    def _encode_and_commit(self, items: list[list[Piece]], new_keys: dict[int, str], job: str | None,
                           progress: bool | None, replace: list[int] | None = None) -> None:  # fmt: skip
        total_docs = sum(len(p) for p in items)
        total_tokens = sum(p.length for ps in items for p in ps)
        if not total_docs:
            return
        show = (progress if progress is not None else True) and sys.stderr.isatty()
        bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc="encode", disable=not show)
        start, done_docs = time.perf_counter(), 0

        def on_batch(batch: list[Piece]) -> None:
            nonlocal done_docs
            done_docs += len(batch)
            bar.update(sum(p.length for p in batch))
            bar.set_postfix(docs=f"{done_docs}/{total_docs}", docs_s=f"{done_docs / max(time.perf_counter() - start, 1e-9):.1f}")

        try:
            for group in commit_groups(items, self.settings.segment_tokens):
                memory = encode_group(self.model, group, self.settings.batch_tokens, on_batch)
                self._commit(group, memory, new_keys, job, replace)
        finally:
            bar.close()
        log.info("encoded %d document(s), %d tokens in %.1fs", total_docs, total_tokens, time.perf_counter() - start)

    def _commit(self, pieces: list[Piece], memory: CompressedMemory, new_keys: dict[int, str], job: str | None,
                replace: list[int] | None) -> None:  # fmt: skip
        """Write one segment (pieces in segment order = ``memory`` order) and make it visible atomically."""
        info = write_segment(self.path / SEGMENTS_DIR, memory, self.fingerprint)
        pause_point("segment.renamed")
        counts = memory.doc_chunk_counts().tolist()
        starts = memory.doc_chunk_offsets().tolist()
        with self.catalog.write() as c:
            if replace:
                c.executemany("UPDATE documents SET deleted = 1, text = NULL WHERE id = ? AND deleted = 0",
                              [(d,) for d in replace])  # fmt: skip
            seg_id = Catalog.insert_segment(c, info)
            Catalog.insert_pieces(c, seg_id, pieces, starts, counts, new_keys)
            firsts = [p for p in pieces if p.index == 0]
            if job is not None:
                c.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?)", [(job, p.item, p.source_hash, p.doc_id) for p in firsts])
            top = max(p.doc_id for p in pieces) + 1
            nid = int(Catalog.manifest(c)["next_id"])
            Catalog.set_manifest(c, "next_id", max(nid, top))

    def _rewrite(self, group: list[SegmentRow], by_seg: dict[int, list]) -> None:
        """Compaction of consecutive segments into one (or none, when all their documents are dead)."""
        live_rows = [r for s in group for r in by_seg.get(s.id, []) if not r.deleted]
        if live_rows:
            parts = []
            for s in group:
                seg = LoadedSegment.load(self.path / SEGMENTS_DIR, s, self.fingerprint, torch.device("cpu"), "host")
                rows = [r for r in by_seg.get(s.id, []) if not r.deleted]
                if not rows:
                    continue
                full = CompressedMemory(
                    layers={i: _layer(seg, i) for i in seg.routing},
                    chunk_doc=seg.chunk_doc.cpu(),
                    doc_lengths=torch.zeros(seg.num_docs, dtype=torch.long),
                    doc_ids=torch.zeros(seg.num_docs, dtype=torch.long),
                )
                sel = full.select(torch.tensor([r.seg_doc for r in rows]))
                sel.doc_lengths = torch.tensor([r.num_tokens for r in rows])
                sel.doc_ids = torch.tensor([r.id for r in rows])
                parts.append(sel)
            memory = CompressedMemory.cat(parts) if len(parts) > 1 else parts[0]
            info = write_segment(self.path / SEGMENTS_DIR, memory, self.fingerprint)
            counts = memory.doc_chunk_counts().tolist()
            starts = memory.doc_chunk_offsets().tolist()
        old_ids = [s.id for s in group]
        marks = ",".join("?" * len(old_ids))
        with self.catalog.write() as c:
            c.execute(f"DELETE FROM documents WHERE deleted = 1 AND segment IN ({marks})", old_ids)
            if live_rows:
                ord_ = group[0].ord
                c.execute(f"UPDATE segments SET ord = -ord WHERE id IN ({marks})", old_ids)  # free the ord
                seg_id = Catalog.insert_segment(c, info, ord_)
                c.executemany(
                    "UPDATE documents SET segment = ?, seg_doc = ?, chunk_start = ?, num_chunks = ? WHERE segment = ? AND seg_doc = ?",
                    [(seg_id, j, starts[j], counts[j], r.segment, r.seg_doc) for j, r in enumerate(live_rows)],
                )  # fmt: skip
            c.execute(f"DELETE FROM segments WHERE id IN ({marks})", old_ids)
        pause_point("compact.committed")
        for s in group:
            (self.path / SEGMENTS_DIR / s.file).unlink(missing_ok=True)


def _layer(seg: LoadedSegment, i: int):
    from msa.model.memory import LayerMemory

    return LayerMemory(seg.routing[i], seg.keys[i], seg.values[i])


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        if not t.strip():
            raise ValueError(f"text {i} is empty or whitespace only: nothing was stored")
    return texts


def _check_int_id(d: Any) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or int(d) < 0:
        raise TypeError(f"document ids are non-negative ints or strings, got {d!r}")
    return int(d)


def _check_ids(ids: Sequence[DocId] | None, n: int) -> list[DocId | None]:
    if ids is None:
        return [None] * n
    if isinstance(ids, (str, int)):
        raise TypeError("ids must be a list (one per text)")
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} texts")
    out: list[DocId | None] = []
    for d in ids:
        if isinstance(d, str):
            if not d:
                raise ValueError("a string id must not be empty")
            out.append(d)
        else:
            out.append(_check_int_id(d))
    seen, dup = set(), []
    for d in out:
        if d in seen:
            dup.append(d)
        seen.add(d)
    if dup:
        raise DuplicateDocumentError(f"ids repeated within one add: {dup}")
    return out
