"""Training checkpoints: model, optimizer, step / data position and RNG states, written atomically.

Layout of ``CheckpointConfig.dir``::

    step_00000100/   model.pt  optim.pt  meta.json  rng_rank0.pt  rng_rank1.pt ...
    latest           text: the name of the newest complete checkpoint directory

A checkpoint is written into ``step_N.tmp``, fsynced, then renamed to ``step_N``; ``latest`` is replaced
atomically afterwards, so a crash leaves either the previous or the new checkpoint, never a partial one.
The learning-rate schedule is a pure function of the step, so the step restores it exactly.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from msa.memory.files import fsync_dir
from msa.train.parallelize import DistInfo

logger = logging.getLogger(__name__)

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state"]


@dataclass
class TrainState:
    """Progress counters: optimizer steps done and samples consumed (global, over all ranks)."""

    step: int = 0
    data_position: int = 0


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def _save(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _state_dicts(wrapper: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool):
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(wrapper, options=opts)  # keys "model.<name>" (TrainForward)
        return {k.removeprefix("model."): v for k, v in full.items()}, get_optimizer_state_dict(wrapper, optimizer, options=opts)
    return model.state_dict(), optimizer.state_dict()


def latest_checkpoint(directory: str) -> str | None:
    """Path of the newest complete checkpoint in ``directory`` (None if there is none)."""
    marker = os.path.join(directory, "latest")
    if not os.path.exists(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        path = os.path.join(directory, f.read().strip())
    return path if os.path.isdir(path) else None


def save_checkpoint(directory: str, state: TrainState, wrapper: nn.Module, model: nn.Module,
                    optimizer: torch.optim.Optimizer, info: DistInfo, config: dict[str, Any],
                    keep: int = 2, fsdp: bool = False) -> str:  # fmt: skip
    """Write a checkpoint of step ``state.step`` (collective: every rank calls it). Returns its path."""
    name = f"step_{state.step:08d}"
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    if info.is_main:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier(info)
    model_sd, optim_sd = _state_dicts(wrapper, model, optimizer, fsdp)
    _save(rng_state(), os.path.join(tmp, f"rng_rank{info.rank}.pt"))
    if info.is_main:
        _save(model_sd, os.path.join(tmp, "model.pt"))
        _save(optim_sd, os.path.join(tmp, "optim.pt"))
        meta = {"step": state.step, "data_position": state.data_position, "world_size": info.world_size, "config": config}
        _write_text(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=2, default=str))
    _barrier(info)
    if info.is_main:
        fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(directory)
        _write_text(os.path.join(directory, "latest"), name)
        fsync_dir(directory)
        done = sorted(d for d in os.listdir(directory) if d.startswith("step_") and not d.endswith(".tmp"))
        for old in done[: max(len(done) - keep, 0)]:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    _barrier(info)
    return final


def load_checkpoint(path: str, wrapper: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo, fsdp: bool = False) -> TrainState:  # fmt: skip
    """Restore model, optimizer and this rank's RNG states from ``path``; returns the progress."""
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    model_sd = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=False)
    optim_sd = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=False)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(wrapper, {"model." + k: v for k, v in model_sd.items()}, options=opts)
        set_optimizer_state_dict(wrapper, optimizer, optim_sd, options=opts)
    else:
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
    rng_file = os.path.join(path, f"rng_rank{info.rank}.pt")
    rank0 = os.path.join(path, "rng_rank0.pt")
    if not os.path.exists(rng_file) and os.path.exists(rank0):
        logger.warning("%s has no RNG state for rank %d (world size changed?); using rank 0's", path, info.rank)
        rng_file = rank0
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s has no RNG state; the resumed run draws fresh random numbers", path)
    if meta.get("world_size") != info.world_size:
        logger.warning("resuming a %s-rank checkpoint on %d ranks", meta.get("world_size"), info.world_size)
    logger.info("resumed from %s (step %d)", path, meta["step"])
    return TrainState(step=int(meta["step"]), data_position=int(meta["data_position"]))
