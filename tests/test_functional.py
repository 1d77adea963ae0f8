"""msa.functional against float64 naive loops on odd sizes."""

import math

import pytest
import torch

from msa import functional as MF


def naive_pool(x, lengths, p):
    out, owner, start = [], [], 0
    for d, n in enumerate(lengths):
        for c in range(0, n, p):
            out.append(x[start + c : start + min(c + p, n)].double().mean(0))
            owner.append(d)
        start += n
    return torch.stack(out), torch.tensor(owner)


def naive_doc_scores(q, k, chunk_doc, n, mask, cosine, head="mean", query="max", chunk="max"):
    tq, hq, d = q.shape
    c, hkv, _ = k.shape
    g = hq // hkv
    s = torch.empty(tq, c, dtype=torch.float64)
    for t in range(tq):
        for j in range(c):
            vals = []
            for h in range(hq):
                a, b = q[t, h].double(), k[j, h // g].double()
                vals.append(float(a @ b / (a.norm() * b.norm())) if cosine else float(a @ b) / math.sqrt(d))
            s[t, j] = sum(vals) / hq if head == "mean" else max(vals)
    rows = [t for t in range(tq) if mask[t]]
    if query == "max":
        cs = torch.stack([s[t] for t in rows]).max(0).values
    elif query == "mean":
        cs = torch.stack([s[t] for t in rows]).mean(0)
    else:
        cs = s[rows[-1]]
    out = torch.full((n,), -math.inf, dtype=torch.float64)
    for i in range(n):
        own = [float(cs[j]) for j in range(c) if chunk_doc[j] == i]
        if own:
            out[i] = max(own) if chunk == "max" else sum(own) / len(own)
    return out


@pytest.mark.parametrize("p", [1, 4, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_mean_pool(p, dtype):
    g = torch.Generator().manual_seed(p)
    lengths = [1, 63, 64, 65, 5, 130, 2]
    x = torch.randn(sum(lengths), 3, 5, generator=g).to(dtype)
    pooled, owner = MF.chunk_mean_pool(x, torch.tensor(lengths), p)
    ref, ref_owner = naive_pool(x, lengths, p)
    assert pooled.dtype == dtype and pooled.shape == ref.shape
    assert torch.equal(owner, ref_owner)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert (pooled.double() - ref).abs().max() <= tol * max(1.0, ref.abs().max())


def test_chunk_mean_pool_errors():
    with pytest.raises(ValueError, match="sum to"):
        MF.chunk_mean_pool(torch.zeros(5, 1, 2), torch.tensor([2, 2]), 2)
    with pytest.raises(ValueError, match="at least one token"):
        MF.chunk_mean_pool(torch.zeros(2, 1, 2), torch.tensor([2, 0]), 2)


@pytest.mark.parametrize("hq,hkv", [(3, 3), (4, 2), (8, 2)])
@pytest.mark.parametrize("cosine", [True, False])
def test_doc_scores_match_naive(hq, hkv, cosine):
    g = torch.Generator().manual_seed(hq * 10 + hkv + cosine)
    d, tq = 6, 7
    lengths = [1, 3, 1, 5, 2]  # chunks per document: one-chunk and many-chunk documents
    chunk_doc = torch.repeat_interleave(torch.arange(len(lengths) + 1)[: len(lengths)], torch.tensor(lengths))
    n = len(lengths) + 1  # the last document has no chunk -> -inf
    q = torch.randn(tq, hq, d, generator=g)
    k = torch.randn(int(chunk_doc.numel()), hkv, d, generator=g)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    for head, query, chunk in [("mean", "max", "max"), ("max", "mean", "mean"), ("mean", "last", "max")]:
        got = MF.doc_scores(q, k, chunk_doc, n, mask, cosine, head_reduce=head, query_reduce=query, chunk_reduce=chunk)
        ref = naive_doc_scores(q, k, chunk_doc, n, mask, cosine, head, query, chunk)
        assert got.dtype == torch.float32
        assert torch.isinf(got[-1]) and got[-1] < 0
        assert torch.allclose(got[:-1].double(), ref[:-1], atol=1e-5, rtol=1e-5)


def test_doc_scores_no_query_token_and_errors():
    q, k = torch.randn(3, 2, 4), torch.randn(2, 1, 4)
    s = MF.doc_scores(q, k, torch.tensor([0, 1]), 2, torch.zeros(3, dtype=torch.bool))
    assert torch.isinf(s).all()
    with pytest.raises(ValueError, match="multiple"):
        MF.doc_scores(torch.randn(3, 3, 4), torch.randn(2, 2, 4), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="chunk_doc"):
        MF.doc_scores(q, k, torch.tensor([0]), 2)


def test_select_docs():
    s = torch.tensor([0.5, float("-inf"), 0.9, 0.5, 0.1])
    assert MF.select_docs(s, 3).tolist() == [2, 0, 3]  # tie 0.5: lower index first
    assert MF.select_docs(s, 10).tolist() == [2, 0, 3, 4]  # only finite scores
    assert MF.select_docs(torch.full((3,), float("-inf")), 2).numel() == 0


def test_positions():
    assert MF.doc_position_ids(torch.tensor([3, 1, 2])).tolist() == [0, 1, 2, 0, 0, 1]
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert MF.query_position_ids(m, 19).tolist() == [[19, 19, 19, 20], [19, 20, 21, 22]]


def naive_decoupled(s, y, tau):
    pos = [i for i in range(len(s)) if y[i]]
    neg = [j for j in range(len(s)) if not y[j]]
    total = 0.0
    for i in pos:
        num = math.exp(s[i] / tau)
        total += -math.log(num / (num + sum(math.exp(s[j] / tau) for j in neg)))
    return total / len(pos)


def test_decoupled_infonce_hand_computed():
    s = torch.tensor([0.3, -0.2, 0.8, 0.1], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 0])
    # hand computation with tau = 0.5: z = [0.6, -0.4, 1.6, 0.2]
    z = [0.6, -0.4, 1.6, 0.2]
    neg = math.exp(z[1]) + math.exp(z[3])
    expected = -(math.log(math.exp(z[0]) / (math.exp(z[0]) + neg)) + math.log(math.exp(z[2]) / (math.exp(z[2]) + neg))) / 2
    got = MF.decoupled_infonce_loss(s, y, tau=0.5)
    assert abs(float(got) - expected) < 1e-6
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s = torch.randn(9, generator=g)
        y = (torch.rand(9, generator=g) < 0.3).long()
        y[0] = 1
        assert abs(float(MF.decoupled_infonce_loss(s, y, 0.1)) - naive_decoupled(s.tolist(), y.tolist(), 0.1)) < 1e-3


def test_infonce_and_variants():
    s = torch.tensor([1.0, 0.0, 2.0])
    y = torch.tensor([1, 0, 1])
    logp = torch.log_softmax(s / 0.1, 0)
    assert torch.allclose(MF.infonce_loss(s, y, 0.1), -(logp[0] + logp[2]) / 2)
    assert MF.routing_loss("INFONCE_DECOUPLE", s, y).item() == pytest.approx(MF.decoupled_infonce_loss(s, y).item())
    assert MF.focal_infonce_loss(s, y).item() <= MF.infonce_loss(s, y).item()
    assert MF.decoupled_focal_infonce_loss(s, y).item() <= MF.decoupled_infonce_loss(s, y).item()
    assert MF.bce_loss(s, y, 0.0).item() > 0
    with pytest.raises(ValueError, match="aux_loss_method"):
        MF.routing_loss("NOPE", s, y)
    # only positives: no negative competes, the decoupled loss is 0
    assert MF.decoupled_infonce_loss(s, torch.ones(3)).item() == pytest.approx(0.0, abs=1e-6)


def test_recall_at():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert MF.recall_at(s, torch.tensor([0, 1, 0, 0]), 1) == 1.0
    assert MF.recall_at(s, torch.tensor([1, 0, 0, 0]), 1) == 0.0
    assert MF.recall_at(s, torch.tensor([1, 1, 0, 0]), 2) == 0.5


def _batched_routing_inputs(seed: int, b: int, tq: int, cm: int, n: int, hq: int = 4, hkv: int = 2, d: int = 8):
    """Random [B, Tq, Hq, D] queries and [B, C, Hkv, D] keys with a row without routing tokens (the
    last), padding chunks in row 0 and a document without chunks in row 1."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, tq, hq, d, generator=g)
    k = torch.randn(b, cm, hkv, d, generator=g)
    qmask = torch.rand(b, tq, generator=g) > 0.4
    qmask[b - 1] = False
    cdoc = torch.randint(0, n, (b, cm), generator=g)
    cdoc[0, cm - 3:] = -1
    cdoc[1] = cdoc[1].clamp(max=n - 2)
    return q, k, qmask, cdoc


@pytest.mark.parametrize("head", ["mean", "max"])
@pytest.mark.parametrize("query", ["max", "mean", "last"])
@pytest.mark.parametrize("chunk", ["max", "mean"])
@pytest.mark.parametrize("cosine", [True, False])
def test_batched_doc_scores_equal_per_row_scores(head, query, chunk, cosine):
    b, n = 3, 5
    q, k, qmask, cdoc = _batched_routing_inputs(5, b, 7, 11, n)
    got = MF.batched_doc_scores(q, qmask, k, cdoc, n, cosine, head_reduce=head, query_reduce=query, chunk_reduce=chunk)
    for r in range(b):
        real = cdoc[r] >= 0
        want = MF.doc_scores(q[r], k[r][real], cdoc[r][real], n, qmask[r], cosine,
                             head_reduce=head, query_reduce=query, chunk_reduce=chunk)  # fmt: skip
        assert torch.equal(torch.isinf(got[r]), torch.isinf(want))
        fin = torch.isfinite(want)
        assert torch.allclose(got[r][fin], want[fin], atol=1e-6)
        top = MF.batched_select_docs(got, 3)[r]
        ref = MF.select_docs(want, 3)
        assert top[: len(ref)].tolist() == ref.tolist() and (top[len(ref):] == -1).all()


@pytest.mark.parametrize("method", ["INFONCE", "INFONCE_DECOUPLE", "INFONCE_FOCAL", "INFONCE_DECOUPLE_FOCAL", "BCE"])
def test_batched_routing_losses_equal_the_per_sample_ones(method):
    """Rows of different lengths (padding -inf), a row of positives only: values, gradients, recall."""
    torch.manual_seed(0)
    ns = [9, 5, 3, 1, 4, 7]
    s = torch.randn(len(ns), 9, requires_grad=True)
    valid = torch.arange(9)[None] < torch.tensor(ns)[:, None]
    lab = torch.zeros(len(ns), 9, dtype=torch.bool)
    for b, n in enumerate(ns):
        lab[b, torch.randperm(n)[: max(1, n // 3)]] = True
    rows = MF.routing_loss_rows(method, s.masked_fill(~valid, float("-inf")), lab, valid)
    (g_rows,) = torch.autograd.grad(rows.sum(), s)
    ref = torch.stack([MF.routing_loss(method, s[b, :n], lab[b, :n]) for b, n in enumerate(ns)])
    (g_ref,) = torch.autograd.grad(ref.sum(), s)
    assert torch.allclose(rows, ref, rtol=1e-6, atol=1e-7) and torch.allclose(g_rows, g_ref, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(g_rows).all()
    for k in (1, 16):
        got = MF.recall_rows(s.detach().masked_fill(~valid, float("-inf")), lab, valid, k)
        want = [MF.recall_at(s.detach()[b, :n], lab[b, :n], k) for b, n in enumerate(ns)]
        assert got.tolist() == pytest.approx(want)


@pytest.mark.parametrize("head,query", [("mean", "mean"), ("max", "max"), ("mean", "last")])
@pytest.mark.parametrize("chunk", ["max", "mean"])
@pytest.mark.parametrize("cosine", [True, False])
def test_cross_doc_scores_score_every_sample_against_every_sample(head, query, chunk, cosine):
    """Block (b, j) of the cross scores is sample b's query over sample j's documents."""
    b, n = 3, 4
    q, k, qmask, cdoc = _batched_routing_inputs(6, b, 6, 10, n)
    kw = dict(head_reduce=head, query_reduce=query, chunk_reduce=chunk)
    got = MF.cross_doc_scores(q, qmask, k, cdoc, n, cosine, **kw).view(b, b, n)
    for j in range(b):
        want = MF.batched_doc_scores(q, qmask, k[j].expand(b, -1, -1, -1), cdoc[j].expand(b, -1), n, cosine, **kw)
        assert torch.equal(torch.isinf(got[:, j]), torch.isinf(want))
        fin = torch.isfinite(want)
        assert torch.allclose(got[:, j][fin], want[fin], atol=1e-5)
