"""Static-cache decoding (preallocated buffers written in place, CUDA graphs on the GPU) equals the
eager path that grows its cache by concatenation."""

import pytest
import torch

from msa.engine import Engine, InMemoryView
from msa.engine.generation import left_pad
from msa.engine.static_decode import StaticDecoder, bucket
from msa.model.static_cache import StaticKVCache
from msa.tokenizer import train_tokenizer
from tests.conftest import ROUTING_TEXTS, build_tiny_model

STEPS = 64


def _prefill(model, seed=0, b=3, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(4, model.config.vocab_size, (int(n),), generator=g) for n in torch.randint(8, 40, (10,), generator=g)]
    memory = model.encode(docs).to(device)
    rows = [torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist() for n in (7, 12, 4)[:b]]
    ids, mask = left_pad(rows)
    prefix = model.encode_prefix([1, 2, 3])
    return model.prefill(ids.to(device), mask.to(device), memory=memory, prefix=prefix, last_only=True), ids.shape[1]


def _greedy(feed, first: torch.Tensor, steps: int):
    """Greedy decoding through ``feed(ids [B, t], mask [B, t]) -> logits [B, t, V]``: row 1 stops feeding
    after 20 steps, row 0 is fed a 5-token block at step 10 (the others left-padded)."""
    nxt, toks, logits = first, [], []
    b = first.shape[0]
    for i in range(steps):
        ids, mask = nxt[:, None], torch.ones(b, 1, dtype=torch.bool)
        if i == 10:
            ids = torch.cat([torch.tensor([[5, 6, 7, 8]]).expand(b, 4), ids], 1)
            mask = torch.cat([torch.zeros(b, 4, dtype=torch.bool), mask], 1)
            mask[0] = True
        mask[1] = i < 20
        lg = feed(ids, mask).float().cpu()
        logits.append(lg[mask])  # every fed token's logits
        nxt = lg[:, -1].argmax(-1)
        toks.append(nxt)
    return torch.stack(toks), logits


def _eager_and_static(model, out, tokens, steps, graphs=False):
    """(tokens [steps, B], logits per step) of the static path, then of the eager path."""
    dev, b = model.device, out.logits.shape[0]
    first = out.logits.argmax(-1).cpu()
    with StaticDecoder(model, graphs=graphs).session(out.cache, tokens, steps + 8) as stepper:
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, stepper.cache.batch - b)).to(dev)  # noqa: E731

        def static(ids, mask):
            if ids.shape[1] == 1:
                return stepper.step(pad(ids)[:, 0], pad(mask)[:, 0])[0][:b, None].clone()
            return model.decode(pad(ids), stepper.cache, pad(mask))[:b]

        static_run = _greedy(static, first, steps)
    eager_run = _greedy(lambda ids, mask: model.decode(ids.to(dev), out.cache, mask.to(dev)), first, steps)
    return static_run, eager_run


def test_static_cache_layout_and_bucket():
    assert [bucket(b) for b in (1, 3, 5, 32, 33, 64, 65)] == [1, 4, 8, 32, 64, 64, 128]
    c = StaticKVCache.allocate(2, [3, 5], 10, num_kv_heads=2, head_dim=4, dtype=torch.float32, device=torch.device("cpu"))
    assert [k.shape for k in c.keys] == [torch.Size([2, 2, 13, 4]), torch.Size([2, 2, 15, 4])]
    c.base.copy_(torch.tensor([3, 5]))
    k = torch.randn(2, 2, 2, 4)
    keys, _, mask = c.write(1, k, k, torch.tensor([[True, True], [False, True]]))
    assert torch.equal(keys[:, :, 5:7].transpose(1, 2), k)
    assert mask.shape == (2, 2, 15)
    # token 0 of row 1 is padding: it sees only itself; token 1 sees itself (token 0 is not valid)
    assert mask[1, 0].nonzero().flatten().tolist() == [5] and mask[1, 1].nonzero().flatten().tolist() == [6]
    assert mask[0, 1].nonzero().flatten().tolist() == [5, 6]


def test_static_decode_equals_eager_over_64_steps():
    model = build_tiny_model()
    out, tokens = _prefill(model)
    (st_toks, st_logits), (eg_toks, eg_logits) = _eager_and_static(model, out, tokens, STEPS)
    assert torch.equal(st_toks, eg_toks)
    for a, b in zip(st_logits, eg_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_static_cache_capacity_is_checked():
    model = build_tiny_model()
    out, tokens = _prefill(model)
    c = StaticKVCache.allocate(3, [k.shape[1] - tokens for k in out.cache.keys], tokens + 1, 2, 16, torch.float32,
                               torch.device("cpu"))  # fmt: skip
    c.load(out.cache, tokens)
    model.decode(torch.zeros(3, 1, dtype=torch.long), c)
    with pytest.raises(ValueError, match="static cache holds"):
        model.decode(torch.zeros(3, 1, dtype=torch.long), c)


DOCS = ROUTING_TEXTS[:12]


@pytest.fixture(scope="module")
def engines():
    from msa import MSAConfig, MSAForCausalLM, ModelConfig

    tok = train_tokenizer(DOCS * 2 + ["The answer to the question is: Paris"], 400)
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      msa=MSAConfig(top_k_docs=3, pooling_kernel_size=8))  # fmt: skip
    model = MSAForCausalLM(cfg).init_weights(1).eval()
    view = InMemoryView(model, tok, DOCS)
    return Engine(model, tok, view, device="cpu"), Engine(model, tok, view, device="cpu", static_cache=False)


QUESTIONS = ["Where was Alice 3 born?", "Who is chemist number 14?", "Paris?", "Which doc is 7?"]


def test_engine_static_equals_eager_and_batch_equals_single(engines):
    static, eager = engines
    a = [x.transcript for x in static.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=24)]
    b = [x.transcript for x in eager.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=24)]
    assert a == b
    single = [static.ask(q, max_rounds=2, max_new_tokens=24).transcript for q in QUESTIONS]
    assert single == a


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_decode_equals_eager_bf16_gpu():
    model = build_tiny_model().to("cuda", torch.bfloat16)
    out, tokens = _prefill(model, device="cuda")
    (gr_toks, gr_logits), (eg_toks, eg_logits) = _eager_and_static(model, out, tokens, STEPS, graphs=True)
    assert torch.equal(gr_toks, eg_toks)
    for a, b in zip(gr_logits, eg_logits):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
