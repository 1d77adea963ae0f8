"""The core model's invariants on CUDA in bfloat16 (tiny and MSA-4B-shaped, 2 layers). Skipped without CUDA."""

import pytest
import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig, PackedBatch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = {
    "tiny": dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, msa=dict(top_k_docs=3, pooling_kernel_size=8)),
    "msa4b_2layers": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=2,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=5e6,
                          msa=dict(router_layer_idx="1", top_k_docs=16, pooling_kernel_size=64)),
}  # fmt: skip
TOL = 3e-2  # bf16 relative error between two computation orders of the same function


def build(shape, seed=0):
    kw = dict(SHAPES[shape])
    cfg = ModelConfig(**{k: v for k, v in kw.items() if k != "msa"}, msa=MSAConfig(**kw["msa"]))
    return MSAForCausalLM(cfg).init_weights(seed).to("cuda", torch.bfloat16).eval()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def case(model, n_docs, seed):
    g = torch.Generator().manual_seed(seed)
    v = model.config.vocab_size
    p = model.config.msa.chunk_size
    lens = torch.randint(1, 5 * p, (n_docs,), generator=g).tolist()
    docs = [torch.randint(0, v, (n,), generator=g) for n in lens]
    return torch.randint(0, v, (3,), generator=g), docs, torch.randint(0, v, (12,), generator=g)


@pytest.mark.parametrize("shape,n_docs", [("tiny", 7), ("msa4b_2layers", 24)])
def test_train_query_equivalence_gpu(shape, n_docs):
    model = build(shape)
    template, docs, query = case(model, n_docs, 1)
    off = model.config.msa.query_offset
    tok = template.tolist() + sum((d.tolist() for d in docs), []) + query.tolist()
    did = [-2] * 3 + sum(([i + 1] * len(d) for i, d in enumerate(docs)), []) + [0] * len(query)
    pos = [0, 1, 2] + sum((list(range(len(d))) for d in docs), []) + list(range(off, off + len(query)))
    batch = PackedBatch(*(torch.tensor([x]) for x in (tok, did, pos)), torch.ones(1, len(tok), dtype=torch.bool)).to("cuda")
    q_index = torch.arange(len(tok) - len(query), len(tok), device="cuda")
    with torch.no_grad():
        out = model.forward_train(batch, logits_index=q_index)
    mem = model.encode(docs)
    assert mem.layers[model.router_layers[0]].keys.is_cuda
    prefix = model.encode_prefix(template)
    res = model.prefill(query[None], memory=mem, prefix=prefix)
    for layer in model.router_layers:
        # The same documents score the same in both modes (bf16 hidden states, fp32 scoring) ...
        routed = res.routings[layer]
        train_scores = out.doc_scores[layer][0, routed.docs[0]]
        assert (routed.scores[0].to(train_scores) - train_scores).abs().max() < 2e-2
    # ... and with the train-mode selection imposed, the assembled attention gives the same logits
    # (near-ties at the top-k cut may legitimately swap under bf16 rounding, so selection is pinned).
    pinned = PinnedAccess(model.memory_access(mem), {l: out.selected[l] for l in model.router_layers})
    res = model.prefill(query[None], memory=pinned, prefix=prefix)
    assert rel(res.logits[0].float(), out.logits.float()) < TOL


class PinnedAccess:
    """A MemoryAccess that returns a fixed selection per layer and fetches through another access."""

    def __init__(self, inner, selections):
        self.inner, self.selections = inner, selections

    def route(self, layer, q_router, query_mask, k):
        return self.selections[layer]

    def fetch(self, layer, docs):
        return self.inner.fetch(layer, docs)


@pytest.mark.parametrize("shape", ["tiny", "msa4b_2layers"])
def test_cached_decode_and_encode_invariance_gpu(shape):
    model = build(shape, seed=2)
    template, docs, query = case(model, 9, 3)
    mem, prefix = model.encode(docs), model.encode_prefix(template)
    gen = torch.randint(0, model.config.vocab_size, (4,))
    pre = model.prefill(query[None], memory=mem, prefix=prefix)
    steps = torch.cat([model.decode(gen[i : i + 1][None], pre.cache)[0] for i in range(4)])
    qmask = torch.cat([torch.ones(len(query)), torch.zeros(4)]).bool()[None]
    full = model.prefill(torch.cat([query, gen])[None], query_mask=qmask, memory=mem, prefix=prefix)
    assert rel(steps.float(), full.logits[0, len(query) :].float()) < TOL
    for i in (0, 4):
        alone = model.encode([docs[i]])
        sel = mem.select(torch.tensor([i]))
        for layer in model.router_layers:
            for a, b in zip(alone.layers[layer].tensors(), sel.layers[layer].tensors()):
                assert rel(a.float(), b.float()) < TOL


def test_save_load_roundtrip_gpu(tmp_path):
    model = build("tiny", seed=5)
    model.save_pretrained(tmp_path)
    loaded = MSAForCausalLM.from_pretrained(tmp_path, device="cuda")
    assert loaded.dtype == torch.bfloat16
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 211, (2, 10), device="cuda")
    assert torch.equal(model(x), loaded(x))


def test_flex_train_attention_equals_sdpa_gpu(monkeypatch):
    """The CUDA training backend (compiled FlexAttention block masks) equals dense SDPA masks,
    forward and backward."""
    model = build("tiny", seed=7).float()
    template, docs, query = case(model, 6, 9)
    off = model.config.msa.query_offset
    tok = template.tolist() + sum((d.tolist() for d in docs), []) + query.tolist()
    did = [-2] * 3 + sum(([i + 1] * len(d) for i, d in enumerate(docs)), []) + [0] * len(query)
    pos = [0, 1, 2] + sum((list(range(len(d))) for d in docs), []) + list(range(off, off + len(query)))
    n = len(tok)
    batch = PackedBatch(*(torch.tensor([x, x[: n - 5] + x[:5]]) for x in (tok, did, pos)),
                        torch.tensor([[True] * n, [True] * (n - 5) + [False] * 5])).to("cuda")  # fmt: skip
    grads, outs = {}, {}
    for name in ("sdpa", "flex"):
        monkeypatch.setenv("MSA_TRAIN_ATTENTION", name)
        model.zero_grad(set_to_none=True)
        out = model.forward_train(batch)
        loss = out.logits[0, -len(query):].float().logsumexp(-1).mean() + sum(s[:, :3].sum() for s in out.doc_scores.values())
        loss.backward()
        outs[name] = out.logits.detach()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert rel(outs["flex"], outs["sdpa"]) < 1e-4
    assert rel(grads["flex"], grads["sdpa"]) < 1e-3


def test_packed_encode_equals_padded_gpu():
    model = build("tiny", seed=11)
    _, docs, _ = case(model, 9, 12)
    a, b = model.encode(docs, packed=False), model.encode(docs, packed=True)  # packed: FlexAttention
    for layer in model.router_layers:
        for x, y in zip(a.layers[layer].tensors(), b.layers[layer].tensors()):
            assert rel(y.float(), x.float()) < TOL
