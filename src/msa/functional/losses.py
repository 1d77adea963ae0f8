"""Auxiliary routing losses over a router layer's document scores (MSA_SPEC Part A.7, Part B 5).

Every function takes the scores of ONE sample's valid documents and 0/1 labels of the same length
and returns a scalar; callers average over samples and router layers.
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
