"""Process group setup and data parallelism, applied from outside the model (msa.model stays single-device).

Launched with torchrun (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in the environment) the default
process group is initialised (NCCL on CUDA, gloo on CPU); a plain ``python`` launch is one process
and creates no group.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from msa.model.context import PackedBatch
from msa.model.modeling import MSAForCausalLM, TrainOutput
from msa.train.config import SpeedConfig
from msa.train.fast import FastTrainOutput, forward_fast

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "TrainForward", "parallelize", "destroy_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the default group from the torchrun environment (if any) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d/%d: process group initialised (%s)", rank, world, backend)
    return DistInfo(rank, world, local, dev)


def destroy_distributed() -> None:
    """Tear the process group down once every rank is done: destroying it while a peer still has
    collectives in flight (FSDP2 on gloo) aborts that peer's process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class TrainForward(nn.Module):
    """Routes ``forward`` to ``MSAForCausalLM.forward_train`` so DDP / FSDP hooks (which wrap
    ``forward``) see the training forward."""

    def __init__(self, model: MSAForCausalLM, speed: SpeedConfig | None = None):
        super().__init__()
        self.model = model
        self.speed = speed or SpeedConfig()

    def forward(self, batch: PackedBatch, logits_index: Tensor | None = None,
                targets: Tensor | None = None) -> TrainOutput | FastTrainOutput:  # fmt: skip
        """The reference forward (logits at ``logits_index``), or on the fast path the forward with the
        summed LM loss against ``targets`` (FastTrainOutput)."""
        if self.speed.path == "fast":
            if logits_index is None or targets is None:
                raise ValueError("the fast training path needs logits_index and targets")
            return forward_fast(self.model, batch, logits_index, targets, self.speed)
        return self.model.forward_train(batch, logits_index)


def parallelize(model: MSAForCausalLM, info: DistInfo, mode: str = "ddp", speed: SpeedConfig | None = None) -> nn.Module:
    """Wrap the model for training: TrainForward, inside DDP or FSDP2 when there are several ranks.

    FSDP2 shards every decoder layer and then the root (embeddings, final norm, head)."""
    wrapper = TrainForward(model, speed)
    if not info.distributed:
        return wrapper
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(wrapper, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(wrapper)
        return wrapper
    raise ValueError(f"unknown data-parallel mode {mode!r}")


def unwrap(module: nn.Module) -> MSAForCausalLM:
    """The MSAForCausalLM inside a (DDP-wrapped) TrainForward."""
    inner = getattr(module, "module", module)
    return inner.model  # type: ignore[return-value]
