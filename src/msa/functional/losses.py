"""Auxiliary routing losses over a router layer's document scores (MSA_SPEC Part A.7, Part B 5).

Every function takes the scores of ONE sample's valid documents and 0/1 labels of the same length
and returns a scalar; callers average over samples and router layers. ``routing_loss_rows`` and
``recall_rows`` compute the same for every sample of a batch at once (padded rows), which is what the
training objective uses: a loop over samples costs launches and host reads per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(scores: Tensor, labels: Tensor) -> Tensor:
    if scores.dim() != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be equal 1-D")
    return labels.to(scores.device, torch.bool)


def infonce_loss(scores: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """Plain InfoNCE: softmax over all documents, other positives compete.

    L = -(1/max(|P|,1)) sum_{i in P} log softmax(s / tau)_i

    Args:
        scores: [N] float document scores. labels: [N] 0/1, 1 = positive.
    """
    pos = _check(scores, labels)
    logp = F.log_softmax(scores.float() / tau, dim=-1)
    return -(logp * pos).sum() / max(int(pos.sum()), 1)


def decoupled_infonce_loss(scores: Tensor, labels: Tensor, tau: float = 0.1) -> Tensor:
    """The paper's supervised-contrastive routing loss (eq. 5): each positive against the negatives only.

    L = -(1/|P|) sum_{i in P} log( e^{s_i/tau} / (e^{s_i/tau} + sum_{j in N} e^{s_j/tau}) )

    Args:
        scores: [N] float document scores. labels: [N] 0/1, 1 = positive.
    """
    pos = _check(scores, labels)
    z = scores.float() / tau
    neg_lse = torch.logsumexp(z.masked_fill(pos, float("-inf")), dim=-1)  # -inf when no negative
    per_pos = z - torch.logaddexp(z, neg_lse)  # log( e^z / (e^z + sum_N e^z_j) )
    return -(per_pos * pos).sum() / max(int(pos.sum()), 1)


def focal_infonce_loss(scores: Tensor, labels: Tensor, tau: float = 0.1, gamma: float = 2.0) -> Tensor:
    """InfoNCE with focal weights (1 - p_i)^gamma over the all-document softmax."""
    pos = _check(scores, labels)
    logp = F.log_softmax(scores.float() / tau, dim=-1)
    w = (1 - logp.exp()).pow(gamma)
    return -(w * logp * pos).sum() / max(int(pos.sum()), 1)


def decoupled_focal_infonce_loss(scores: Tensor, labels: Tensor, tau: float = 0.1, gamma: float = 2.0) -> Tensor:
    """Decoupled InfoNCE with focal weights; gamma really is gamma (the release passes |P| there)."""
    pos = _check(scores, labels)
    z = scores.float() / tau
    neg_lse = torch.logsumexp(z.masked_fill(pos, float("-inf")), dim=-1)
    logp = z - torch.logaddexp(z, neg_lse)
    w = (1 - logp.exp()).pow(gamma)
    return -(w * logp * pos).sum() / max(int(pos.sum()), 1)


def bce_loss(scores: Tensor, labels: Tensor, bias: Tensor | float = -20.0) -> Tensor:
    """Binary routing loss: -mean log sigmoid((s + b) * y), y in {-1, +1}."""
    pos = _check(scores, labels)
    y = pos.float() * 2 - 1
    return -F.logsigmoid((scores.float() + bias) * y).mean()


ROUTING_LOSSES = {
    "INFONCE": infonce_loss,
    "INFONCE_DECOUPLE": decoupled_infonce_loss,
    "INFONCE_FOCAL": focal_infonce_loss,
    "INFONCE_DECOUPLE_FOCAL": decoupled_focal_infonce_loss,
}


def routing_loss(method: str, scores: Tensor, labels: Tensor, tau: float = 0.1, bias: Tensor | float = -20.0) -> Tensor:
    """Dispatch on ``msa_config.aux_loss_method``."""
    if method == "BCE":
        return bce_loss(scores, labels, bias)
    try:
        fn = ROUTING_LOSSES[method]
    except KeyError:
        raise ValueError(f"unknown aux_loss_method {method!r}; expected one of {sorted(ROUTING_LOSSES) + ['BCE']}") from None
    return fn(scores, labels, tau)


def recall_at(scores: Tensor, labels: Tensor, n: int) -> float:
    """Hits of the positives in the top-n documents / min(|P|, n). NaN when there is no positive."""
    num_pos = int(_check(scores, labels).sum())
    if num_pos == 0:
        return float("nan")
    return float(recall_tensor(scores, labels, n, num_pos))


def recall_tensor(scores: Tensor, labels: Tensor, n: int, num_pos: int) -> Tensor:
    """``recall_at`` as a 0-d device tensor, for a known positive count ``num_pos`` >= 1 (no host sync)."""
    pos = _check(scores, labels)
    top = torch.topk(scores.float(), min(n, scores.numel())).indices
    return pos[top].sum() / min(num_pos, n)


# -- every sample of a batch at once (the training objective: no per-sample launches or host reads) --
def _rows(scores: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if scores.dim() != 2 or scores.shape != labels.shape or scores.shape != valid.shape:
        raise ValueError(f"scores {tuple(scores.shape)}, labels {tuple(labels.shape)} and valid "
                         f"{tuple(valid.shape)} must be equal [B, N]")  # fmt: skip
    valid = valid.to(scores.device, torch.bool)
    pos = labels.to(scores.device, torch.bool) & valid
    return pos, valid, pos.sum(-1).clamp_min(1).float()


def _log_softmax_rows(z: Tensor, valid: Tensor) -> Tensor:
    return F.log_softmax(z.masked_fill(~valid, float("-inf")), dim=-1)


def routing_loss_rows(method: str, scores: Tensor, labels: Tensor, valid: Tensor, tau: float = 0.1,
                      bias: Tensor | float = -20.0, gamma: float = 2.0) -> Tensor:  # fmt: skip
    """``routing_loss`` of every row at once: row b is the sample whose documents are the ``valid[b]``
    entries of ``scores[b]`` (the rest is padding, any value, -inf included).

    Args:
        scores: [B, N] float; labels: [B, N] 0/1 (1 = positive); valid: [B, N] bool.
    Returns:
        [B] float32 losses, equal (to rounding) to ``routing_loss`` of each row's valid entries.
    """
    pos, valid, num_pos = _rows(scores, labels, valid)
    z = torch.where(valid, scores.float(), torch.zeros_like(scores, dtype=torch.float32))  # padding finite
    if method == "BCE":
        y = pos.float() * 2 - 1
        per = torch.where(valid, -F.logsigmoid((z + bias) * y), torch.zeros_like(z))
        return per.sum(-1) / valid.sum(-1).clamp_min(1)
    z = z / tau
    if method in ("INFONCE", "INFONCE_FOCAL"):
        logp = _log_softmax_rows(z, valid)
    elif method in ("INFONCE_DECOUPLE", "INFONCE_DECOUPLE_FOCAL"):
        neg_lse = torch.logsumexp(z.masked_fill(pos | ~valid, float("-inf")), dim=-1, keepdim=True)
        logp = z - torch.logaddexp(z, neg_lse)
    else:
        raise ValueError(f"unknown aux_loss_method {method!r}; expected one of {sorted(ROUTING_LOSSES) + ['BCE']}")
    logp = torch.where(pos, logp, torch.zeros_like(logp))  # before the focal weight: no -inf inside it
    if method.endswith("FOCAL"):
        logp = (1 - logp.exp()).pow(gamma) * logp
    return -logp.sum(-1) / num_pos


def recall_rows(scores: Tensor, labels: Tensor, valid: Tensor, n: int) -> Tensor:
    """``recall_at`` of every row at once ([B] float32; rows without a positive give 0 / 1 = 0, so
    callers keep only rows with positives)."""
    pos, valid, num_pos = _rows(scores, labels, valid)
    k = min(n, scores.shape[-1])
    top = torch.topk(scores.float().masked_fill(~valid, float("-inf")), k, dim=-1).indices
    ranks_ok = torch.arange(k, device=scores.device)[None, :] < valid.sum(-1, keepdim=True)
    hits = (pos.gather(-1, top) & ranks_ok).sum(-1).float()
    return hits / num_pos.clamp(max=n)
