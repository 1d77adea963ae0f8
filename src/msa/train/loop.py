"""The training loop: phases, curriculum, accumulation, autocast, clipping, checkpoints, logging, DDP/FSDP2.

Data assignment: step s consumes the global samples [p, p + G) with p = ``data_position`` and
G = micro_batch_size * grad_accum * world_size; micro-batch m of rank r holds samples
p + (m * world_size + r) * micro_batch_size + [0, micro_batch_size). The loss of a step is normalised
by global counts (target tokens, aux pairs) so that any split over ranks and micro-batches trains
exactly like one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from msa.train.build import build_collator, build_model, build_source, build_tokenizer
from msa.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from msa.train.collator import Collator, TrainBatch
from msa.train.config import TrainConfig
from msa.train.data import SampleSource, TrainSample
from msa.train.fast import apply_speed
from msa.train.export import copy_tokenizer, write_model_dir
from msa.train.objective import LossWeights, Metrics, Objective, PendingMetrics
from msa.train.parallelize import DistInfo, init_distributed, parallelize
from msa.train.schedule import lr_at, num_docs_at, phase_at, stage_at, weights_at

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "evaluate"]

LOG_SECONDS = 30.0


def _window_means(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each loss / recall metric over ``records`` (NaN entries left out)."""
    keys = [k for k in records[-1] if k in ("loss", "lm_loss", "aux_loss") or k.startswith("recall@")]
    out = {}
    for k in keys:
        vals = [r[k] for r in records if k in r and not math.isnan(r[k])]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _micro_offsets(micro: int, accum: int, world: int, rank: int) -> list[int]:
    """Where rank ``rank``'s micro-batches start inside a step's global batch (the module docstring's
    assignment: micro-batch m of rank r is samples (m * world + r) * micro + [0, micro))."""
    return [(m * world + rank) * micro for m in range(accum)]


