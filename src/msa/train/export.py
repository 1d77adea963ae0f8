"""Training checkpoints -> loadable model directories (config.json + safetensors + tokenizer).

A training checkpoint ``step_N/`` holds ``model.pt`` (the state dict) and ``meta.json`` (the run's
TrainConfig). ``export_checkpoint`` turns one into the directory ``MSAForCausalLM.from_pretrained``,
``MemoryBank.create`` and ``msa bank create --model`` load. ``msa train`` also writes these files into
every ``step_N/`` it saves (``write_model_dir``), so a checkpoint directory is itself a model directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from msa.config import EnginePolicy, ModelConfig
from msa.model.checkpoint import config_from_hf_dict, official_msa_config, stored_policy
from msa.train.checkpoint import latest_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "export_checkpoint", "write_model_dir", "copy_tokenizer", "TOKENIZER_FILES"]

# tokenizer files, and a base model's generation settings and chat template (a Qwen3 base directory)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


class ExportError(ValueError):
    """A checkpoint that cannot be exported (missing files, unknown layout); the message names the path."""


def step_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it holds ``model.pt``; else the newest checkpoint of a checkpoint root."""
    p = Path(path)
    if (p / "model.pt").is_file():
        return p
    if not p.is_dir():
        raise ExportError(f"no such checkpoint directory: {p}")
    latest = latest_checkpoint(str(p))
    if latest is None or not (Path(latest) / "model.pt").is_file():
        raise ExportError(f"{p} is not a training checkpoint (no model.pt, no 'latest' checkpoint)")
    return Path(latest)


def _config_from_meta(step: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config of a checkpoint written before step directories carried config.json."""
    meta_file = step / "meta.json"
    if not meta_file.is_file():
        raise ExportError(f"{step} has no meta.json")
    run = json.loads(meta_file.read_text(encoding="utf-8"))["config"]
    spec = run["model"]
    if spec.get("init", "random") != "random":  # fine-tuned from a checkpoint: its config is the model's
        base = Path(spec["init"]) / "config.json"
        if not base.is_file():
            raise ExportError(f"{step} was trained from {spec['init']}, which has no config.json now")
        config = config_from_hf_dict(json.loads(base.read_text(encoding="utf-8")))
    else:  # the run's ModelConfig as saved (older runs kept the loss keys inside "msa")
        raw = dict(spec["config"])
        stored = {**raw.pop("msa"), **(raw.pop("loss", None) or {})}  # older runs: policy keys in "msa" too
        saved = raw.pop("policy", None)
        policy = EnginePolicy(**saved) if saved else stored_policy(stored)
        msa, loss = official_msa_config(stored)
        names = {f.name for f in dataclasses.fields(ModelConfig)} - {"msa", "loss", "policy"}
        config = ModelConfig(**{k: v for k, v in raw.items() if k in names}, msa=msa, loss=loss, policy=policy)
    if run["data"].get("target_format") == "interleave_named":  # the Trainer sets it on the model it trains
        config.policy.doc_choice = "routed"
    return config, run


def copy_tokenizer(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Copy a saved tokenizer's files (``TOKENIZER_FILES`` that exist) from ``src`` into ``out``."""
    src, out = Path(src), Path(out)
    if not (src / "tokenizer.json").is_file():
        raise ExportError(f"tokenizer directory {src} has no tokenizer.json (run from the training directory, "
                          "or pass --tokenizer)")  # fmt: skip
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            shutil.copyfile(src / name, out / name)


def write_model_dir(out: str | os.PathLike[str], config: ModelConfig, state_dict: dict[str, torch.Tensor],
                    tokenizer_dir: str | os.PathLike[str] | None = None, tokenizer=None) -> Path:  # fmt: skip
    """Write ``out/``: the tokenizer (files copied from ``tokenizer_dir``, or ``tokenizer.save_pretrained``),
    the weights (safetensors) and config.json last, so a directory with config.json is complete."""
    from msa.model import MSAForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    else:
        raise ExportError("write_model_dir needs tokenizer_dir or tokenizer")
    with torch.device("meta"):
        model = MSAForCausalLM(config)
    model.to_empty(device="cpu")
    model.load_state_dict(state_dict, strict=True)
    model.save_pretrained(out)
    return out


def export_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str],
                      tokenizer_dir: str | os.PathLike[str] | None = None) -> Path:  # fmt: skip
    """Export a training checkpoint (``step_N/`` or the checkpoint root: its newest step) to ``out``.

    The model config comes from ``step_N/config.json`` when ``msa train`` wrote one, else from the
    run's config in ``meta.json``; the tokenizer from ``tokenizer_dir``, the step directory, or the
    run's ``data.tokenizer`` (resolved from the current directory, as training did). Returns ``out``.
    """
    step = step_dir(checkpoint)
    if (step / "config.json").is_file():
        config = config_from_hf_dict(json.loads((step / "config.json").read_text(encoding="utf-8")))
        meta = step / "meta.json"
        run = json.loads(meta.read_text(encoding="utf-8"))["config"] if meta.is_file() else {}
    else:
        config, run = _config_from_meta(step)
    if tokenizer_dir is None:
        tokenizer_dir = step if (step / "tokenizer.json").is_file() else Path(run.get("data", {}).get("tokenizer", ""))
    try:
        state = torch.load(step / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is one message naming it
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"cannot read {step / 'model.pt'}: {why}") from None
    try:
        write_model_dir(out, config, state, tokenizer_dir=tokenizer_dir)
    except RuntimeError as e:  # load_state_dict: keys or shapes do not match the config
        raise ExportError(f"{step / 'model.pt'} does not match its config: {str(e).splitlines()[0]}") from None
    logger.info("exported %s (step %s) -> %s", step, step.name.removeprefix("step_").lstrip("0") or "0", out)
    return Path(out)
