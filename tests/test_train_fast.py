"""The fast training path computes the reference path's function: fused chunked cross-entropy equals
plain cross-entropy (values and gradients), one forward gives the same loss, scores and selection, and
a few training steps give the same losses; selectable levers (checkpointing) change nothing."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from msa.data.bios import BiosConfig, BiosWorld
from msa.train import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase, ScheduleConfig,
    TrainConfig, tiny_model_config,
)  # fmt: skip
from msa.train.config import SpeedConfig
from msa.train.fused_ce import chunked_cross_entropy
from msa.train.loop import Trainer

WORLD = BiosConfig(num_people=512, seed=0)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_cross_entropy_equals_plain_values_and_grads(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    ref = F.cross_entropy(h @ w.T, t, reduction="sum")
    gh, gw = torch.autograd.grad(ref * 0.7, (h, w))
    out = chunked_cross_entropy(h, w, t, chunk)
    fh, fw = torch.autograd.grad(out * 0.7, (h, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(fh, gh)
    torch.testing.assert_close(fw, gw)


def test_chunked_cross_entropy_under_bf16_autocast_matches_bf16_logits():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(20, 32, generator=g, requires_grad=True)
    w = torch.randn(40, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 40, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
        out = chunked_cross_entropy(h, w, t, 7)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    (gr,) = torch.autograd.grad(ref, (w,))
    (go,) = torch.autograd.grad(out, (w,))
    torch.testing.assert_close(go, gr, rtol=2e-2, atol=2e-2)


def test_chunked_cross_entropy_of_no_targets_is_zero_with_a_gradient_path():
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    out = chunked_cross_entropy(h, w, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0 and w.grad is not None


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from msa.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(BiosWorld(WORLD).iter_documents(0, 256), 320, path)
    return str(path)


def config(tok_dir, speed: SpeedConfig, steps: int = 4) -> TrainConfig:
    return TrainConfig(
        model=ModelSpec(config=tiny_model_config(320, top_k_docs=2, pooling_kernel_size=8), seed=1, dtype="float64"),
        data=DataConfig(world=WORLD, curriculum=[CurriculumStage(2, 3), CurriculumStage(0, 5)], tokenizer=tok_dir,
                        micro_batch_size=3, max_doc_tokens=30, kind="mixed"),
        schedule=ScheduleConfig([Phase("warmup", steps // 2, 3e-3, 0.1, 1.0),
                                 Phase("main", steps - steps // 2, 1e-3, 1.0, 0.1)]),
        checkpoint=CheckpointConfig(dir=""), logging=LoggingConfig(every=0),
        parallel=ParallelConfig(device="cpu", autocast="none"), speed=speed,
    )  # fmt: skip


def test_fast_forward_equals_reference_forward(tok_dir):
    trainer = Trainer(config(tok_dir, SpeedConfig()))
    batch = trainer._micro_batches(5)[0]
    index, targets = batch.lm_targets()
    ref = trainer.wrapper(batch.packed, index)
    fast = dataclasses.replace(trainer.wrapper.speed, path="fast", pad_multiple=16)
    trainer.wrapper.speed = fast
    out = trainer.wrapper(batch.packed, index, targets)
    torch.testing.assert_close(out.lm_sum, F.cross_entropy(ref.logits, targets, reduction="sum"), rtol=1e-12, atol=1e-9)
    for layer, scores in ref.doc_scores.items():
        n = scores.shape[1]
        torch.testing.assert_close(out.doc_scores[layer][:, :n], scores)
        assert torch.isinf(out.doc_scores[layer][:, n:]).all()
        assert torch.equal(out.selected[layer].docs, ref.selected[layer].docs)


@pytest.mark.parametrize("checkpoint", ["none", "block", "mlp"])
def test_fast_training_steps_give_the_reference_losses(tok_dir, checkpoint):
    ref = Trainer(config(tok_dir, SpeedConfig())).fit()
    fast = Trainer(config(tok_dir, SpeedConfig(path="fast", checkpoint=checkpoint, ce_chunk=16, pad_multiple=8))).fit()
    assert len(ref) == len(fast) == 4
    for r, f in zip(ref, fast):
        # float64 model; cross-entropy (reference) and routing scores (both) run in float32
        assert f["loss"] == pytest.approx(r["loss"], rel=1e-6)
        assert f["aux_loss"] == pytest.approx(r["aux_loss"], rel=1e-6)
        assert f["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("query_reduce", ["max", "mean"])
def test_batch_negatives_same_on_both_paths_and_harder_than_own_documents(tok_dir, query_reduce):
    """aux_negatives="batch" scores every query against every sample's documents: the fast path's slot
    layout gives the reference path's losses, and the aux loss exceeds the own-documents one."""

    def run(speed, negatives):
        cfg = config(tok_dir, speed)
        cfg.model.config.msa.query_reduce_method = query_reduce
        cfg.model.config.msa.chunk_reduce_method = "mean"
        cfg.aux_negatives = negatives
        return Trainer(cfg).fit()

    own = run(SpeedConfig(), "sample")
    ref = run(SpeedConfig(), "batch")
    fast = run(SpeedConfig(path="fast", ce_chunk=16, pad_multiple=8), "batch")
    for r, f in zip(ref, fast):
        assert f["loss"] == pytest.approx(r["loss"], rel=1e-6)
        assert f["aux_loss"] == pytest.approx(r["aux_loss"], rel=1e-6)
    assert ref[0]["aux_loss"] > own[0]["aux_loss"]  # same first step, more negatives