class _StepBatches(torch.utils.data.Dataset):
    """Item k = the micro-batches of global step ``first_step + k`` (a pure function of the step, so
    DataLoader workers can build them ahead of the training process)."""

    def __init__(self, trainer: Trainer, first_step: int, first_position: int):
        self.source, self.collator = trainer.source, trainer.collator
        self.curriculum = trainer.config.data.curriculum
        self.mb, self.accum = trainer.config.data.micro_batch_size, trainer.config.data.grad_accum
        self.rank, self.world = trainer.info.rank, trainer.info.world_size
        self.first_step, self.first_position = first_step, first_position
        self.total = trainer.config.schedule.total_steps
        self.global_batch = trainer.global_batch

    def __len__(self) -> int:
        return max(0, self.total - self.first_step)

    def __getitem__(self, k: int) -> list[TrainBatch]:
        step = self.first_step + k
        pos = self.first_position + k * self.global_batch
        stage = stage_at(self.curriculum, step)
        sample = self.source.sample  # type: ignore[attr-defined]
        return [self.collator([sample(pos + o + i, stage.num_docs) for i in range(self.mb)], stage.max_tokens)
                for o in _micro_offsets(self.mb, self.accum, self.world, self.rank)]  # fmt: skip


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """Owns the model, optimizer, data stream and progress of one training run.

    Args:
        config: the run configuration (validated here).
        tokenizer / source: override what the config would build (tests, custom data).
    """

    def __init__(self, config: TrainConfig, tokenizer=None, source: SampleSource | None = None):
        config.validate()
        self.config = config
        self.info: DistInfo = init_distributed(config.parallel.device)
        if config.parallel.threads:
            torch.set_num_threads(config.parallel.threads)
        _seed_all(config.seed)
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config.data, self.info)
        self._tokenizer_dir = None if tokenizer is not None else config.data.tokenizer  # copied into checkpoints
        self.model = build_model(config.model).to(self.info.device)
        if config.data.target_format == "interleave_named":  # the saved model carries the protocol it learnt
            self.model.config.policy.doc_choice = "routed"  # its requests are routed on their own
        vocab = len(self.tokenizer) if hasattr(self.tokenizer, "__len__") else None
        if vocab is not None and vocab > self.model.config.vocab_size:
            raise ValueError(f"tokenizer has {vocab} tokens but the model's vocab_size is {self.model.config.vocab_size}")
        self.fsdp = self.info.distributed and config.parallel.data_parallel == "fsdp"
        apply_speed(self.model, config.speed)
        self.wrapper: nn.Module = parallelize(self.model, self.info, config.parallel.data_parallel, config.speed)
        self.params = [p for p in self.wrapper.parameters() if p.requires_grad]
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr_at(config.schedule, 0), betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay,
            fused=self.info.device.type == "cuda" and not self.fsdp or None,  # one kernel per step, not per tensor
        )
        self.objective = Objective(self.model.config, getattr(self.model, "b", None), config.aux_layers,
                                   config.aux_negatives)  # fmt: skip
        self.collator: Collator = build_collator(config, self.tokenizer, self.model)
        self.source: SampleSource = source if source is not None else build_source(config.data)
        self.state = TrainState()
        self._stream: tuple[int, int | None, Iterator[TrainSample]] | None = None
        self._prefetch: tuple[int, Iterator[list[TrainBatch]]] | None = None
        if config.data.workers and not hasattr(self.source, "sample"):
            logger.warning("data.workers=%d ignored: the %s source has no random access", config.data.workers,
                           config.data.source)  # fmt: skip
        ck = config.checkpoint
        if ck.dir and ck.resume:
            path = latest_checkpoint(ck.dir)
            if path is not None:
                self.state = load_checkpoint(path, self.wrapper, self.model, self.optimizer, self.info, self.fsdp)
        n = sum(p.numel() for p in self.model.parameters())
        logger.info("model: %.2fM parameters on %s, %d rank(s)", n / 1e6, self.info.device, self.info.world_size)

    # -- data ------------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        d = self.config.data
        return d.micro_batch_size * d.grad_accum * self.info.world_size

    def _samples(self, start: int, count: int, num_docs: int | None) -> list[TrainSample]:
        """Global samples [start, start + count) of the current stream."""
        src = self.source
        if hasattr(src, "sample"):
            return [src.sample(i, num_docs) for i in range(start, start + count)]  # type: ignore[attr-defined]
        if self._stream is None or self._stream[0] != start or self._stream[1] != num_docs:
            self._stream = (start, num_docs, src.iterate(start, num_docs))
        out = list(itertools.islice(self._stream[2], count))
        self._stream = (start + count, num_docs, self._stream[2])
        return out

    def _micro_batches(self, num_docs: int) -> list[TrainBatch]:
        d, w, r = self.config.data, self.info.world_size, self.info.rank
        if d.workers and hasattr(self.source, "sample"):
            return self._prefetched()
        mb = d.micro_batch_size
        every = self._samples(self.state.data_position, self.global_batch, num_docs)
        max_tokens = stage_at(d.curriculum, self.state.step).max_tokens
        return [self.collator(every[o : o + mb], max_tokens) for o in _micro_offsets(mb, d.grad_accum, w, r)]

    def _prefetched(self) -> list[TrainBatch]:
        """The current step's micro-batches from the worker processes (restarted if the step moved)."""
        step = self.state.step
        if self._prefetch is None or self._prefetch[0] != step:
            ds = _StepBatches(self, step, self.state.data_position)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.config.data.workers,
                                                 prefetch_factor=4, persistent_workers=False)  # fmt: skip
            self._prefetch = (step, iter(loader))
        batches = next(self._prefetch[1])
        self._prefetch = (step + 1, self._prefetch[1])
        return batches

    # -- one step ----------------------------------------------------------------------------------
    def _autocast(self):
        mode = self.config.parallel.autocast
        dev = self.info.device.type
        on = mode == "bf16" or (mode == "auto" and dev == "cuda")
        return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=on)

    def _global_sum(self, values: list[float]) -> list[float]:
        if not self.info.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.info.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.cpu().tolist()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns the step's metrics (global means)."""
        t0 = time.perf_counter()
        cfg, step = self.config, self.state.step
        lr = lr_at(cfg.schedule, step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        weights: LossWeights = weights_at(cfg.schedule, step)
        num_docs = num_docs_at(cfg.data.curriculum, step)
        batches = self._micro_batches(num_docs)
        counts = [self.objective.denominators(b) for b in batches]
        lm_den, aux_den, tokens = self._global_sum(
            [float(sum(c[0] for c in counts)), float(sum(c[1] for c in counts)), float(sum(b.num_tokens for b in batches))]
        )
        pending = []
        ddp = hasattr(self.wrapper, "no_sync")
        for m, batch in enumerate(batches):
            index, targets = (t.to(self.info.device, non_blocking=True) for t in batch.lm_targets())  # found on the host
            batch = batch.to(self.info.device)
            sync = contextlib.nullcontext() if (not ddp or m == len(batches) - 1) else self.wrapper.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    out = self.wrapper(batch.packed, index, targets)
                loss, mm = self.objective.deferred(out, targets, batch, weights, lm_den, aux_den)
                # DDP / FSDP average gradients over ranks; the loss is already a global mean.
                (loss * self.info.world_size).backward()
            pending.append(mm)
        metrics = PendingMetrics.resolve_all(pending)  # the step's one metrics read, after its backward passes
        grad_norm = float("nan")
        if cfg.optimizer.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optimizer.grad_clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics.all_reduce()
        self.state.step += 1
        self.state.data_position += self.global_batch
        means = metrics.means()
        aux = means.get("aux_loss", float("nan"))
        total = weights.lm * means["lm_loss"] + (weights.aux * aux if not math.isnan(aux) else 0.0)
        dt = time.perf_counter() - t0
        phase, _ = phase_at(cfg.schedule, step)
        return {
            "step": self.state.step, "phase": phase.name, "lr": lr, "num_docs": num_docs, "loss": total,
            **means, "grad_norm": grad_norm, "tokens": int(tokens), "tokens_per_s": tokens / dt, "step_time": dt,
        }  # fmt: skip

    # -- the run -----------------------------------------------------------------------------------
    def save(self) -> str | None:
        ck = self.config.checkpoint
        if not ck.dir:
            return None
        path = save_checkpoint(
            ck.dir, self.state, self.wrapper, self.model, self.optimizer, self.info,
            dataclasses.asdict(self.config), keep=ck.keep, fsdp=self.fsdp,
        )  # fmt: skip
        if self.info.is_main:  # the step directory is also a model directory (msa bank create --model it)
            if self.fsdp:  # this rank holds a shard; the full state dict is in model.pt
                state = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
            else:
                state = self.model.state_dict()
            write_model_dir(path, self.model.config, state, tokenizer_dir=self._tokenizer_dir,
                            tokenizer=None if self._tokenizer_dir else self.tokenizer)  # fmt: skip
        return path

    def save_tokenizer(self, out: str | os.PathLike[str]) -> None:
        """Write the training tokenizer into ``out``: its files copied from ``data.tokenizer``, or saved
        when it was handed to the Trainer (what every checkpoint's model directory holds too)."""
        if self._tokenizer_dir:
            copy_tokenizer(self._tokenizer_dir, out)
        else:
            self.tokenizer.save_pretrained(os.fspath(out))

    def _log(self, rec: dict[str, Any], total: int) -> None:
        """Log at INFO every ``logging.every`` steps, at the first and last, and at least every ``LOG_SECONDS``
        (slow CPU steps still show progress): losses and recalls are means over the steps since the last
        line; append every step to the metrics file."""
        if not self.info.is_main:
            return
        lg, step, now = self.config.logging, rec["step"], time.perf_counter()
        self._window.append(rec)
        due = bool(lg.every) and (step % lg.every == 0 or step in (1, total) or now - self._last_log >= LOG_SECONDS)
        if due:
            mean = _window_means(self._window)
            self._window, self._last_log = [], now
            recalls = " ".join(f"{k} {v:.3f}" for k, v in mean.items() if k.startswith("recall@"))
            eta = (total - step) * (now - self._fit_start) / max(step - self._fit_first, 1)
            logger.info(
                "step %d/%d [%s] loss %.4f lm %.4f aux %.4f %s| lr %.2e docs %d %.0f tok/s %.2f s/step eta %s",
                step, total, rec["phase"], mean["loss"], mean["lm_loss"], mean.get("aux_loss", float("nan")),
                recalls + " " if recalls else "", rec["lr"], rec["num_docs"], rec["tokens_per_s"], rec["step_time"],
                _duration(eta),
            )  # fmt: skip
        if lg.metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(lg.metrics_file)), exist_ok=True)
            with open(lg.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train up to global step ``until`` (default: the schedule's end); returns the step metrics.

        Checkpoints every ``checkpoint.every`` steps and at the end (when ``checkpoint.dir`` is set); each
        checkpoint directory is also a model directory (config.json, safetensors, tokenizer)."""
        total = self.config.schedule.total_steps if until is None else min(until, self.config.schedule.total_steps)
        ck = self.config.checkpoint
        history = []
        self.wrapper.train()
        saved_at, saved = -1, None
        self._fit_start = self._last_log = time.perf_counter()
        self._window: list[dict[str, Any]] = []
        self._fit_first = self.state.step
        if self.info.is_main and self.state.step < total:
            logger.info("training steps %d-%d on %s", self.state.step + 1, total, self.info.device)
        while self.state.step < total:
            rec = self.train_step()
            history.append(rec)
            self._log(rec, total)
            if ck.dir and ck.every and self.state.step % ck.every == 0:
                saved = self.save()
                saved_at = self.state.step
        if ck.dir and saved_at != self.state.step and history:
            saved = self.save()
        if self.info.is_main and history:
            took = time.perf_counter() - self._fit_start
            tail = history[-max(self.config.logging.every, 1):]
            last = _window_means(tail)
            recalls = " ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("recall@"))
            logger.info("done: %d steps in %s (%.2f s/step); last %d steps: loss %.4f %s%s", len(history),
                        _duration(took), took / len(history), len(tail), last["loss"], recalls,
                        f"; model and checkpoint: {saved}" if saved else "")  # fmt: skip
        return history

    @torch.no_grad()
    def evaluate(self, samples: list[TrainSample], batch_size: int | None = None) -> dict[str, float]:
        """Routing recall and losses on ``samples`` (this rank's; no gradient)."""
        return evaluate(self.model, self.collator, samples, batch_size or self.config.data.micro_batch_size,
                        self.info.device, self._autocast, self.config.aux_layers)  # fmt: skip


@torch.no_grad()
def evaluate(model, collator: Collator, samples: list[TrainSample], batch_size: int = 4,
             device: torch.device | str = "cpu", autocast=contextlib.nullcontext,
             aux_layers: str = "official") -> dict[str, float]:  # fmt: skip
    """Mean LM loss, aux loss and router recall@1/@16 per aux layer over ``samples``."""
    objective = Objective(model.config, getattr(model, "b", None), aux_layers)
    metrics = Metrics()
    for i in range(0, len(samples), batch_size):
        batch = collator(samples[i : i + batch_size]).to(device)
        index, targets = batch.lm_targets()
        with autocast():
            out = model.forward_train(batch.packed, index)
        _, m = objective(out, targets, batch, LossWeights(1.0, 1.0), 1.0, 1.0)
        metrics.merge(m)
    return metrics.means()
