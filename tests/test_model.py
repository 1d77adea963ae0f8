"""The decoder and its three MSA modes (issue: core model)."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from msa import MSAConfig, MSAForCausalLM, ModelConfig, PackedBatch
from msa.config import EnginePolicy, MSALossConfig
from msa.model import CheckpointError
from msa.model.checkpoint import official_msa_config

V = 101


def tiny(seed=0, dtype=torch.float32, prompt_format="official", **msa_kw):
    kw = dict(top_k_docs=2, pooling_kernel_size=4)
    kw.update(msa_kw)
    cfg = ModelConfig(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, rope_theta=10000.0, msa=MSAConfig(**kw),
        policy=EnginePolicy(prompt_format=prompt_format),
    )  # fmt: skip
    return MSAForCausalLM(cfg).init_weights(seed).to(dtype).eval()


def ids(n, seed):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def packed(template, docs, stream, offset):
    """One packed sample: [template -2 | docs 1..N | stream (ids, doc_ids)] with official positions."""
    tok, did, pos = list(template.tolist()), [-2] * len(template), list(range(len(template)))
    for i, d in enumerate(docs, 1):
        tok += d.tolist()
        did += [i] * len(d)
        pos += list(range(len(d)))
    for j, (t, dd) in enumerate(stream):
        tok.append(int(t))
        did.append(dd)
        pos.append(offset + j)
    return tok, did, pos


def batch_of(samples):
    l = max(len(s[0]) for s in samples)
    pad = lambda xs, v: [x + [v] * (l - len(x)) for x in xs]  # noqa: E731
    return PackedBatch(
        input_ids=torch.tensor(pad([s[0] for s in samples], 0)),
        doc_ids=torch.tensor(pad([s[1] for s in samples], -1)),
        position_ids=torch.tensor(pad([s[2] for s in samples], 0)),
        attention_mask=torch.tensor(pad([[1] * len(s[0]) for s in samples], 0)).bool(),
    )


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_decoder_equals_hf_qwen3(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Qwen3Config(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=512, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms so the test can see them
        for n, p in hf.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    ours = MSAForCausalLM.from_base(tmp_path, MSAConfig(router_layer_idx="1,2", top_k_docs=2, pooling_kernel_size=4))
    x = torch.randint(0, V, (2, 17))
    with torch.no_grad():
        ref = hf(x).logits
        got = ours(x)
    assert rel_err(got, ref) < 1e-4
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4  # max error, relative to the logit scale
    # router weights are fresh and seeded
    again = MSAForCausalLM.from_base(tmp_path, MSAConfig(router_layer_idx="1,2", top_k_docs=2, pooling_kernel_size=4))
    r1, r2 = ours.router_parameters(), again.router_parameters()
    assert len(r1) == 4 and all(torch.equal(a, b) for a, b in zip(r1, r2))


def build_case(model, n_docs=3, seed=0):
    template = ids(3, seed)
    docs = [ids(n, seed + 1 + i) for i, n in enumerate([5, 9, 4, 13, 1][:n_docs])]
    query = ids(6, seed + 50)
    tail = ids(2, seed + 60)
    resp = ids(3, seed + 70)
    stream = [(t, 0) for t in query] + [(t, -2) for t in tail] + [(t, -1) for t in resp]
    return template, docs, query, tail, resp, stream


@pytest.mark.parametrize("backend,reduce", [("sdpa", "max"), ("flex", "max"), ("sdpa", "mean")])
def test_train_mode_equals_query_mode_over_encoded_memory(backend, reduce, monkeypatch):
    monkeypatch.setenv("MSA_TRAIN_ATTENTION", backend)  # flex runs uncompiled (forward only) on the CPU
    model = tiny(top_k_docs=2, query_reduce_method=reduce)
    offset = model.config.msa.query_offset
    samples, cases = [], []
    for s in range(3):
        case = build_case(model, n_docs=3 + s % 2, seed=10 * s)
        template, docs, query, tail, resp, stream = case
        samples.append(packed(template, docs, stream, offset))
        cases.append(case)
    batch = batch_of(samples)
    with torch.no_grad():
        out = model.forward_train(batch)
    for s, (template, docs, query, tail, resp, stream) in enumerate(cases):
        memory = model.encode(docs)
        prefix = model.encode_prefix(template)
        q_ids = torch.cat([query, tail, resp])[None]
        qmask = torch.tensor([d == 0 for _, d in stream])[None]
        res = model.prefill(q_ids, query_mask=qmask, memory=memory, prefix=prefix)
        start = len(template) + sum(len(d) for d in docs)
        train_logits = out.logits[s, start : start + q_ids.shape[1]]
        assert rel_err(res.logits[0], train_logits) < 1e-5
        for layer in model.router_layers:
            assert res.routings[layer].docs[0].tolist() == out.selected[layer].docs[s].tolist()
            n = len(docs)
            assert torch.isinf(out.doc_scores[layer][s, n:]).all()


def test_batch_without_memory_documents_trains_like_the_plain_decoder():
    """A batch whose samples have no memory documents (e.g. every read document hidden) must train:
    router layers select nothing and the logits are those of the decoder without memory."""
    model = tiny(top_k_docs=2)
    template, _, query, tail, resp, stream = build_case(model)
    batch = batch_of([packed(template, [], stream, model.config.msa.query_offset)])
    out = model.forward_train(batch)
    out.logits.sum().backward()  # gradients flow without a routing target
    q_ids = torch.cat([query, tail, resp])[None]
    qmask = torch.tensor([d == 0 for _, d in stream])[None]
    with torch.no_grad():
        res = model.prefill(q_ids, query_mask=qmask, memory=None, prefix=model.encode_prefix(template))
    assert rel_err(res.logits[0], out.logits[0, len(template) :].detach()) < 1e-5
    for layer in model.router_layers:
        assert (out.selected[layer].docs == -1).all() and torch.isinf(out.selected[layer].scores).all()


def test_non_router_layers_see_only_local_context():
    model = tiny(router_layer_idx="3")
    template, docs, query, tail, resp, stream = build_case(model)
    memory = model.encode(docs)
    prefix = model.encode_prefix(template)
    q = torch.cat([query, tail, resp])[None]
    with_mem = model.prefill(q, memory=memory, prefix=prefix)
    no_mem = model.prefill(q, memory=None, prefix=prefix)
    # only layer 3 routes: hidden states of layers 0..2 are identical, logits differ
    assert set(with_mem.routings) == {3}
    for layer in range(3):
        assert torch.equal(with_mem.cache.keys[layer], no_mem.cache.keys[layer])
    assert not torch.allclose(with_mem.logits, no_mem.logits)


def test_document_memory_is_independent_of_batch_and_order():
    model = tiny()
    docs = [ids(n, 100 + n) for n in (3, 17, 8, 1, 30, 33, 70, 64, 100)]
    together = model.encode(docs)
    order = [4, 2, 8, 0, 6, 3, 7, 5, 1]
    shuffled = model.encode([docs[i] for i in order])
    for i, d in enumerate(docs):
        alone = model.encode([d])
        in_batch = together.select(torch.tensor([i]))
        in_other = shuffled.select(torch.tensor([order.index(i)]))
        for layer in model.router_layers:
            for a, b, c in zip(alone.layers[layer].tensors(), in_batch.layers[layer].tensors(), in_other.layers[layer].tensors()):
                assert a.shape[0] == (len(d) + 3) // 4
                assert torch.equal(a, b) and torch.equal(a, c)  # bitwise on the CPU


def test_cached_decoding_equals_full_recompute():
    model = tiny()
    template, docs, query, tail, resp, stream = build_case(model)
    memory, prefix = model.encode(docs), model.encode_prefix(template)
    prompt = torch.stack([torch.cat([query, tail]), torch.cat([ids(2, 7), query[:6]])])  # [2, 8]
    attn = torch.ones(2, 8, dtype=torch.bool)
    attn[1, :2] = False  # left padding
    qmask = attn.clone()
    qmask[0, 6:] = False
    gen = torch.stack([ids(4, 1), ids(4, 2)])
    pre = model.prefill(prompt, attn, qmask, memory=memory, prefix=prefix)
    steps = [model.decode(gen[:, i : i + 1], pre.cache)[:, 0] for i in range(4)]
    full = model.prefill(
        torch.cat([prompt, gen], 1), torch.cat([attn, torch.ones(2, 4, dtype=torch.bool)], 1),
        torch.cat([qmask, torch.zeros(2, 4, dtype=torch.bool)], 1), memory=memory, prefix=prefix,
    )  # fmt: skip
    for layer in model.router_layers:
        assert torch.equal(full.routings[layer].docs, pre.routings[layer].docs)
    for i in range(4):
        assert rel_err(steps[i], full.logits[:, 8 + i]) < 1e-5
    # several tokens at once equal one at a time
    pre2 = model.prefill(prompt, attn, qmask, memory=memory, prefix=prefix)
    multi = model.decode(gen, pre2.cache)
    assert rel_err(multi, torch.stack(steps, 1)) < 1e-5


def test_save_load_roundtrip_is_bitwise(tmp_path):
    model = tiny(seed=3)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "msa" and cfg["architectures"] == ["MSAForCausalLM"]
    assert cfg["msa_config"]["router_layer_idx"] == "2,3"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.layers.2.self_attn.router_q_proj.0.weight").get_shape() == [48, 48]
        assert f.get_slice("model.layers.2.self_attn.router_k_proj.0.weight").get_shape() == [24, 48]
    assert "lm_head.weight" not in keys and "temperature" in keys
    assert not any("router" in k for k in keys if k.startswith(("model.layers.0.", "model.layers.1.")))
    loaded = MSAForCausalLM.from_pretrained(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    x = torch.randint(0, V, (1, 9))
    assert torch.equal(model(x), loaded(x))
    assert model.fingerprint() == loaded.fingerprint()
    assert tiny(seed=4).fingerprint() != model.fingerprint()


def test_sharded_save_loads_the_same_model(tmp_path):
    model = tiny(seed=3)
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)  # replaces the single file
    shards = sorted(p.name for p in tmp_path.glob("model*.safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    loaded = MSAForCausalLM.from_pretrained(tmp_path)
    assert loaded.fingerprint() == model.fingerprint()


def test_bad_checkpoints_fail_with_one_clear_message(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny()
    model.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd.pop("model.layers.3.self_attn.router_k_proj.0.weight")
    sd["model.layers.0.self_attn.router_q_proj.0.weight"] = torch.zeros(48, 48)
    sd["model.norm.weight"] = torch.zeros(7)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        MSAForCausalLM.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): model.layers.3.self_attn.router_k_proj.0.weight" in msg
    assert "unexpected keys (1): model.layers.0.self_attn.router_q_proj.0.weight" in msg
    assert "model.norm.weight: checkpoint (7,) vs model (48,)" in msg
    with pytest.raises(CheckpointError, match="no checkpoint directory or shipped model"):
        MSAForCausalLM.from_pretrained(tmp_path / "nope")


def test_official_config_semantics():
    official = {
        "router_layer_idx": "18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35", "top_k_docs": 16,
        "pooling_kernel_size": 64, "head_reduce_method": "mean", "query_reduce_method": "max",
        "chunk_reduce_method": "max", "decouple_router": True, "decouple_pooling_mode": "mean", "aux_loss": False,
        "aux_loss_method": "INFONCE_DECOUPLE", "infonce_loss_temp": 0.1, "rewrite_position": True,
        "lmloss_weigth": 1.0, "auxloss_weight": 0.1, "recloss_weight": 0.0, "ansloss_weight": 1.0,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg, loss = official_msa_config(official)
    assert cfg.router_layers(36) == tuple(range(18, 36))
    assert cfg.query_offset == 19
    assert cfg.train_cosine() is True and cfg.inference_cosine() is False  # the release's mismatch, reproduced
    assert official_msa_config({**official, "aux_loss_method": "INFONCE"})[0].inference_cosine() is True
    assert {**cfg.to_dict(36), **loss.to_dict()}.items() >= official.items()  # the official keys round-trip
    partial = dict(official)
    del partial["router_layer_idx"], partial["decouple_router"]
    with pytest.warns(UserWarning, match="no router_layer_idx"):
        cfg, _ = official_msa_config(partial)
    assert cfg.router_layers(36) == () and cfg.decouple_router is False  # None reads as false
    with pytest.raises(CheckpointError, match="top_k_docs"):
        official_msa_config({k: v for k, v in official.items() if k != "top_k_docs"})
    written = ModelConfig(loss=MSALossConfig(auxloss_weight=0.5)).to_hf_dict()["msa_config"]
    msa, loss = official_msa_config(written)  # what we write reads back the same, the loss keys included
    assert loss == MSALossConfig(auxloss_weight=0.5) and msa.to_dict() == MSAConfig().to_dict(36)
    with pytest.raises(ValueError, match="router_layer_idx"):
        MSAConfig(router_layer_idx="1,x").router_layers(4)
    with pytest.raises(ValueError, match="out of range"):
        MSAConfig(router_layer_idx="9").router_layers(4)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig(num_attention_heads=6, num_key_value_heads=4)


def test_coupled_router_uses_attention_qk():
    model = tiny(decouple_router=False, routing_cosine=None, aux_loss_method="INFONCE")
    assert not model.router_parameters()
    template, docs, query, tail, resp, stream = build_case(model)
    res = model.prefill(query[None], memory=model.encode(docs), prefix=model.encode_prefix(template))
    assert set(res.routings) == set(model.router_layers)
    mem = model.encode(docs)
    for layer in model.router_layers:  # routing keys are the pooled attention keys
        assert torch.equal(mem.layers[layer].routing_keys, mem.layers[layer].keys)


def test_gradients_router_only_through_aux_loss():
    from msa.functional import decoupled_infonce_loss

    model = tiny(top_k_docs=2).train()
    offset = model.config.msa.query_offset
    template, docs, query, tail, resp, stream = build_case(model)
    batch = batch_of([packed(template, docs, stream, offset)])
    routers = set(id(p) for p in model.router_parameters())
    backbone = [p for p in model.parameters() if id(p) not in routers and p.requires_grad]

    out = model.forward_train(batch)
    n_resp = len(resp)
    lm = F.cross_entropy(out.logits[0, -n_resp - 1 : -1], batch.input_ids[0, -n_resp:])
    lm.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.router_parameters())
    assert sum(float(p.grad.abs().sum()) for p in backbone if p.grad is not None) > 0
    model.zero_grad(set_to_none=True)

    out = model.forward_train(batch)
    labels = torch.tensor([0, 1, 0])
    aux = sum(decoupled_infonce_loss(out.doc_scores[l][0, :3], labels) for l in model.router_layers)
    aux.backward()
    assert all(p.grad is not None and p.grad.any() for p in model.router_parameters())


def test_user_errors_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="token ids must be in"):
        model(torch.tensor([[5, V]]))
    with pytest.raises(ValueError, match="empty document"):
        model.encode([ids(3, 0), []])
    with pytest.raises(ValueError, match="at least one document"):
        model.encode([])
    t, docs, q, tail, resp, stream = build_case(model)
    tok, did, pos = packed(t, docs, stream, 19)
    did[5] = 2  # document 1 interrupted by a token of document 2, then resumed
    with pytest.raises(ValueError, match="contiguous"):
        model.forward_train(batch_of([(tok, did, pos)]))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_cpu_modes_agree(dtype):
    model = tiny(dtype=dtype)
    template, docs, query, tail, resp, stream = build_case(model)
    res = model.prefill(query[None], memory=model.encode(docs), prefix=model.encode_prefix(template))
    ref = tiny(dtype=torch.float32).prefill(query[None], memory=tiny().encode(docs), prefix=tiny().encode_prefix(template))
    assert res.logits.dtype == torch.bfloat16
    assert rel_err(res.logits.float(), ref.logits) < 3e-2


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_encode_equals_padded(backend, monkeypatch):
    monkeypatch.setenv("MSA_TRAIN_ATTENTION", backend)
    model = tiny()
    docs = [ids(n, 300 + n) for n in (3, 17, 8, 1, 30)]
    a, b = model.encode(docs, packed=False), model.encode(docs, packed=True)
    assert torch.equal(a.chunk_doc, b.chunk_doc)
    for layer in model.router_layers:
        for x, y in zip(a.layers[layer].tensors(), b.layers[layer].tensors()):
            assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)


def test_prompt_format_is_saved_and_picked_by_the_engine(tmp_path):
    from msa.engine import Engine
    from msa.prompt import OFFICIAL, QUESTION_ONLY

    model = tiny(prompt_format="question")
    model.save_pretrained(tmp_path)
    loaded = MSAForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.policy.prompt_format == "question"
    class Tok:  # the engine only asks for its stop tokens at construction
        def encode(self, text, add_special_tokens=False):
            return [1]

        def convert_tokens_to_ids(self, token):
            return 2

    assert Engine(loaded, Tok(), object()).prompt is QUESTION_ONLY
    assert Engine(tiny(), Tok(), object()).prompt is OFFICIAL
    with pytest.raises(ValueError, match="prompt_format"):
        tiny(prompt_format="chatml")
    assert EnginePolicy().prompt_format == "official" and OFFICIAL.question_head.startswith("\nPlease answer")
