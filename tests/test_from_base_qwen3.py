"""A Hugging Face Qwen3 directory as transformers itself writes it (sharded safetensors with
model.safetensors.index.json, generation_config.json, a Qwen-style tokenizer with the chat template and
the <|object_ref_start|>/<|object_ref_end|> markers) -> from_base equals transformers' outputs; trained
by our loop with the base's tokenizer and the official prompt, the checkpoint carries the base's files
and our engine serves it with the official Memory Interleave protocol."""

import json

import pytest
import torch

from msa import MSAConfig, MSAForCausalLM, ModelConfig
from msa.engine import Engine, InMemoryView
from msa.tokenizer import load_tokenizer, train_tokenizer
from msa.train import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
    TrainConfig,
)  # fmt: skip
from msa.train.data import Document, TrainSample
from msa.train.loop import Trainer

transformers = pytest.importorskip("transformers")

DOCS = [f"Person {i} was born in city{i} and works at firm{i}." for i in range(8)]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip
ROUTERS = MSAConfig(router_layer_idx="2,3", top_k_docs=2, pooling_kernel_size=4)


def qwen_dir(path, tied: bool):
    """A tiny random Qwen3 + tokenizer saved by transformers (weights in several shards)."""
    tok = train_tokenizer(DOCS * 3 + ["The answer to the question is: city3"], 360)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|object_ref_end|>", "<|object_ref_start|>"]})
    tok.chat_template = CHAT_TEMPLATE
    cfg = transformers.Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rope_theta=10000.0, tie_word_embeddings=tied, max_position_embeddings=512,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    norms = [p for n, p in hf.named_parameters() if n.endswith("norm.weight")]
    with torch.no_grad():  # non-trivial norms so a dropped norm weight shows
        torch._foreach_mul_(norms, [torch.rand_like(p) + 0.5 for p in norms])
    hf.generation_config = transformers.GenerationConfig(eos_token_id=[tok.eos_token_id], do_sample=False)
    hf.save_pretrained(path, max_shard_size="40KB")
    tok.save_pretrained(path)
    return hf, tok


@pytest.mark.parametrize("tied", [True, False])
def test_from_base_of_a_sharded_transformers_qwen3_equals_transformers(tmp_path, tied):
    hf, _ = qwen_dir(tmp_path, tied)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and (tmp_path / "generation_config.json").is_file()
    ours = MSAForCausalLM.from_base(tmp_path, ROUTERS)
    assert ours.config.tie_word_embeddings == tied
    x = torch.randint(0, hf.config.vocab_size, (2, 19))
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)
        # non-router layers (0, 1) hidden states exactly as transformers' (same float32 arithmetic)
        hs = hf(x, output_hidden_states=True).hidden_states
        ones = torch.ones(2, 19, dtype=torch.bool)
        from msa.model.context import KVCache, QueryContext

        ctx = QueryContext(attention_mask=ones, query_mask=ones, cache=KVCache.empty(4), routing=False)
        h2 = ours.model.run(x, torch.arange(19).expand(2, 19), ctx, num_layers=2)
    torch.testing.assert_close(h2, hs[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_a_qwen3_base_trained_by_our_loop_is_served_with_the_official_protocol(tmp_path):
    from test_engine import Scripted  # the scripted-model driver of the engine tests

    base = tmp_path / "base"
    qwen_dir(base, tied=True)
    samples = [TrainSample(memory=[Document(i, DOCS[i]) for i in range(4)], question=f"Where was person {j} born?",
                           answer=f"city{j}", positives=[j]) for j in range(4)]  # fmt: skip

    class Source:
        def sample(self, i, num_docs=None):
            return samples[i % len(samples)]

    ck = tmp_path / "ck"
    cfg = TrainConfig(
        model=ModelSpec(init=str(base), config=ModelConfig(msa=ROUTERS)),
        data=DataConfig(tokenizer=str(base), micro_batch_size=2, curriculum=[CurriculumStage(0, 4)]),
        schedule=ScheduleConfig([Phase("warmup", 2, 1e-3, 0.1, 1.0)]),
        checkpoint=CheckpointConfig(dir=str(ck)), logging=LoggingConfig(every=0),
        parallel=ParallelConfig(device="cpu"), aux_layers="all",
    )  # fmt: skip
    trainer = Trainer(cfg, source=Source())
    assert trainer.collator.fmt.memory_prefix == "<|im_start|>user\n"  # the official template
    hist = trainer.fit()
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    out = ck / "latest"
    out = ck / out.read_text().strip() if out.is_file() else sorted(ck.glob("step_*"))[-1]
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    tok = load_tokenizer(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    for marker in ("<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1, marker
    model = MSAForCausalLM.from_pretrained(out).eval()
    assert model.config.policy.prompt_format == "official"
    view = InMemoryView(model, tok, DOCS)
    script = "[3]<|object_ref_end|><End-of-Retrieve>The answer to the question is: city3<|im_end|>"
    engine = Engine(Scripted(model, tok.encode(script, add_special_tokens=False)), tok, view, device="cpu")
    ans = engine.ask("Where was person 3 born?")
    assert ans.text == "city3" and [r.retrieved for r in ans.rounds] == [[3], []]
    assert "The user's question is: Where was person 3 born?" in ans.transcript and DOCS[3] in ans.transcript
