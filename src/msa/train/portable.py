"""Portable training checkpoints: a checkpoint packed small enough to travel, and unpacked to resume.

A training run longer than one machine lease continues on a fresh machine from what was brought back
and sent again, through size limits (for the device machines here: files of at most 16 MiB coming back,
64 MiB travelling with the whole working tree). ``pack_checkpoint`` writes one checkpoint
(``msa.train.checkpoint`` layout) as a directory of parts:

    manifest.json   step, data position, world size, the parts and their SHA-256, the encoding
    meta.json       the checkpoint's own meta.json (config included)
    model.pt.NNN    the model state dict, bit-exact, split into parts of at most ``part_bytes``
    optim.pt.NNN    the optimizer state dict, compacted (below), and every rank's RNG state file
                    (``rng_rankR.pt``, as saved), split likewise

Compaction of Adam's state (the only lossy step; the weights stay exact): the first moments
(``exp_avg``) become int8 with one float32 scale per block of ``block`` values (absmax/127), the
second moments (``exp_avg_sq``) become bfloat16 (relative error < 2^-8: a quantised second moment
near zero would turn into a huge step, so it keeps its range). Every other tensor stays as it is.
A 3.6M-parameter model: 43 MB of checkpoint -> 25 MB packed. ``unpack_checkpoint`` checks the
hashes, restores float32 moments and writes an ordinary checkpoint that ``msa train`` resumes from.
Four files for a one-rank run, whatever the world size (the device machines return at most 8 files).
Packs of schema 1 (RNG states as files of their own) unpack too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from msa.memory.files import fsync_dir
from msa.train.checkpoint import _write_text, latest_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["pack_checkpoint", "unpack_checkpoint", "PACK_SCHEMA"]

PACK_SCHEMA = "msa.train.portable/2"
_SCHEMAS = ("msa.train.portable/1", PACK_SCHEMA)  # 1: rng_rankR.pt files beside the parts
DEFAULT_PART_BYTES = 15 << 20  # under 16 MiB: one file that comes back from the device machine


def _int8_blocks(t: Tensor, block: int) -> dict[str, Any]:
    flat = t.detach().float().flatten()
    pad = (-flat.numel()) % block
    rows = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    scale = rows.abs().amax(1).clamp_min(1e-30) / 127.0
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"__int8_blocks__": True, "q": q, "scale": scale, "shape": list(t.shape), "dtype": str(t.dtype)}


def _from_int8_blocks(d: dict[str, Any]) -> Tensor:
    n = 1
    for s in d["shape"]:
        n *= s
    flat = (d["q"].float() * d["scale"][:, None]).flatten()[:n]
    return flat.view(d["shape"]).to(getattr(torch, d["dtype"].removeprefix("torch.")))


def _compact(obj: Any, block: int, key: str = "") -> Any:
    """Adam moments made small (module docstring); everything else unchanged."""
    if isinstance(obj, dict):
        return {k: _compact(v, block, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_compact(v, block) for v in obj]
    if isinstance(obj, Tensor) and obj.is_floating_point() and obj.numel() > 1:
        if key == "exp_avg":
            return _int8_blocks(obj, block)
        if key == "exp_avg_sq":
            return {"__bf16__": True, "t": obj.to(torch.bfloat16), "dtype": str(obj.dtype)}
    return obj


def _expand(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get("__int8_blocks__"):
            return _from_int8_blocks(obj)
        if obj.get("__bf16__"):
            return obj["t"].to(getattr(torch, obj["dtype"].removeprefix("torch.")))
        return {k: _expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v) for v in obj]
    return obj


def _write_parts(data: bytes, out: Path, stem: str, part_bytes: int) -> list[dict[str, Any]]:
    parts = []
    for i in range(0, max(len(data), 1), part_bytes):
        name = f"{stem}.{i // part_bytes:03d}"
        chunk = data[i : i + part_bytes]
        (out / name).write_bytes(chunk)
        parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def _read_parts(src: Path, parts: list[dict[str, Any]]) -> bytes:
    chunks = []
    for p in parts:
        path = src / p["file"]
        if not path.exists():
            raise ValueError(f"{src}: part {p['file']} is missing")
        chunk = path.read_bytes()
        if hashlib.sha256(chunk).hexdigest() != p["sha256"]:
            raise ValueError(f"{src}: part {p['file']} is damaged (its SHA-256 does not match the manifest)")
        chunks.append(chunk)
    return b"".join(chunks)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _resolve(checkpoint: str | os.PathLike[str]) -> Path:
    """A step directory, or a checkpoint directory (its newest complete step)."""
    path = Path(checkpoint)
    if (path / "meta.json").exists():
        return path
    newest = latest_checkpoint(str(path))
    if newest is None:
        raise ValueError(f"{path} holds no complete training checkpoint")
    return Path(newest)


def pack_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    part_bytes: int = DEFAULT_PART_BYTES, block: int = 256, label: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Pack a checkpoint (a step directory, or the newest in a checkpoint directory) into ``out_dir``
    (replaced); ``label`` (e.g. the recipe's name) is kept in the manifest. Returns the manifest."""
    src = _resolve(checkpoint)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = json.loads((src / "meta.json").read_text(encoding="utf-8"))
    model_bytes = (src / "model.pt").read_bytes()
    optim = torch.load(src / "optim.pt", map_location="cpu", weights_only=False)
    manifest: dict[str, Any] = {
        "schema": PACK_SCHEMA, "source": src.name, "step": meta["step"], "data_position": meta["data_position"],
        "world_size": meta.get("world_size"), "block": block,
        "model": _write_parts(model_bytes, tmp, "model.pt", part_bytes),
        "rng": sorted(p.name for p in src.glob("rng_rank*.pt")), "label": label,
    }  # fmt: skip
    rng = {name: (src / name).read_bytes() for name in manifest["rng"]}
    manifest["optim"] = _write_parts(_torch_bytes({"optim": _compact(optim, block), "rng": rng}), tmp, "optim.pt",
                                     part_bytes)  # fmt: skip
    shutil.copyfile(src / "meta.json", tmp / "meta.json")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    total = sum(p["bytes"] for p in manifest["model"] + manifest["optim"])
    logger.info("packed %s (step %d) into %s: %.1f MB", src, meta["step"], out, total / 1e6)
    return manifest


