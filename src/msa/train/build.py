"""Builders from a TrainConfig: tokenizer, model, sample source, collator."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from msa.data.bios import BiosWorld
from msa.model.modeling import MSAForCausalLM
from msa.prompt import prompt_format
from msa.train.collator import Collator
from msa.train.config import MSA_CHANGEABLE, DataConfig, ModelSpec, TrainConfig
from msa.train.data import BiosSamples, InterleaveRounds, JsonlSamples, MixedSamples, NiahSamples, SampleSource
from msa.train.parallelize import DistInfo
from msa.train.targets import target_format

logger = logging.getLogger(__name__)

__all__ = ["build_tokenizer", "build_model", "build_source", "build_collator"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def build_tokenizer(data: DataConfig, info: DistInfo | None = None):
    """Load ``data.tokenizer``; if missing, train one on the bios world's first documents (rank 0) and save it
    (bios source only: otherwise a missing tokenizer is an error)."""
    from msa.tokenizer import load_tokenizer, train_tokenizer

    path = data.tokenizer
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        if data.source != "bios":  # only the generated corpus can train its own tokenizer
            raise FileNotFoundError(f"data.tokenizer={path!r}: no tokenizer.json there (a base model's directory, "
                                    "or a tokenizer directory)")  # fmt: skip
        if info is None or info.is_main:
            world = BiosWorld(data.world)
            n = min(data.tokenizer_docs, data.world.num_people)
            logger.info("training a %d-token tokenizer on %d bios documents -> %s", data.tokenizer_vocab, n, path)
            train_tokenizer(world.iter_documents(0, n), data.tokenizer_vocab, path)
        if info is not None and info.distributed:
            dist.barrier()
    return load_tokenizer(path)


def _is_msa_checkpoint(path: str) -> bool:
    import json

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return "msa_config" in json.load(f)
    except (OSError, ValueError):
        return False


def change_msa(model: MSAForCausalLM, changes: dict) -> None:
    """Set ``changes`` (``MSA_CHANGEABLE`` fields) on the model's MSAConfig, in place (its layers hold it)."""
    bad = sorted(set(changes) - set(MSA_CHANGEABLE))
    if bad:
        raise ValueError(f"model.msa_changes may set {list(MSA_CHANGEABLE)}, not {bad}")
    msa = model.config.msa
    for k, v in changes.items():
        setattr(msa, k, v)
    msa.validate(model.config.num_hidden_layers)
    if changes:
        logger.info("changed on the init checkpoint: %s", changes)


def build_model(spec: ModelSpec) -> MSAForCausalLM:
    """Random (seeded) init, an MSA checkpoint, or a base Qwen3 checkpoint with fresh routers."""
    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {spec.dtype!r}")
    from msa.train.init import apply_router_init

    if spec.msa_changes and (spec.init == "random" or not _is_msa_checkpoint(spec.init)):
        raise ValueError("model.msa_changes applies to an MSA checkpoint given as model.init; set model.config.msa.* instead")
    if spec.init == "random":
        model = MSAForCausalLM(spec.config).init_weights(spec.seed)
        apply_router_init(model, spec.router_init)
        return model.to(dtype)
    cfg_file = os.path.join(spec.init, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"model.init={spec.init!r}: no config.json there (use 'random' or a checkpoint dir)")
    import json

    with open(cfg_file, encoding="utf-8") as f:
        has_msa = "msa_config" in json.load(f)
    if has_msa:
        model = MSAForCausalLM.from_pretrained(spec.init, dtype=dtype)
        change_msa(model, spec.msa_changes)
        return model
    model = MSAForCausalLM.from_base(spec.init, spec.config.msa, seed=spec.seed, dtype=dtype)
    apply_router_init(model, spec.router_init)
    return model


def build_source(data: DataConfig) -> SampleSource:
    if data.source == "jsonl":
        source: SampleSource = JsonlSamples(data.path)
    else:
        source = BiosSamples(data.world, data.curriculum[0].num_docs, data.kind, data.seed, data.multi_fraction,
                             data.recite_fraction, data.bios)
        if data.niah_fraction > 0:
            niah = NiahSamples(data.curriculum[0].num_docs, data.seed, data.niah_doc_tokens)
            source = MixedSamples(source, niah, data.niah_fraction)
    if data.target_format in ("interleave_round", "interleave_named"):
        return InterleaveRounds(source, data.answer_round_fraction, data.answer_round_hide_read,
                                data.answer_round_extra_read, data.answer_round_chain_order)  # fmt: skip
    return source


def build_collator(cfg: TrainConfig, tokenizer, model: MSAForCausalLM) -> Collator:
    msa = model.config.msa
    pad = getattr(tokenizer, "pad_token_id", None)
    return Collator(
        tokenizer, msa.query_offset, target_format(cfg.data.target_format), max_doc_tokens=cfg.data.max_doc_tokens,
        fmt=prompt_format(model.config.policy.prompt_format), pad_id=0 if pad is None else int(pad), template_len=msa.template_len,
    )  # fmt: skip
