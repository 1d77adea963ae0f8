"""Immutable segment files: one safetensors file per committed add batch.

Layout of a segment holding n documents and C chunks (chunks of a document are contiguous, documents
in the order of ``doc_ids``):
    "{layer}.routing_keys", "{layer}.keys", "{layer}.values": [C, Hkv, D] for every router layer
    "chunk_doc":   [C] int64, local document index 0..n-1 of every chunk
    "doc_ids":     [n] int64, bank document id of every local document
    "doc_lengths": [n] int64, tokens of every local document
Metadata: format, model fingerprint, router layers.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

from msa.memory.errors import BankCorruptError
from msa.memory.files import atomic_write, checksum_bytes, checksum_file
from msa.model.memory import CompressedMemory

SEGMENT_FORMAT = "msa-segment-1"
SUFFIX = ".safetensors"

_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class SegmentInfo:
    """What the catalog records about a written segment file."""

    file: str
    checksum: str
    bytes: int
    num_docs: int
    num_chunks: int
    bytes_routing: int
    bytes_content: int
    fingerprint: str


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex}{SUFFIX}"


def write_segment(directory: Path, memory: CompressedMemory, fingerprint: str, generation: int = 0) -> SegmentInfo:
    """Write ``memory`` (documents in slot order, ``doc_ids`` = bank ids) durably as a new segment.

    generation: the catalog generation of the commit that will make it visible (the lost-commit check
    compares it with the catalog's)."""
    tensors: dict[str, Tensor] = {}
    routing = content = 0
    for layer, lm in sorted(memory.layers.items()):
        for name, t in zip(("routing_keys", "keys", "values"), lm.tensors()):
            t = t.detach().contiguous().cpu()
            tensors[f"{layer}.{name}"] = t
            nbytes = t.numel() * t.element_size()
            if name == "routing_keys":
                routing += nbytes
            else:
                content += nbytes
    tensors["chunk_doc"] = memory.chunk_doc.cpu().long().contiguous()
    tensors["doc_ids"] = memory.doc_ids.cpu().long().contiguous()
    tensors["doc_lengths"] = memory.doc_lengths.cpu().long().contiguous()
    meta = {"format": SEGMENT_FORMAT, "fingerprint": fingerprint, "layers": json.dumps(sorted(memory.layers)),
            "generation": str(generation)}
    data = safetensors.torch.save(tensors, metadata=meta)
    name = new_segment_name()
    atomic_write(directory / name, data, pause_name="segment.partial")
    return SegmentInfo(
        file=name, checksum=checksum_bytes(data), bytes=len(data), num_docs=memory.num_docs,
        num_chunks=memory.num_chunks, bytes_routing=routing, bytes_content=content, fingerprint=fingerprint,
    )  # fmt: skip


def verify_segment(path: Path, checksum: str, nbytes: int, full: bool = True) -> None:
    """Raise BankCorruptError (naming the file) if it is missing, of the wrong size or checksum."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise BankCorruptError(str(path), "segment file is missing") from e
    if size != nbytes:
        raise BankCorruptError(str(path), f"size {size} bytes, catalog says {nbytes} (truncated or overwritten)")
    if full and checksum_file(path) != checksum:
        raise BankCorruptError(str(path), "checksum mismatch (corrupt segment)")


def read_header(path: Path) -> tuple[dict, int]:
    """Parse the safetensors header: (tensor entries incl. ``__metadata__``, byte offset of the data)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return header, 8 + n
    except (OSError, ValueError, struct.error) as e:
        raise BankCorruptError(str(path), f"unreadable segment header ({e})") from e


def load_segment(path: Path, checksum: str, nbytes: int, verify: bool = True) -> dict[str, Tensor]:
    """Read a whole segment into memory, checking size and (``verify``) checksum on the same bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise BankCorruptError(str(path), "segment file is missing") from e
    if len(data) != nbytes:
        raise BankCorruptError(str(path), f"size {len(data)} bytes, catalog says {nbytes} (truncated or overwritten)")
    if verify and checksum_bytes(data) != checksum:
        raise BankCorruptError(str(path), "checksum mismatch (corrupt segment)")
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types
        raise BankCorruptError(str(path), f"not a valid segment ({e})") from e


def map_segment(path: Path, checksum: str, nbytes: int, verify: bool = True) -> dict[str, Tensor]:
    """Memory-map a segment: the returned tensors read from the file on access (disk tier)."""
    verify_segment(path, checksum, nbytes, full=verify)
    header, start = read_header(path)
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable view, the file is never changed
    except FileNotFoundError as e:  # removed by a compaction since the check above
        raise BankCorruptError(str(path), "segment file is missing") from e
    out: dict[str, Tensor] = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        dtype = _DTYPES[e["dtype"]]
        raw = torch.from_numpy(mm[start + b : start + end])
        if not raw.numel():
            out[name] = torch.empty(e["shape"], dtype=dtype)
            continue
        try:
            out[name] = raw.view(dtype).view(e["shape"])
        except RuntimeError:  # misaligned for the dtype: small tensors only in practice, copy them
            out[name] = raw.clone().view(dtype).view(e["shape"])
    return out


def segment_generation(path: Path) -> int | None:
    """The commit generation a segment file was written for (None: unreadable or not recorded)."""
    try:
        return int(segment_metadata(path)["generation"])
    except (BankCorruptError, KeyError, ValueError):
        return None


def segment_metadata(path: Path) -> dict[str, str]:
    header, _ = read_header(path)
    return header.get("__metadata__", {}) or {}