def unpack_checkpoint(packed: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str]) -> str:
    """Restore a packed checkpoint as the newest checkpoint of ``checkpoint_dir`` (``msa train`` with
    ``checkpoint.dir`` there resumes from it). Returns the step directory written."""
    src = Path(packed)
    if not (src / "manifest.json").exists():
        raise ValueError(f"{src} is not a packed checkpoint (no manifest.json)")
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("schema") not in _SCHEMAS:
        raise ValueError(f"{src}: unknown packed-checkpoint schema {manifest.get('schema')!r}")
    model_bytes = _read_parts(src, manifest["model"])
    optim = torch.load(io.BytesIO(_read_parts(src, manifest["optim"])), map_location="cpu", weights_only=False)
    if manifest["schema"] == PACK_SCHEMA:
        optim, rng = optim["optim"], optim["rng"]
    else:
        rng = {name: (src / name).read_bytes() for name in manifest["rng"] if (src / name).exists()}
        if len(rng) < len(manifest["rng"]):
            logger.warning("%s lacks RNG state files %s; the resumed run draws fresh random numbers", src,
                           sorted(set(manifest["rng"]) - set(rng)))  # fmt: skip
    optim = _expand(optim)
    dest = Path(checkpoint_dir)
    name = f"step_{int(manifest['step']):08d}"
    tmp = dest / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(model_bytes)
    torch.save(optim, tmp / "optim.pt")
    shutil.copyfile(src / "meta.json", tmp / "meta.json")
    for file, data in rng.items():
        (tmp / file).write_bytes(data)
    fsync_dir(str(tmp))
    final = dest / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(str(dest))
    _write_text(str(dest / "latest"), name)  # atomic, as save_checkpoint writes it
    fsync_dir(str(dest))
    logger.info("unpacked %s into %s (step %d)", src, final, manifest["step"])
    return str(final)
