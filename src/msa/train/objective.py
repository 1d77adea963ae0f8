"""Training objective: L = w_lm * L_LM + w_aux * L_aux (MSA_SPEC A 7, B 5), plus routing metrics.

L_LM is token cross-entropy over the target tokens. L_aux is the mean, over the pairs
(router layer with index >= num_layers // 2) x (sample with >= 1 positive), of
``routing_loss(aux_loss_method, scores of the sample's N_b documents, 0/1 labels, tau)``.
With ``negatives="batch"`` a sample's query is scored against the documents of every sample of the
micro-batch (``msa.functional.cross_doc_scores``): the other samples' documents are extra negatives,
except copies of the sample's own positives (same text, ``TrainBatch.doc_keys``), which are left out.
Documents are encoded independently, so this adds negatives without encoding anything more.

Both are computed as SUMS here and divided by global denominators passed in by the loop (the target
token count and the pair count of the whole optimizer step, over micro-batches and ranks), so that
gradient accumulation and data parallelism give exactly the loss of one big batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from msa.config import ModelConfig
from msa.functional import cross_doc_scores
from msa.functional.losses import recall_rows, routing_loss_rows
from msa.model.modeling import TrainOutput
from msa.train.collator import TrainBatch
from msa.train.fast import FastTrainOutput

__all__ = ["LossWeights", "Metrics", "Objective", "aux_layers"]

RECALL_AT = (1, 16)


@dataclass(frozen=True)
class LossWeights:
    lm: float
    aux: float


@dataclass
class _AuxRows:
    """The aux-loss rows of a micro-batch, once for all router layers: the samples with documents and
    a positive (``index`` [R] long), their padded labels and valid masks ([R, Nmax] bool), on the device."""

    index: Tensor
    labels: Tensor
    valid: Tensor
    count: int
    samples: list[int]  # ``index`` on the host

    def across(self, batch: TrainBatch, width: int) -> tuple[Tensor, Tensor]:
        """Labels and valid masks [R, B * width] for scores against every sample's documents (column
        ``j * width + d``: document d of sample j): a row's positives sit in its own block; copies of them
        in other samples (same doc key) are not valid."""
        b = batch.size
        if len(batch.doc_keys) != b:
            raise ValueError("batch negatives need the documents' keys (TrainBatch.doc_keys)")
        keep = self.samples
        labels = torch.zeros(len(keep), b, width, dtype=torch.bool)
        valid = torch.zeros(len(keep), b, width, dtype=torch.bool)
        keys = torch.full((b, width), -1, dtype=torch.long)
        for j, k in enumerate(batch.doc_keys):
            keys[j, : k.numel()] = k
            valid[:, j, : k.numel()] = True
        for r, s in enumerate(keep):
            lab = batch.aux_labels[s].bool()
            labels[r, s, : lab.numel()] = lab
            copies = torch.isin(keys, batch.doc_keys[s][lab])
            copies[s] = False
            valid[r] &= ~copies
        to = lambda t: t.flatten(1).to(self.index.device, non_blocking=True)  # noqa: E731
        return to(labels), to(valid)

    @classmethod
    def of(cls, batch: TrainBatch, device: torch.device) -> "_AuxRows":
        keep = [b for b, a in enumerate(batch.aux_labels) if a.numel() and batch.positives[b]]
        width = max((batch.aux_labels[b].numel() for b in keep), default=0)
        labels = torch.zeros(len(keep), width, dtype=torch.bool)
        valid = torch.zeros(len(keep), width, dtype=torch.bool)
        for r, b in enumerate(keep):
            n = batch.aux_labels[b].numel()
            labels[r, :n] = batch.aux_labels[b].bool()
            valid[r, :n] = True
        to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return cls(to(torch.tensor(keep, dtype=torch.long)), to(labels), to(valid), len(keep), keep)


@dataclass
class PendingMetrics:
    """A micro-batch's metrics still on the device: ``values`` [n + 1] float32 (the last entry counts
    non-finite scores of real documents), ``names`` / ``counts`` the n metrics. ``resolve`` reads them
    (one device read); the loop resolves a whole step's at once, after its backward passes."""

    names: list[str]
    values: Tensor
    counts: list[float]

    @staticmethod
    def resolve_all(pending: list["PendingMetrics"]) -> "Metrics":
        m = Metrics()
        if not pending:
            return m
        host = torch.cat([p.values.detach().float().reshape(-1) for p in pending]).tolist()
        at = 0
        for p in pending:
            part, at = host[at : at + len(p.names) + 1], at + len(p.names) + 1
            if part[-1]:
                raise ValueError("a sample has more aux labels than scored documents (non-finite routing scores)")
            for name, v, c in zip(p.names, part, p.counts):
                m.add(name, v, c)
        return m

    def resolve(self) -> "Metrics":
        return PendingMetrics.resolve_all([self])