def test_speed_config_errors_are_clear():
    with pytest.raises(ValueError, match="speed.path"):
        SpeedConfig(path="turbo").validate()
    with pytest.raises(ValueError, match="speed.compile needs"):
        SpeedConfig(compile=True).validate()
    with pytest.raises(ValueError, match="speed.checkpoint"):
        SpeedConfig(path="fast", checkpoint="all").validate()


def test_fast_flex_forward_equals_reference_sdpa_on_cpu(monkeypatch):
    """The FlexAttention path (block masks shared by the layers, a score_mod masking unselected chunk
    slots) off CUDA: forward only (no FlexAttention backward on the CPU)."""
    from test_train_fast_gpu import batch, model

    from msa.train.fast import forward_fast

    m = model(device="cpu")
    packed, index, targets = batch(device="cpu")
    with torch.no_grad():
        monkeypatch.setenv("MSA_TRAIN_ATTENTION", "flex")
        fast = forward_fast(m, packed, index, targets, SpeedConfig(path="fast", pad_multiple=16))
        monkeypatch.setenv("MSA_TRAIN_ATTENTION", "sdpa")
        ref = m.forward_train(packed, index)
    torch.testing.assert_close(fast.lm_sum, F.cross_entropy(ref.logits, targets, reduction="sum"))
    for layer, s in ref.doc_scores.items():
        torch.testing.assert_close(fast.doc_scores[layer][:, : s.shape[1]], s)
        assert torch.equal(fast.selected[layer].docs, ref.selected[layer].docs)
        assert (fast.selected[layer].docs >= 0).sum() < (s > float("-inf")).sum()  # some chunks are masked


def _fsdp_worker(rank, port, tok_dir, out):
    import os

    from msa.train.parallelize import destroy_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        cfg = config(tok_dir, SpeedConfig(path="fast", checkpoint="block", pad_multiple=8))
        cfg.model.dtype, cfg.parallel.data_parallel, cfg.data.micro_batch_size = "float32", "fsdp", 2
        hist = Trainer(cfg).fit()
        if rank == 0:
            torch.save([r["loss"] for r in hist], out)
    finally:
        destroy_distributed()


def test_fast_path_under_fsdp2_on_two_processes_equals_one_process(tok_dir, tmp_path):
    import socket

    import torch.multiprocessing as mp

    cfg = config(tok_dir, SpeedConfig(path="fast", checkpoint="block", pad_multiple=8))
    cfg.model.dtype, cfg.data.micro_batch_size = "float32", 4
    want = [r["loss"] for r in Trainer(cfg).fit()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "fsdp.pt")
    mp.spawn(_fsdp_worker, args=(port, tok_dir, out), nprocs=2, join=True)
    got = torch.load(out)
    assert len(got) == 4 and all(abs(a - b) < 1e-5 for a, b in zip(got, want)), (got, want)
