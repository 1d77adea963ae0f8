"""Static-cache decoding (preallocated buffers written in place, CUDA graphs on the GPU) equals the
eager path that grows its cache by concatenation."""

import pytest
import torch

from msa.engine import Engine
from msa.engine.generation import left_pad
from msa.engine.static_decode import StaticDecoder, StaticStepper, bucket
from msa.model.static_cache import StaticKVCache
from tests.conftest import assert_same_routing, build_tiny_model
from tests.test_engine import Scripted, setup  # noqa: F401  (setup: the engine tests' tiny model and view)

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


def _eager_and_static(model, out, tokens, steps, graphs=False, pad_rows=0):
    """(tokens [steps, B], logits per step) of the static path (``pad_rows`` empty rows more), then of
    the eager path."""
    dev, b = model.device, out.logits.shape[0]
    first = out.logits.argmax(-1).cpu()
    decoder = StaticDecoder(model, graphs=graphs)
    if pad_rows:  # a padded bucket on the CPU (graphs pad to buckets; eager sessions do not)
        cfg = model.config
        context = [k.shape[1] - tokens for k in out.cache.keys]
        cache = StaticKVCache.allocate(b + pad_rows, context, tokens + steps // 4, cfg.num_key_value_heads, cfg.head_dim,
                                       model.dtype, dev, (model.carry_layer, cfg.hidden_size))  # fmt: skip
        decoder._steppers[b + pad_rows] = StaticStepper(model, cache, graph=False)
        decoder._steppers[b] = decoder._steppers[b + pad_rows]
    with decoder.session(out.cache, tokens, steps // 4) as stepper:  # too small: the cache grows (graphs: recaptured)
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, stepper.cache.batch - b)).to(dev)  # noqa: E731

        def static(ids, mask):
            if ids.shape[1] == 1:
                return stepper.step(pad(ids)[:, 0], pad(mask)[:, 0])[0][:b, None].clone()
            stepper.ensure(ids.shape[1])
            return model.decode(pad(ids), stepper.cache, pad(mask))[:b]

        static_run = _greedy(static, first, steps)
        assert stepper.cache.capacity >= tokens + steps + 4  # it grew
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


@pytest.mark.parametrize("pad_rows", [0, 2])
def test_static_decode_equals_eager_over_64_steps(pad_rows):
    model = build_tiny_model()
    out, tokens = _prefill(model)
    (st_toks, st_logits), (eg_toks, eg_logits) = _eager_and_static(model, out, tokens, STEPS, pad_rows=pad_rows)
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


@pytest.fixture(scope="module")
def engines(setup):
    tok, model, view = setup
    return Engine(model, tok, view, device="cpu"), Engine(model, tok, view, device="cpu", static_cache=False)


QUESTIONS = ["Where was Alice 3 born?", "Who is chemist number 14?", "Paris?", "Which doc is 7?"]


def test_engine_static_equals_eager_and_batch_equals_single(engines):
    static, eager = engines
    a = [x.transcript for x in static.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=24)]
    b = [x.transcript for x in eager.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=24)]
    assert a == b
    single = [static.ask(q, max_rounds=2, max_new_tokens=24).transcript for q in QUESTIONS]
    assert single == a


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_graphed_decode_equals_eager_bf16_gpu():
    model = build_tiny_model()
    with torch.no_grad():  # confident logits (std ~5): bf16 rounding cannot swap the greedy token
        model.lm_head.weight.mul_(30.0)
    model = model.to("cuda", torch.bfloat16)
    out, tokens = _prefill(model, device="cuda")
    # 300 steps: more than the first allocation holds, so the cache grows and the step is captured again
    (gr_toks, gr_logits), (eg_toks, eg_logits) = _eager_and_static(model, out, tokens, 300, graphs=True)
    assert torch.equal(gr_toks, eg_toks)
    for a, b in zip(gr_logits, eg_logits):
        torch.testing.assert_close(a, b, atol=0.1, rtol=0.02)


