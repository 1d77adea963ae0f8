"""Training loop: exact resume from a checkpoint, and 2-process gloo DDP == one process."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from msa.data.bios import BiosConfig, BiosWorld
from msa.train import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, ParallelConfig, Phase,
    ScheduleConfig, TrainConfig, apply_overrides, tiny_model_config, OverrideError,
)  # fmt: skip
from msa.train.loop import Trainer

WORLD = BiosConfig(num_people=1024, seed=0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from msa.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(BiosWorld(WORLD).iter_documents(0, 256), 320, path)
    return str(path)


def config(tok_dir, steps=6, micro=2, accum=1, ckpt="", every=0, mode="ddp", workers=0, fmt="interleave_transcript"):
    return TrainConfig(
        model=ModelSpec(config=tiny_model_config(320, top_k_docs=2, pooling_kernel_size=8), seed=1),
        data=DataConfig(world=WORLD, curriculum=[CurriculumStage(3, 3), CurriculumStage(0, 4)],
                        target_format=fmt, tokenizer=tok_dir, micro_batch_size=micro,
                        grad_accum=accum, max_doc_tokens=24, kind="mixed", workers=workers),
        schedule=ScheduleConfig([Phase("warmup", 3, 3e-3, 0.1, 1.0, warmup_steps=2),
                                  Phase("main", 3, 1e-3, 1.0, 0.1, decay="cosine")]),
        checkpoint=CheckpointConfig(dir=ckpt, every=every),
        logging=LoggingConfig(every=0),
        parallel=ParallelConfig(device="cpu", data_parallel=mode),
    )  # fmt: skip


def test_resume_reproduces_the_uninterrupted_run_bitwise(tok_dir, tmp_path):
    full = Trainer(config(tok_dir)).fit()
    ck = str(tmp_path / "ck")
    first = Trainer(config(tok_dir, ckpt=ck, every=2)).fit(until=4)
    assert sorted(os.listdir(ck)) == ["latest", "step_00000002", "step_00000004"]
    resumed = Trainer(config(tok_dir, ckpt=ck, every=2))
    assert resumed.state.step == 4 and resumed.state.data_position == 8
    rest = resumed.fit()
    losses = [r["loss"] for r in full]
    assert [r["loss"] for r in first + rest] == losses  # bitwise
    assert [r["num_docs"] for r in full] == [3, 3, 3, 4, 4, 4] and full[3]["phase"] == "main"


@pytest.mark.parametrize("fmt", ["interleave_transcript", "interleave_round"])
def test_worker_processes_feed_the_same_batches(tok_dir, tmp_path, fmt):
    base = [r["loss"] for r in Trainer(config(tok_dir, accum=2, fmt=fmt)).fit()]
    ck = str(tmp_path / "ck")
    first = Trainer(config(tok_dir, accum=2, fmt=fmt, workers=2, ckpt=ck, every=2)).fit(until=2)
    rest = Trainer(config(tok_dir, accum=2, fmt=fmt, workers=2, ckpt=ck, every=2)).fit()  # resumes at step 2
    assert [r["loss"] for r in first + rest] == base


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tok_dir, mode, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from msa.train.parallelize import destroy_distributed

    try:
        hist = Trainer(config(tok_dir, steps=4, micro=2, accum=1, mode=mode)).fit(until=4)
        if rank == 0:
            torch.save([r["loss"] for r in hist], out)
    finally:
        destroy_distributed()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ddp_two_processes_equal_one_process(tok_dir, tmp_path, mode):
    single = Trainer(config(tok_dir, steps=4, micro=2, accum=2)).fit(until=4)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), tok_dir, mode, out), nprocs=2, join=True)
    ddp = torch.load(out)
    want = [r["loss"] for r in single]
    assert len(ddp) == 4
    assert all(abs(a - b) < 1e-5 for a, b in zip(ddp, want)), (ddp, want)


def test_overrides_convert_types_and_reject_unknown_keys(tok_dir):
    cfg = config(tok_dir)
    apply_overrides(cfg, ["schedule.phases.1.lr=2e-5", "data.micro_batch_size=3", "model.config.msa.top_k_docs=5",
                          "optimizer.betas=(0.8, 0.9)", "data.max_doc_tokens=none", "data.world.num_people=2048",
                          "checkpoint.resume=false"])  # fmt: skip
    assert cfg.schedule.phases[1].lr == 2e-5 and cfg.data.micro_batch_size == 3
    assert cfg.model.config.msa.top_k_docs == 5 and cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.data.max_doc_tokens is None and cfg.data.world.num_people == 2048 and cfg.checkpoint.resume is False
    with pytest.raises(OverrideError, match="unknown key 'lrr'"):
        apply_overrides(cfg, ["schedule.phases.0.lrr=1"])
    with pytest.raises(OverrideError, match="cannot convert"):
        apply_overrides(cfg, ["data.micro_batch_size=many"])
    apply_overrides(cfg, ['data.curriculum=[[500, 16], {"steps": 0, "num_docs": 32}]'])
    assert cfg.data.curriculum == [CurriculumStage(500, 16), CurriculumStage(0, 32)]


def test_msa_changes_set_routing_options_on_an_init_checkpoint(tmp_path):
    """model.msa_changes reconfigures a trained checkpoint's routing (every layer sees it, it is saved);
    options that would change parameters are refused by name."""
    from msa.model import MSAForCausalLM
    from msa.train.build import build_model
    from msa.train.config import ModelSpec, tiny_model_config

    MSAForCausalLM(tiny_model_config(64)).init_weights(0).save_pretrained(tmp_path / "m")
    model = build_model(ModelSpec(init=str(tmp_path / "m"), msa_changes={"chunk_reduce_method": "mean", "top_k_docs": 3}))
    assert model.config.msa.chunk_reduce_method == "mean" and model.model.layers[1].self_attn.msa.top_k_docs == 3
    model.save_pretrained(tmp_path / "again")
    assert MSAForCausalLM.from_pretrained(tmp_path / "again").config.msa.chunk_reduce_method == "mean"
    with pytest.raises(ValueError, match="msa_changes may set"):
        build_model(ModelSpec(init=str(tmp_path / "m"), msa_changes={"pooling_kernel_size": 4}))
    with pytest.raises(ValueError, match="chunk_reduce_method"):
        build_model(ModelSpec(init=str(tmp_path / "m"), msa_changes={"chunk_reduce_method": "median"}))
    with pytest.raises(ValueError, match="model.config.msa"):
        build_model(ModelSpec(config=tiny_model_config(64), msa_changes={"chunk_reduce_method": "max"}))
