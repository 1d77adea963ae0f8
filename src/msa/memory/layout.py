"""The layout of a bank directory, its write settings, and building a new one.

    catalog.sqlite        documents, text, ranges, tombstones, string keys, add jobs, manifest (WAL)
    prefix.safetensors    template-prefix K/V of every layer (written once, at create)
    segments/seg-*.safetensors   immutable pooled tensors, one per committed add batch
    writer.lock           flock held by the (single) writer during a write
    committed.json        the generation of the last commit (the lost-commit check, ``integrity``)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch

from msa.memory.catalog import CATALOG_NAME, Catalog
from msa.memory.encode import tokenize, tokenizer_fingerprint
from msa.memory.errors import BankError
from msa.memory.files import TMP_PREFIX, atomic_write, checksum_bytes, fsync_dir
from msa.memory.locking import LOCK_NAME
from msa.prompt import PromptFormat

FORMAT_VERSION = 2
PREFIX_NAME = "prefix.safetensors"
SEGMENTS_DIR = "segments"


class BankExistsError(BankError, FileExistsError):
    """``create`` of a path that holds something (or was created by another process meanwhile)."""


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


def create_bank_dir(path: Path, model, tokenizer, prompt: PromptFormat, settings: BankSettings,
                    model_source: str | None) -> None:  # fmt: skip
    """Build an empty bank at ``path`` (must not exist, or be an empty directory): prefix encoded once,
    manifest, empty catalog. Built under a temporary name and renamed into place, so a crash leaves no
    half-created bank; BankExistsError when ``path`` holds something or another create won the race."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BankExistsError(f"{path} exists and is not an empty directory")
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
        try:
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
        except OSError as e:  # another create of the same path won the race
            raise BankExistsError(f"{path} was created by another process meanwhile ({e.strerror})") from e
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