@pytest.mark.gpu
@gpu
def test_fused_inference_equals_the_eager_ops_gpu():
    """Fused inference (compiled norms / RoPE / SwiGLU, concatenated projections, and the one-token
    steps' compiled layers of ``msa.model.fused_decode``, on CUDA without gradients) against the eager
    ops. Decoding from the same prefill: the same tokens over 64 graphed steps, logits within bf16
    rounding. The prefill: routing scores within bf16 rounding, the same documents wherever no two
    scores are that close (a near tie may swap places)."""
    import copy

    from msa.model import fused_decode
    from msa.model.layers import set_fused_inference

    model = build_tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model = model.to("cuda", torch.bfloat16)
    prefills, runs = [], []
    for on in (True, False):
        before = set_fused_inference(on)
        try:
            prefills.append(_prefill(model, device="cuda")[0])
            out, tokens = _prefill(model, device="cuda")
            if runs:  # decode from the fused run's prefill
                out = copy.deepcopy(first)
            else:
                first = copy.deepcopy(out)
            (toks, logits), _ = _eager_and_static(model, out, tokens, 64, graphs=True)
            runs.append((toks, logits))
        finally:
            set_fused_inference(before)
    assert not fused_decode._compiled_layer.failed, "the compiled decode layers fell back to the eager ones"
    (ft, fl), (et, el) = runs
    assert torch.equal(ft, et), "graphed decoding: fused and eager tokens differ"
    for a, b in zip(fl, el):  # within two bf16 steps of the step's largest logit (the logits are ~30x)
        tol = 2 * torch.finfo(torch.bfloat16).eps * float(b.abs().max())
        torch.testing.assert_close(a, b, atol=tol, rtol=0)
    fo, eo = prefills
    for i in eo.routings:
        assert_same_routing(fo.routings[i], eo.routings[i], score_tol=2e-2)


@pytest.mark.gpu
@gpu
def test_engine_graphed_equals_eager_gpu(setup):
    """The engine on CUDA (float32): graphed static decoding answers as the eager reference path
    (the real model throughout: graph replays do not pass through a wrapper)."""
    import copy

    from msa.engine import InMemoryView
    from tests.test_engine import DOCS

    tok, model, _ = setup
    model = copy.deepcopy(model).to("cuda")
    view = InMemoryView(model, tok, DOCS)
    answers = []
    for opts in ({"cuda_graphs": True}, {"static_cache": False, "interleave_reuse": False}):
        engine = Engine(model, tok, view, **opts)
        answers.append([a.transcript for a in engine.ask_batch(QUESTIONS, max_rounds=3, max_new_tokens=16)])
        answers[-1] += [engine.ask(q, max_rounds=3, max_new_tokens=16).transcript for q in QUESTIONS[:2]]
    assert answers[0] == answers[1]


def _interleave_case(model, static: bool):
    """Round 1 (prefill + 6 greedy tokens), then round 2 as a resumed prefill and as a full prefill of
    the same sequences (the generated tokens and an appended block, routing on the first tokens)."""
    from msa.model.carry import carry_rows

    g = torch.Generator().manual_seed(5)
    docs = [torch.randint(4, model.config.vocab_size, (int(n),), generator=g) for n in torch.randint(8, 40, (10,), generator=g)]
    memory = model.encode(docs)
    prefix = model.encode_prefix([1, 2, 3])
    rows = [torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist() for n in (7, 12, 4)]
    ids, mask = left_pad(rows)
    out = model.prefill(ids, mask, memory=memory, prefix=prefix, last_only=True, keep_carry=True)
    gen = [[t] for t in out.logits.argmax(-1).tolist()]
    with StaticDecoder(model, graphs=False).session(out.cache, ids.shape[1], 16) as stepper:
        cache = stepper.cache if static else out.cache
        b = len(rows)
        for _ in range(5):
            step = torch.zeros(cache.next_position.shape[0], 1, dtype=torch.long)
            step[:b, 0] = torch.tensor([r[-1] for r in gen])
            fed = torch.arange(step.shape[0])[:, None] < b
            nxt = model.decode(step, cache, fed)[:b, -1].argmax(-1)
            for r, t in zip(gen, nxt.tolist()):
                r.append(t)
        carries = carry_rows(cache, list(range(b)))
    added = [[9, 10, 11], [12], [13, 14, 15, 16, 17]]
    full = [r + g_ + a for r, g_, a in zip(rows, gen, added)]
    fids, fmask = left_pad(full)
    qmask = torch.zeros_like(fmask)
    for i, r in enumerate(full):  # the question tokens route, as in a later engine round
        qmask[i, fids.shape[1] - len(r) : fids.shape[1] - len(r) + 3] = True
    suffix, smask = left_pad([g_[-1:] + a for g_, a in zip(gen, added)])
    resumed = model.resume(carries, suffix, smask, qmask, memory=memory, prefix=prefix)
    recomputed = model.prefill(fids, fmask, qmask, memory=memory, prefix=prefix)
    return resumed, recomputed, fmask


