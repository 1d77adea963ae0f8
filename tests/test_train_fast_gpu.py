"""The fast training path on CUDA (FlexAttention block masks built once per step, static chunk slots,
optionally compiled blocks) computes the reference path's loss, scores, selection and gradients.
Skipped without CUDA."""

import pytest
import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig, PackedBatch
from msa.train.config import SpeedConfig
from msa.train.fast import apply_speed, forward_fast

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def model(seed=0, device="cuda"):
    cfg = ModelConfig(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, msa=MSAConfig(top_k_docs=3, pooling_kernel_size=8))  # fmt: skip
    return MSAForCausalLM(cfg).init_weights(seed).to(device)


def batch(seed=0, rows=3, device="cuda"):
    """Rows of [template | 4..9 documents of 5..40 tokens | query | response], right-padded."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(rows):
        n = int(torch.randint(4, 10, (1,), generator=g))
        lens = torch.randint(5, 41, (n,), generator=g).tolist()
        doc = [-2] * 3 + sum(([i + 1] * k for i, k in enumerate(lens)), []) + [0] * 9 + [-2] * 2 + [-1] * 15
        pos = list(range(3)) + sum((list(range(k)) for k in lens), []) + list(range(64, 64 + 26))
        seqs.append((doc, pos))
    l = max(len(d) for d, _ in seqs)
    ids = torch.randint(0, 211, (rows, l), generator=g)
    doc_ids = torch.full((rows, l), -1)
    pos_ids = torch.zeros(rows, l, dtype=torch.long)
    mask = torch.zeros(rows, l, dtype=torch.bool)
    for r, (d, p) in enumerate(seqs):
        doc_ids[r, : len(d)], pos_ids[r, : len(p)], mask[r, : len(d)] = torch.tensor(d), torch.tensor(p), True
    targets = (mask & (doc_ids == -1)).flatten().nonzero().squeeze(-1)
    return PackedBatch(ids, doc_ids, pos_ids, mask).to(device), targets.to(device), ids.flatten()[targets].to(device)


def losses(m, packed, index, targets, speed):
    if speed is None:
        out = m.forward_train(packed, index)
        lm = torch.nn.functional.cross_entropy(out.logits.float(), targets, reduction="sum")
    else:
        out = forward_fast(m, packed, index, targets, speed)
        lm = out.lm_sum
    aux = sum(s[:, :4].masked_fill(~torch.isfinite(s[:, :4]), 0).sum() for s in out.doc_scores.values())
    return lm, aux, out


@pytest.mark.parametrize("compile", [False, True])
def test_fast_path_equals_reference_on_cuda(compile, device="cuda"):
    packed, index, targets = batch(device=device)
    ref_model, fast_model = model(device=device), model(device=device)
    speed = SpeedConfig(path="fast", compile=compile, checkpoint="block" if compile else "none", pad_multiple=16)
    apply_speed(fast_model, speed)
    lm_r, aux_r, out_r = losses(ref_model, packed, index, targets, None)
    lm_f, aux_f, out_f = losses(fast_model, packed, index, targets, speed)
    torch.testing.assert_close(lm_f, lm_r, rtol=1e-4, atol=1e-4)
    for layer, s in out_r.doc_scores.items():
        torch.testing.assert_close(out_f.doc_scores[layer][:, : s.shape[1]], s, rtol=1e-4, atol=1e-4)
        assert torch.equal(out_f.selected[layer].docs, out_r.selected[layer].docs)
    (lm_r + aux_r).backward()
    (lm_f + aux_f).backward()
    for (name, p), q in zip(ref_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