@dataclass
class Metrics:
    """Named (sum, count) pairs; ``means()`` gives sum / count. Reduced over ranks as one tensor."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, count: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0.0) + count

    def merge(self, other: Metrics) -> None:
        for k in other.sums:
            self.add(k, other.sums[k], other.counts[k])

    def all_reduce(self) -> None:
        """Sum over the ranks of the default process group (no-op without one). Every rank must hold
        the same metric names (they do: names depend on the config only)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        names = sorted(self.sums)
        t = torch.tensor([[self.sums[n], self.counts[n]] for n in names], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = t.cpu()
        for i, n in enumerate(names):
            self.sums[n], self.counts[n] = float(t[i, 0]), float(t[i, 1])

    def means(self) -> dict[str, float]:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else float("nan")) for k in sorted(self.sums)}


def aux_layers(config: ModelConfig, which: str = "official") -> tuple[int, ...]:
    """Router layers that carry the aux loss: idx >= num_layers // 2 (the official rule), or all of them."""
    if which == "all":
        return tuple(config.router_layers)
    return tuple(i for i in config.router_layers if i >= config.num_hidden_layers // 2)


class Objective:
    """Computes the weighted loss of one micro-batch and its metrics.

    Args:
        config: the model config (router layers, aux_loss_method, tau).
        layers: "official" or "all" router layers carry the aux loss (``aux_layers``).
        bce_bias: the model's learnable bias ``b`` for the BCE method (else unused).
        negatives: "sample" (a sample's own documents, the paper's loss) or "batch" (every document of
            the micro-batch; see the module docstring).
    """

    def __init__(self, config: ModelConfig, bce_bias: Tensor | None = None, layers: str = "official",
                 negatives: str = "sample"):  # fmt: skip
        if negatives not in ("sample", "batch"):
            raise ValueError(f"aux negatives must be 'sample' or 'batch', got {negatives!r}")
        self.config = config
        self.negatives = negatives
        self.layers = aux_layers(config, layers)
        self.method = config.msa.aux_loss_method or "INFONCE_DECOUPLE"
        self.tau = config.msa.tau
        self.bce_bias = bce_bias

    def _cross(self, out, layer: int, width: int) -> Tensor:
        """[B, B * width] scores of every sample's query against every sample's documents at ``layer``."""
        ri = out.route_inputs.get(layer)
        if ri is None:
            raise ValueError("batch negatives need the router inputs of the forward (route_inputs)")
        msa = self.config.msa
        cosine = msa.train_cosine()
        s = cross_doc_scores(ri.q_router, ri.query_mask, ri.k_router, ri.chunk_doc, width, cosine,
                             head_reduce=msa.head_reduce_method, query_reduce=msa.query_reduce_method,
                             chunk_reduce=msa.chunk_reduce_method)  # fmt: skip
        if cosine and not msa.decouple_router:
            s = s / math.sqrt(self.config.head_dim)  # as ``MemorySparseAttention._route``
        return s

    def denominators(self, batch: TrainBatch) -> tuple[int, int]:
        """(LM target tokens, aux (layer, sample) pairs) of a micro-batch."""
        lm = int((batch.labels[:, 1:] != -100).sum())
        aux = len(self.layers) * sum(int(a.sum() > 0) for a in batch.aux_labels)
        return lm, aux

    def __call__(self, out: TrainOutput | FastTrainOutput, targets: Tensor, batch: TrainBatch, weights: LossWeights,
                 lm_denominator: float, aux_denominator: float) -> tuple[Tensor, Metrics]:  # fmt: skip
        """Loss of one micro-batch (already divided by the global denominators) and its metrics.

        Args:
            out: forward_train output; ``out.logits`` [M, V] at the positions of ``targets`` [M].
            batch: the micro-batch (for aux labels).
            lm_denominator / aux_denominator: global target-token / pair counts of the whole step.
        """
        total, pending = self.deferred(out, targets, batch, weights, lm_denominator, aux_denominator)
        return total, pending.resolve()

    def deferred(self, out: TrainOutput | FastTrainOutput, targets: Tensor, batch: TrainBatch, weights: LossWeights,
                 lm_denominator: float, aux_denominator: float) -> tuple[Tensor, PendingMetrics]:  # fmt: skip
        """``__call__`` without reading anything from the device: the metrics stay pending, so the
        backward can be queued while the forward still runs."""
        if isinstance(out, FastTrainOutput):  # the fast path summed the LM loss inside its forward
            lm_sum = out.lm_sum
        elif targets.numel():
            lm_sum = F.cross_entropy(out.logits.float(), targets, reduction="sum")
        else:
            lm_sum = out.logits.float().sum() * 0.0
        # Every metric is gathered as a device tensor and read back once, later (PendingMetrics).
        names, values, counts = ["aux_loss", "lm_loss"], [lm_sum.new_zeros(()), lm_sum.detach()], [0.0, float(targets.numel())]
        bad = lm_sum.new_zeros((), dtype=torch.long)
        aux_sum = lm_sum.new_zeros((), dtype=torch.float32)
        rows = _AuxRows.of(batch, lm_sum.device) if self.layers else None
        across = None
        for layer in self.layers:
            scores = out.doc_scores[layer]  # [B, Nmax]
            # touch every router layer's scores so data-parallel wrappers see their gradient path
            aux_sum = aux_sum + scores.masked_fill(~torch.isfinite(scores), 0.0).sum() * 0.0
            names.append("aux_loss")
            counts.append(float(rows.count))
            if rows.count:  # every sample at once: no per-sample launches or host reads
                s = scores.index_select(0, rows.index)
                extra = s.shape[1] - rows.labels.shape[1]
                if extra < 0:
                    raise ValueError("a sample has more aux labels than scored documents")
                labels, valid = (F.pad(t, (0, extra)) for t in (rows.labels, rows.valid))
                bad = bad + (~torch.isfinite(s) & valid).sum()
                if self.negatives == "batch":
                    if across is None:
                        across = rows.across(batch, scores.shape[1])
                    loss_s, loss_labels, loss_valid = self._cross(out, layer, scores.shape[1]).index_select(0, rows.index), *across
                else:
                    loss_s, loss_labels, loss_valid = s, labels, valid
                per = routing_loss_rows(self.method, loss_s, loss_labels, loss_valid, self.tau,
                                        self.bce_bias if self.bce_bias is not None else -20.0)  # fmt: skip
                aux_sum = aux_sum + per.sum()
                values.append(per.detach().sum())
            else:
                values.append(aux_sum.new_zeros(()))
            for k in RECALL_AT:
                names.append(f"recall@{k}/layer{layer}")
                counts.append(float(rows.count))
                values.append(recall_rows(s.detach(), labels, valid, k).sum() if rows.count else aux_sum.new_zeros(()))
        total = weights.lm * lm_sum / max(lm_denominator, 1.0) + weights.aux * aux_sum / max(aux_denominator, 1.0)
        return total, PendingMetrics(names, torch.stack([v.float() for v in values] + [bad.float()]), counts)


def mean_recall(metrics: dict[str, float], k: int, layers: Sequence[int]) -> float:
    """Mean over layers of recall@k from ``Metrics.means()`` output (NaN-free layers only)."""
    vals = [metrics[f"recall@{k}/layer{l}"] for l in layers if not math.isnan(metrics.get(f"recall@{k}/layer{l}", math.nan))]
    return sum(vals) / len(vals) if vals else math.nan
