"""The aux loss through the objective equals the paper's formula on a hand-computed case."""

import math

import pytest
import torch

from msa import MSAConfig, ModelConfig
from msa.model.modeling import TrainOutput
from msa.train import LossWeights, Objective
from msa.train.collator import TrainBatch
from msa.train.schedule import lr_at, num_docs_at, weights_at
from msa.train.config import CurriculumStage, Phase, ScheduleConfig

INF = float("inf")


def eq5(scores, labels, tau):
    """-(1/|P|) sum_{i in P} log(e^{s_i/tau} / (e^{s_i/tau} + sum_{j in N} e^{s_j/tau}))."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = 0.0
    for s in pos:
        denom = math.exp(s / tau) + sum(math.exp(n / tau) for n in neg)
        total += -math.log(math.exp(s / tau) / denom)
    return total / len(pos)


def test_aux_loss_is_eq5_averaged_over_layers_and_samples():
    cfg = ModelConfig(
        vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4, msa=MSAConfig(router_layer_idx="1,2,3", infonce_loss_temp=0.1),
    )  # fmt: skip
    obj = Objective(cfg)
    assert obj.layers == (2, 3)  # router layer 1 < num_layers // 2 carries no aux loss
    s2 = torch.tensor([[0.9, 0.1, -0.3], [0.2, 0.5, -INF], [0.4, -INF, -INF]])
    s3 = torch.tensor([[0.3, 0.8, 0.0], [0.7, -0.2, -INF], [0.1, -INF, -INF]])
    s1 = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, -INF], [5.0, -INF, -INF]])
    labels = [torch.tensor([1, 0, 1]), torch.tensor([0, 1]), torch.tensor([0])]  # sample 2: no positive
    out = TrainOutput(torch.zeros(0, 11, requires_grad=True), {1: s1, 2: s2.requires_grad_(), 3: s3}, {})
    batch = TrainBatch(None, torch.full((3, 4), -100), labels)  # type: ignore[arg-type]
    lm_den, aux_den = obj.denominators(batch)
    assert (lm_den, aux_den) == (0, 4)
    loss, metrics = obj(out, torch.zeros(0, dtype=torch.long), batch, LossWeights(0.1, 1.0), lm_den, aux_den)
    want = sum(
        eq5(s[b, : len(y)].tolist(), y.tolist(), 0.1) for s in (s2, s3) for b, y in enumerate(labels[:2])
    ) / 4
    assert abs(float(loss.detach()) - want) < 1e-5
    m = metrics.means()
    assert abs(m["aux_loss"] - want) < 1e-5
    # recall@1: layer 2 sample0 top doc 0 is positive (1/1), sample1 top doc 1 positive -> 1.0;
    # layer 3 sample0 top doc 1 negative, sample1 top doc 0 negative -> 0.0
    assert m["recall@1/layer2"] == 1.0 and m["recall@1/layer3"] == 0.0
    assert m["recall@16/layer3"] == 1.0
    loss.backward()
    assert s2.grad is not None and torch.isfinite(s2.grad).all()


def test_paper_two_phase_schedule_and_curriculum():
    sched = ScheduleConfig()
    assert weights_at(sched, 0) == LossWeights(0.1, 1.0) and weights_at(sched, 1000) == LossWeights(1.0, 0.1)
    assert abs(lr_at(sched, 999) - 1e-4) < 1e-12 and abs(lr_at(sched, 1000) - 6e-6) < 1e-12
    s = ScheduleConfig([Phase("a", 10, 1.0, 1, 1, warmup_steps=5, decay="cosine", min_lr_ratio=0.0)])
    assert lr_at(s, 0) == 0.2 and lr_at(s, 4) == 1.0 and lr_at(s, 9) < 0.2
    cur = [CurriculumStage(3, 8), CurriculumStage(2, 16), CurriculumStage(0, 64)]
    assert [num_docs_at(cur, i) for i in range(7)] == [8, 8, 8, 16, 16, 64, 64]


def test_aux_layers_official_rule_or_all():
    from msa.train.objective import aux_layers

    cfg = ModelConfig(num_hidden_layers=6, msa=MSAConfig(router_layer_idx="1,2,4,5"))
    assert aux_layers(cfg) == (4, 5)  # the release trains only router layers >= L // 2
    assert aux_layers(cfg, "all") == (1, 2, 4, 5)
    assert Objective(cfg, layers="all").layers == (1, 2, 4, 5)


def test_batch_negatives_add_other_samples_documents_except_copies_of_positives():
    """negatives="batch": each query competes with every document of the micro-batch, except copies of
    its own positives in other samples; scores come from the router inputs (cross_doc_scores)."""
    from msa.functional import cross_doc_scores
    from msa.model.context import RouteInputs

    cfg = ModelConfig(
        vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4, msa=MSAConfig(router_layer_idx="1", infonce_loss_temp=0.1,
                                                         query_reduce_method="mean", chunk_reduce_method="mean"),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    b, n = 3, 3
    ri = RouteInputs(torch.randn(b, 4, 2, 4, generator=g), torch.ones(b, 4, dtype=torch.bool),
                     torch.randn(b, 6, 1, 4, generator=g), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2 + [[0, 0, 1, 1, -1, -1]]))
    own = torch.stack([cross_doc_scores(ri.q_router, ri.query_mask, ri.k_router, ri.chunk_doc, n,
                                        query_reduce="mean", chunk_reduce="mean").view(b, b, n)[r, r] for r in range(b)])
    labels = [torch.tensor([1, 0, 0]), torch.tensor([0, 1, 0]), torch.tensor([0, 0])]  # sample 2: no positive
    keys = [torch.tensor([10, 11, 12]), torch.tensor([20, 10, 22]), torch.tensor([10, 31])]  # 10 is in all three
    out = TrainOutput(torch.zeros(0, 11), {1: own}, {}, {1: ri})
    batch = TrainBatch(None, torch.full((b, 4), -100), labels, doc_keys=keys)  # type: ignore[arg-type]
    _, aux_den = Objective(cfg, layers="all").denominators(batch)
    weights = LossWeights(0.0, 1.0)
    zero = torch.zeros(0, dtype=torch.long)
    loss_s, _ = Objective(cfg, layers="all").__call__(out, zero, batch, weights, 1.0, aux_den)
    loss_b, _ = Objective(cfg, layers="all", negatives="batch")(out, zero, batch, weights, 1.0, aux_den)
    cross = cross_doc_scores(ri.q_router, ri.query_mask, ri.k_router, ri.chunk_doc, n,
                             query_reduce="mean", chunk_reduce="mean").view(b, b, n)
    # sample 0 (positive key 10): sample 1's doc 1 and sample 2's doc 0 are copies, left out
    s0 = [cross[0, 0, 0], cross[0, 0, 1], cross[0, 0, 2], cross[0, 1, 0], cross[0, 1, 2], cross[0, 2, 1]]
    # sample 1 (positive key 10, its doc 1): sample 0's doc 0 and sample 2's doc 0 are copies
    s1 = [cross[1, 1, 1], cross[1, 1, 0], cross[1, 1, 2], cross[1, 0, 1], cross[1, 0, 2], cross[1, 2, 1]]
    want = (eq5([float(v) for v in s0], [1, 0, 0, 0, 0, 0], 0.1) + eq5([float(v) for v in s1], [1, 0, 0, 0, 0, 0], 0.1)) / 2
    assert abs(float(loss_b) - want) < 1e-5
    assert float(loss_b) > float(loss_s)  # more negatives, larger loss
    with pytest.raises(ValueError, match="doc_keys"):
        Objective(cfg, layers="all", negatives="batch")(out, zero, TrainBatch(None, batch.labels, labels), weights, 1.0, aux_den)  # type: ignore[arg-type]
