"""What the `msa` subcommands share: the usage error, device checks, loading a model or a bank's model."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class UsageError(Exception):
    """A user mistake: printed as one line (``msa: error: ...``), exit code 2."""


def check_device(device: str | None) -> str | None:
    """``device`` if this machine has it (None = each command's default), else UsageError."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here")
    return device


def model_dir(name: str) -> Path:
    """The model directory ``name`` names: a model directory, a shipped model, or a training checkpoint
    written by ``msa train`` (``step_N/`` or the checkpoint root: its newest step)."""
    from msa.model import resolve_model_path
    from msa.train.checkpoint import latest_checkpoint

    p = Path(name).expanduser()
    if p.is_dir() and not (p / "config.json").is_file():
        latest = latest_checkpoint(str(p))
        if latest is not None and (Path(latest) / "config.json").is_file():
            return Path(latest)
        if (p / "model.pt").is_file() or latest is not None:
            raise UsageError(f"{p} is a training checkpoint without the model files: run `msa export {p} OUT_DIR` "
                             "and use OUT_DIR")  # fmt: skip
    return resolve_model_path(p if p.is_dir() else name)


def model_source(name: str) -> str:
    """What a bank records as its model: the absolute directory (found from any working directory), or
    the shipped model's name."""
    p = Path(name).expanduser()
    return str(model_dir(name).resolve()) if p.is_dir() else name


def load_model(name: str, device: str | None):
    """(model, tokenizer) of a model directory or shipped model name."""
    from msa.model import MSAForCausalLM
    from msa.tokenizer import load_tokenizer

    path = model_dir(name)
    if not (path / "tokenizer.json").is_file():
        raise UsageError(f"{path} has no tokenizer.json")
    model = MSAForCausalLM.from_pretrained(path, device=check_device(device) or "cpu")
    return model, load_tokenizer(path)


def bank_model(bank: str, device: str | None, override: str | None = None):
    """(model, tokenizer) that encoded ``bank``: ``override`` (--model, e.g. the model directory moved) or
    the model the bank recorded at create."""
    from msa.memory import MemoryBank

    with MemoryBank.open(bank, readonly=True) as b:
        name = b.model_source
    if override is not None:
        return load_model(override, device)
    if not name:
        raise UsageError(f"{bank} does not record which model encoded it: pass --model MODEL")
    if ("/" in name or name.startswith(".")) and not Path(name).is_dir():
        raise UsageError(f"{bank} was encoded by the model at {name}, which is not there now: pass --model DIR "
                         "(the same model, moved)")  # fmt: skip
    return load_model(name, device)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def read_text(file: str) -> str:
    """The whole UTF-8 text of ``file`` ('-' = stdin), byte-order mark dropped, outer whitespace stripped."""
    if file == "-":
        raw, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        p = Path(file)
        if not p.is_file():
            raise UsageError(f"no such file: {file}")
        raw, name = p.read_bytes(), file
    try:
        text = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise UsageError(f"{name} is not UTF-8 text (byte {e.start})") from None
    if not text:
        raise UsageError(f"{name} is empty")
    return text
