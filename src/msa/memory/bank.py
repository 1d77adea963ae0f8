"""MemoryBank: a persistent, crash-safe document memory (DESIGN.md, Storage).

A bank is a directory (``layout``). A write = segment to a temp name, fsync, rename, fsync directory, then one catalog transaction that
makes it visible. Files the catalog does not name (a crash between rename and commit, temp files, old
segments of a compaction that crashed before removing them) are never read and are removed at the
next write.

Ids are the user's (``ids``): an int or a str, kept as given. Re-running a command is safe: ``add``
skips texts already stored under their id (or, for id-less texts, with the same content hash), and
``delete`` reports ids deleted before instead of failing. A split document is one document: its id
names the whole of it (``get_text`` joins its pieces back exactly); the ids of its other pieces are
internal (the engine routes to them; ``user_id`` maps them back).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import safetensors.torch
import torch

from msa.memory import integrity
from msa.memory.access import CONTENT_TIERS, BankSnapshot, LoadedSegment, RoutingPrep
from msa.memory.catalog import CATALOG_NAME, Catalog, Reader, SegmentRow
from msa.memory.encode import DocumentEncoder, tokenizer_fingerprint
from msa.memory.errors import (
    BankCorruptError,
    BankError,
    BankModelMismatch,
    BankReadOnlyError,
    DocumentPieceError,
    LostCommitsError,
    UnknownDocumentError,
)
from msa.memory.files import checksum_bytes
from msa.memory.ids import MAX_ID, DocId, InvalidIdError, check_id, check_ids, check_texts, parse_token
from msa.memory.layout import FORMAT_VERSION, SEGMENTS_DIR, BankExistsError, BankSettings, create_bank_dir
from msa.memory.locking import writer_lock
from msa.memory.writer import AddReport, BankWriter, DeleteReport
from msa.model.memory import PrefixCache, RoutingOptions
from msa.prompt import OFFICIAL, PromptFormat

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0


class MemoryBank:
    """A persistent document memory. Create with ``MemoryBank.create``, reopen with ``MemoryBank.open``.

    Reads (``snapshot``, ``get_text``, ``stats`` ...) see the last committed state; writes (``add``,
    ``update``, ``delete``, ``compact``) take the writer lock (waiting at most ``lock_timeout_s``);
    ``add`` and ``update`` need the model and tokenizer the bank was created with.
    """

    def __init__(self, path: Path, catalog: Catalog, manifest: dict[str, Any], model, tokenizer,
                 device: torch.device, readonly: bool, content_tier: str, routing_dtype: str = "bf16",
                 fp8_rescore: int = 4, lock_timeout_s: float = LOCK_TIMEOUT_S):  # fmt: skip
        self.path = path
        self.catalog = catalog
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.readonly = readonly
        self.content_tier = content_tier
        self.lock_timeout_s = lock_timeout_s
        self.fingerprint: str = manifest["fingerprint"]
        self.prompt = PromptFormat(**manifest["prompt"])
        self.routing_options = RoutingOptions(**manifest["routing"])
        self.router_layers: tuple[int, ...] = tuple(manifest["router_layers"])
        self.model_source: str | None = manifest.get("model_source")
        self.encoder = None if model is None or tokenizer is None else DocumentEncoder(
            model, tokenizer, self.prompt, BankSettings(**manifest["settings"]))  # fmt: skip
        self.writer = BankWriter(path, catalog, self.fingerprint, self.encoder)
        self._settings = BankSettings(**manifest["settings"])
        self.settings = self._settings
        self._lock = threading.RLock()
        self._cache: dict[str, LoadedSegment] = {}
        self._prefix: PrefixCache | None = None
        self._view: BankSnapshot | None = None
        self.routing_dtype = routing_dtype
        self._routing_prep = RoutingPrep.choose(routing_dtype, self.routing_options, device, fp8_rescore)
        if not readonly:
            catalog.on_commit = lambda generation: integrity.record_commit(path, generation)

    @property
    def settings(self) -> BankSettings:
        return self._settings

    @settings.setter
    def settings(self, value: BankSettings) -> None:
        self._settings = value
        if self.encoder is not None:
            self.encoder.settings = value

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
        settings = replace(settings or BankSettings(), **setting_overrides)
        create_bank_dir(path, model, tokenizer, prompt, settings, model_source)
        log.info("created memory bank %s", path)
        return cls.open(path, model, tokenizer, device=device, content_tier=content_tier)

    @classmethod
    def open(cls, path: str | Path, model=None, tokenizer=None, device: str | torch.device | None = None,
             readonly: bool = False, content_tier: str = "host", routing_dtype: str = "bf16",
             fp8_rescore: int = 4, lock_timeout_s: float = LOCK_TIMEOUT_S) -> "MemoryBank":  # fmt: skip
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
            exactly from the raw keys on the host (0: plain fp8 selection).
        lock_timeout_s: how long a write waits for another writer's lock before BankLockedError.
        """
        path = Path(path)
        if not (path / CATALOG_NAME).exists():
            raise BankError(f"{path} is not a memory bank (no {CATALOG_NAME})")
        if content_tier not in CONTENT_TIERS:
            raise ValueError(f"content_tier must be one of {CONTENT_TIERS}, got {content_tier!r}")
        catalog = Catalog(path / CATALOG_NAME, readonly=readonly)
        try:
            with catalog.read() as r:
                manifest = r.manifest()
            if manifest.get("format_version") != FORMAT_VERSION:
                raise BankError(f"{path}: bank format {manifest.get('format_version')}, this library reads "
                                f"{FORMAT_VERSION}: re-create the bank and add its documents again")  # fmt: skip
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
                   fp8_rescore, lock_timeout_s)  # fmt: skip

    def close(self) -> None:
        self._view = None
        self.catalog.close()

    def __enter__(self) -> "MemoryBank":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Live routing slots (a split document counts each piece)."""
        with self.catalog.read() as r:
            return r.num_live()

    @property
    def generation(self) -> int:
        """Number of committed writes; a snapshot taken now has this generation."""
        with self.catalog.read() as r:
            return r.generation()

    def ids(self) -> list[int]:
        """Internal ids of every live routing slot (pieces too) in bank (slot) order."""
        with self.catalog.read() as r:
            return r.live_ids()

    def list_ids(self, offset: int = 0, limit: int | None = None) -> list[DocId]:
        """User ids of the live documents (whole documents, not pieces) in the order they were stored
        (an update stores anew)."""
        with self.catalog.read() as r:
            return [i if key is None else key for i, key in r.live_whole(offset, limit)]

    def documents(self, offset: int = 0, limit: int | None = None) -> Iterator[tuple[DocId, str]]:
        """(user id, whole text) of the live documents, as ``list_ids`` orders them, all from one
        catalog state (for export)."""
        snap = self.catalog.reader()
        try:
            with snap.query() as r:
                whole = r.live_whole(offset, limit)
            for start in range(0, len(whole), 256):
                part = whole[start : start + 256]
                with snap.query() as r:
                    texts = [r.document_text(i) for i, _ in part]
                for (i, key), text in zip(part, texts):
                    yield (i if key is None else key), text  # type: ignore[misc]
        finally:
            snap.close()

    def _internal(self, r: Reader, doc_id: DocId) -> int | None:
        """The internal id a user id names (live or not), None if it names none."""
        doc_id = check_id(doc_id)
        if isinstance(doc_id, str):
            return r.key_id(doc_id)
        return None if r.key_of(doc_id) is not None else doc_id

    def resolve(self, doc_id: DocId) -> int:
        """Internal id of a user id (UnknownDocumentError if it never named a document)."""
        with self.catalog.read() as r:
            i = self._internal(r, doc_id)
        if i is None:
            raise UnknownDocumentError([doc_id])
        return i

    def get_text(self, doc_id: DocId) -> str:
        """The whole text of a live document, exactly as given (a split document's pieces joined back;
        the internal id of a piece gives that piece). Checksum-verified."""
        with self.catalog.read() as r:
            i = self._internal(r, doc_id)
            text = None if i is None else r.document_text(i)
        if text is None:
            raise UnknownDocumentError([doc_id])
        return text

    def parent(self, doc_id: DocId) -> int | None:
        """The first piece's id for a piece of a split document, else None."""
        with self.catalog.read() as r:
            i = self._internal(r, doc_id)
            row = None if i is None else r.live_doc(i)
        if row is None:
            raise UnknownDocumentError([doc_id])
        return row.parent

    def user_id(self, internal: int) -> DocId:
        """The user id of an internal (routed) id; a piece's is its document's."""
        with self.catalog.read() as r:
            return r.user_id(int(internal))

    def parse_id(self, token: str) -> DocId:
        """The id a command-line / URL token names in this bank: a str id the bank holds, else an int
        (digits) it holds; "str:x" / "int:5" force the type. Both held: BankError asking for a prefix;
        none: UnknownDocumentError. Deleted documents still count as held (a delete can be re-run)."""
        kind, rest = parse_token(token)
        digits = rest.isascii() and rest.isdigit()
        if kind is int and not digits:
            raise InvalidIdError(f"{token!r}: an int id is written in digits")
        with self.catalog.read() as r:
            as_str = kind in (None, str) and bool(rest) and r.key_id(rest) is not None
            n = int(rest) if digits and int(rest) <= MAX_ID else None
            as_int = kind in (None, int) and n is not None and r.key_of(n) is None and (
                r.live_doc(n) is not None or r.retired(n))  # fmt: skip
        if as_str and as_int:
            raise BankError(f'{self.path}: "{rest}" names both the string id "{rest}" and the int id {rest}: '
                            f'write "str:{rest}" or "int:{rest}"')  # fmt: skip
        if as_str:
            return rest
        if as_int:
            return n  # type: ignore[return-value]
        raise UnknownDocumentError([token])

    def stats(self) -> dict[str, Any]:
        """documents (whole, live), slots (routing rows: pieces count each), tokens, chunks (live);
        deleted (tombstones awaiting compaction); segments and their bytes: bytes_routing /
        bytes_content (tensor bytes), bytes_disk (files); generation; model (the model source)."""
        with self.catalog.read() as r:
            out: dict[str, Any] = r.counts()
            out["generation"] = r.generation()
        out["model"] = self.model_source
        return out

    @property
    def prefix(self) -> PrefixCache:
        """Template-prefix K/V (every layer, [Hkv, P, D]) on the bank's device; checksum-verified."""
        if self._prefix is None:
            self._prefix = self.load_prefix().to(self.device)
        return self._prefix

    def load_prefix(self) -> PrefixCache:
        """Read and verify the prefix file (CPU)."""
        with self.catalog.read() as r:
            info = r.manifest()["prefix"]
        path = self.path / info["file"]
        data = path.read_bytes() if path.exists() else b""
        if len(data) != info["bytes"] or checksum_bytes(data) != info["checksum"]:
            raise BankCorruptError(str(path), "prefix file is missing, truncated or corrupt")
        t = safetensors.torch.load(data)
        n = sum(1 for k in t if k.endswith(".keys"))
        return PrefixCache(token_ids=t["token_ids"], keys=[t[f"{i}.keys"] for i in range(n)],
                           values=[t[f"{i}.values"] for i in range(n)])  # fmt: skip

    def snapshot(self, tile_chunks: int | None = None, verify: bool = True) -> BankSnapshot:
        """A consistent MemoryAccess over the live documents at the current catalog state; its
        ``text`` / ``user_id`` answer from that same state however the bank changes meanwhile.

        With default arguments the last snapshot is returned again while no write has committed.
        Segments already loaded by an earlier snapshot of this bank object are shared; new ones are
        loaded (checksum-verified unless ``verify=False``). A segment removed by a concurrent
        compaction between the catalog read and the load makes it read the catalog again.
        """
        default = tile_chunks is None and verify
        view = self._view
        if default and view is not None and view.generation == self.generation:
            return view
        for attempt in range(10):
            cat = self.catalog.reader()
            try:
                with cat.query() as r:
                    segs = r.segments()
                    rows = r.all_docs()
                loaded = [self._load_segment(s, verify) for s in segs]
                snap = BankSnapshot(
                    loaded, rows, {s.id: i for i, s in enumerate(segs)}, cat.generation, self.routing_options,
                    self.device, tile_chunks or self.settings.tile_chunks, prefix=self.prefix,
                    rescore=self._routing_prep.rescore if self._routing_prep is not None else 0, catalog=cat,
                )  # fmt: skip
            except BankCorruptError as e:
                cat.close()
                if attempt < 9 and not (self.path / SEGMENTS_DIR / Path(e.file).name).exists():
                    continue  # removed after a compaction committed: the next read will not name it
                raise
            except BaseException:
                cat.close()
                raise
            with self._lock:
                keep = {s.file for s in segs}
                self._cache = {f: v for f, v in self._cache.items() if f in keep}
                if default:
                    self._view = snap
            return snap
        raise BankError(f"{self.path}: could not take a snapshot (segments kept disappearing)")

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
        """Verify every file of the bank (``integrity.check``); raises BankCorruptError naming the first
        bad file; returns segments, documents and orphan files."""
        return integrity.check(self)

    def accept_lost_commits(self) -> list[str]:
        """After ``LostCommitsError``: go on with the catalog as it is (``integrity.accept_lost_commits``)."""
        if self.readonly:
            raise BankReadOnlyError(f"{self.path} was opened read-only")
        with self._lock, writer_lock(self.path, self.lock_timeout_s):
            return integrity.accept_lost_commits(self)

    # -- writes ------------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive writer: thread lock + the writer lock file; then the lost-commit check and the
        removal of files the catalog does not name. Every write of this bank holds it; code that
        commits segments itself (parallel encode) holds it too."""
        if self.readonly:
            raise BankReadOnlyError(f"{self.path} was opened read-only")
        with self._lock, writer_lock(self.path, self.lock_timeout_s):
            self._view = None  # a cached snapshot would hold its catalog state (and the WAL) after the write
            integrity.sweep_orphans(self)
            yield

    def add_documents(self, texts: Sequence[str], ids: Sequence[DocId | None] | None = None, *,
                      on_duplicate: str | None = None, job: str | None = None,
                      progress: bool | None = None) -> AddReport:  # fmt: skip
        """Encode and store documents; returns an ``AddReport`` (ids as given; id-less texts get ints).

        ids: None, or one per text: an int in [0, 10**18), a non-empty str, or None (the bank gives an
            int). on_duplicate: for id-less texts "skip" (default: a text already stored, by content
            hash, is reported unchanged under its id) or "error"; with explicit ids the same text is
            unchanged and another text is a DuplicateDocumentError unless "replace" (an update).
        job: records every committed item (job, position, text hash) so that a re-run of the same job
            returns the same ids even for texts deleted since.
        Raises ValueError (empty text), DuplicateDocumentError, DocumentTooLongError before storing
        anything; an interrupted add keeps every batch committed so far (a re-run completes it).
        """
        texts = check_texts(texts)
        keys = check_ids(ids, len(texts))
        if job is not None and (not isinstance(job, str) or not job):
            raise ValueError("job must be a non-empty string")
        with self.writing():
            plan = self.writer.plan(texts, keys, on_duplicate, job)
            self.writer.run(plan, self.settings.segment_tokens, progress)
        return plan.report

    def add(self, texts: Sequence[str], ids: Sequence[DocId | None] | None = None, **kw: Any) -> list[DocId]:
        """``add_documents(...).ids``."""
        return self.add_documents(texts, ids, **kw).ids

    def update(self, doc_id: DocId, text: str, *, progress: bool | None = False) -> DocId:
        """Replace a live document's text; re-encodes only it (and its pieces). Same text: no-op."""
        (text,) = check_texts([text])
        doc_id = check_id(doc_id)
        with self.writing():
            with self.catalog.read() as r:
                i = self._internal(r, doc_id)
                row = None if i is None else r.live_doc(i)
                if row is not None and row.parent is not None:
                    raise DocumentPieceError(f"{self.path}: id {doc_id!r} is a piece of document "
                                             f"{r.user_id(row.parent)!r}: update that document")  # fmt: skip
            if row is None:
                raise UnknownDocumentError([doc_id])
            plan = self.writer.plan([text], [doc_id], "replace")
            self.writer.run(plan, self.settings.segment_tokens, progress)
        return doc_id

    def delete(self, ids: DocId | Iterable[DocId]) -> DeleteReport:
        """Tombstone documents (all pieces of a split document). Ids of documents deleted before are
        reported in ``already_deleted``; an id that never named a document: UnknownDocumentError and
        nothing changes; the id of a piece (not the document's): DocumentPieceError naming the
        document. Space is reclaimed by ``compact``."""
        if isinstance(ids, (int, str, np.integer)):
            ids = [ids]  # type: ignore[list-item]
        ids = list(dict.fromkeys(check_id(d) for d in ids))  # type: ignore[union-attr]
        report = DeleteReport([], [])
        with self.writing():
            victims: list[int] = []
            retire: list[int] = []
            missing: list[DocId] = []
            with self.catalog.read() as r:
                for d in ids:
                    i = self._internal(r, d)
                    row = None if i is None else r.live_doc(i)
                    if row is None:
                        gone = i is not None and (isinstance(d, str) or r.retired(i))
                        (report.already_deleted if gone else missing).append(d)
                    elif row.parent is not None:
                        raise DocumentPieceError(f"{self.path}: id {d!r} is a piece of document "
                                                 f"{r.user_id(row.parent)!r}: delete that document")  # fmt: skip
                    else:
                        victims += [f.id for f in r.family(row.id)]
                        retire.append(row.id)
                        report.deleted.append(d)
            if missing:
                raise UnknownDocumentError(missing)
            if victims:
                with self.catalog.write() as w:
                    w.tombstone(victims, retire)
        log.info("deleted %d document(s) (%d rows) from %s", len(report.deleted), len(victims), self.path)
        return report

    def compact(self) -> dict[str, int]:
        """Rewrite segments without tombstoned documents (``compaction.compact``). Document order,
        routing and logits are unchanged; old files are removed only after the catalog commit."""
        from msa.memory.compaction import compact

        return compact(self)


__all__ = ["BankExistsError", "BankSettings", "DocId", "LostCommitsError", "MemoryBank", "SEGMENTS_DIR"]