@pytest.mark.parametrize("static", [False, True])
def test_interleave_reuse_equals_recompute(static):
    model = build_tiny_model()
    resumed, recomputed, fmask = _interleave_case(model, static)
    assert set(resumed.routings) == set(recomputed.routings) == set(model.router_layers)
    for layer, r in recomputed.routings.items():
        assert torch.equal(resumed.routings[layer].docs, r.docs)
    torch.testing.assert_close(resumed.logits[fmask], recomputed.logits[fmask], atol=1e-5, rtol=1e-5)
    # and decoding after the resumed prefill equals decoding after the recomputed one
    tok = recomputed.logits[:, -1].argmax(-1)[:, None]
    for _ in range(4):
        a = model.decode(tok, resumed.cache)[:, -1]
        b = model.decode(tok, recomputed.cache)[:, -1]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        tok = b.argmax(-1)[:, None]


class Nudged(Scripted):
    """The real model, except that the calls numbered in ``force`` emit the round-end marker: real
    multi-round Memory Interleave with a random model (counts resumed prefills)."""

    def __init__(self, model, marker: int, force: set[int]):
        super().__init__(model, [])
        self.marker, self.force, self.resumed = marker, force, 0

    def _force(self, logits):
        self.pos += 1
        if self.pos in self.force:
            logits = logits.clone()
            logits[..., self.marker] = 1e4
        return logits

    def resume(self, *a, **k):
        self.resumed += 1
        return super().resume(*a, **k)


@pytest.mark.parametrize("static_cache", [False, True])
def test_engine_interleave_reuse_equals_recompute(engines, static_cache):
    static, _ = engines
    tok, view = static.tokenizer, static.bank
    marker = static.stops.round_end[-1]
    answers, resumed = [], []
    for reuse in (True, False):
        nudged = Nudged(static.model, marker, {3, 9, 10, 17})
        engine = Engine(nudged, tok, view, device="cpu", static_cache=static_cache, interleave_reuse=reuse)
        answers.append(engine.ask_batch(QUESTIONS[:2], max_rounds=3, max_new_tokens=12, return_routing=True))
        resumed.append(nudged.resumed)
    assert resumed[0] >= 1 and resumed[1] == 0
    assert max(len(a.rounds) for a in answers[0]) >= 2
    for a, b in zip(*answers):
        assert a.transcript == b.transcript
        for ra, rb in zip(a.rounds, b.rounds):
            assert ra.routing.keys() == rb.routing.keys()
            for layer, sel in rb.routing.items():
                assert [d for d, _ in ra.routing[layer]] == [d for d, _ in sel]
                assert [x for _, x in ra.routing[layer]] == pytest.approx([x for _, x in sel], abs=1e-5)


def test_engine_static_sampling_equals_eager(engines):
    """Seeded temperature sampling draws the same tokens from static-cache logits as from eager ones."""
    from msa.engine.generation import Sampler

    static, eager = engines
    texts = []
    for engine in (static, eager):
        samplers = [Sampler(0.8, seed=i) for i in range(len(QUESTIONS))]
        texts.append([a.transcript for a in engine.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=20, samplers=samplers)])
    assert texts[0] == texts[1]
    assert len(set(texts[0])) > 1

