"""The aux loss through the objective equals the paper's formula on a hand-computed case."""

import math

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
