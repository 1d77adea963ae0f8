"""Weight I/O in the Hugging Face / official MSA format (config.json + safetensors)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from msa.config import NO_AUX_LOSS, EnginePolicy, MSAConfig, MSALossConfig, ModelConfig

if TYPE_CHECKING:
    from msa.model.modeling import MSAForCausalLM

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets"
OPTIONAL_KEYS = ("temperature", "b")


# The official loader's ``msa_config`` is a DotDict: a missing key reads as None, i.e. false. What each
# such key then means, as concrete values (resolved here once; the model code never sees None).
OFFICIAL_MISSING: dict[str, object] = {
    "router_layer_idx": "",  # no layer routes or keeps memory
    "head_reduce_method": "mean",
    "query_reduce_method": "max",
    "chunk_reduce_method": "max",
    "decouple_router": False,  # route with attention Q / pooled K; no router weights
    "decouple_pooling_mode": "mean",
    "aux_loss_method": NO_AUX_LOSS,  # no temperature / b scalar; raw-dot routing
    "infonce_loss_temp": 0.1,
    "aux_loss": False,
    "rewrite_position": False,
    "lmloss_weigth": 0.0,
    "auxloss_weight": 0.0,
    "recloss_weight": 0.0,
    "ansloss_weight": 0.0,
}
OFFICIAL_REQUIRED = ("top_k_docs", "pooling_kernel_size")  # a model cannot run without them


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded into the model it describes."""


def official_msa_config(d: dict) -> tuple[MSAConfig, MSALossConfig]:
    """Read a stored ``msa_config`` with the official loader's semantics: a missing official key reads as
    None (false), resolved here to the concrete value it then means (``OFFICIAL_MISSING``), with a
    warning where that silently changes routing; a missing ``routing_cosine`` (ours) is None, the
    official normalisation rule. Keys of neither config are logged and ignored.

    Raises CheckpointError when ``top_k_docs`` or ``pooling_kernel_size`` is missing.
    """
    arch = {f.name for f in dataclasses.fields(MSAConfig)}
    loss = {f.name for f in dataclasses.fields(MSALossConfig)}
    unknown = sorted(set(d) - arch - loss - set(EnginePolicy.STORED))
    if unknown:
        logger.info("msa_config: ignoring keys %s (not used by this implementation)", unknown)
    lacking = [k for k in OFFICIAL_REQUIRED if d.get(k) is None]
    if lacking:
        raise CheckpointError(f"msa_config lacks {lacking}: a model cannot run without them")
    missing = [k for k in OFFICIAL_MISSING if k not in d]
    if missing:
        warnings.warn(f"msa_config lacks {missing}; they read as None/false as in the official loader", stacklevel=2)
    if "router_layer_idx" not in d:
        warnings.warn("msa_config has no router_layer_idx: no layer routes or keeps memory", stacklevel=2)
    if "decouple_router" not in d:
        warnings.warn("msa_config has no decouple_router: routing uses attention Q/K and router weights are not created",
                      stacklevel=2)  # fmt: skip
    values: dict[str, object] = {**OFFICIAL_MISSING, "routing_cosine": None}
    for k, v in d.items():  # a stored null reads as a missing key
        values[k] = OFFICIAL_MISSING[k] if v is None and k in OFFICIAL_MISSING else v
    return (MSAConfig(**{k: v for k, v in values.items() if k in arch}),
            MSALossConfig(**{k: v for k, v in values.items() if k in loss}))  # fmt: skip


def stored_policy(d: dict) -> EnginePolicy:
    """The ``EnginePolicy`` keys of a stored ``msa_config`` (defaults where absent: official checkpoints)."""
    return EnginePolicy(**{k: d[k] for k in EnginePolicy.STORED if d.get(k) is not None})


def config_from_hf_dict(raw: dict) -> ModelConfig:
    """The ModelConfig of an MSA ``config.json`` dict: the backbone and its ``msa_config`` read with the
    official semantics (``official_msa_config``). The one reader of an MSA model's config."""
    if "msa_config" not in raw:
        raise CheckpointError("config.json has no msa_config: not an MSA model")
    msa, loss = official_msa_config(raw["msa_config"] or {})
    return ModelConfig.from_hf_dict(raw, msa, loss, stored_policy(raw["msa_config"] or {}))


def shipped_models() -> dict[str, Path]:
    """Models shipped inside the package: name -> directory."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A checkpoint directory, or the name of a shipped model (e.g. ``msa-bios-tiny``)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p} has no config.json: not a checkpoint directory")
        return p
    shipped = shipped_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise CheckpointError(
        f"no checkpoint directory or shipped model named {str(name_or_path)!r} (shipped: {sorted(shipped) or 'none'})"
    )


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from None


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} holds no *.safetensors weights")
    return files


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                tensors[k] = sf.get_tensor(k)
    return tensors


def _build(cls, config: ModelConfig, device) -> "MSAForCausalLM":
    with torch.device("meta"):
        model = cls(config)
    model.to_empty(device=device)
    return model


def _assign(model: "MSAForCausalLM", tensors: dict[str, torch.Tensor], dtype, device, fresh: set[str], source: Path,
            seed: int = 0) -> None:  # fmt: skip
    """Copy checkpoint tensors into the model; names in ``fresh`` are initialised instead (seeded)."""
    expected = {k: v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        tensors.pop("lm_head.weight", None)
    missing = sorted(k for k in expected if k not in tensors and k not in fresh and k not in OPTIONAL_KEYS)
    unexpected = sorted(k for k in tensors if k not in expected and k not in OPTIONAL_KEYS)
    wrong = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in tensors if k in expected and tuple(tensors[k].shape) != tuple(expected[k].shape)
    )  # fmt: skip
    if missing or unexpected or wrong:
        lines = [f"cannot load {source}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    if dtype is None:
        float_dtypes = {t.dtype for k, t in tensors.items() if t.is_floating_point() and k not in OPTIONAL_KEYS}
        dtype = float_dtypes.pop() if len(float_dtypes) == 1 else torch.float32
    g = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in tensors:
                src = tensors[name]
            elif name in fresh:
                src = torch.randn(param.shape, generator=g) * std
            elif name == "b":
                src = torch.tensor(-20.0)
            else:  # tied lm_head, already covered by embed_tokens
                continue
            param.data = src.to(device=device, dtype=dtype if src.is_floating_point() and src.dim() else src.dtype).contiguous()
        if "temperature" in dict(model.named_buffers()):
            src = tensors.get("temperature", torch.tensor(float(model.config.msa.infonce_loss_temp)))
            model.temperature = src.to(device=device, dtype=torch.float32)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def load_pretrained(cls, path, dtype=None, device="cpu") -> "MSAForCausalLM":
    path = resolve_model_path(path)
    raw = read_config(path)
    if raw.get("model_type") != "msa" or "msa_config" not in raw:
        raise CheckpointError(
            f"{path} is not an MSA checkpoint (model_type={raw.get('model_type')!r}); "
            "use MSAForCausalLM.from_base() for a base Qwen3 checkpoint"
        )
    config = config_from_hf_dict(raw)
    model = _build(cls, config, device)
    _assign(model, read_tensors(path), dtype, device, fresh=set(), source=path)
    return model.eval()


def load_base(cls, path, msa_config: MSAConfig | None, seed=0, dtype=None, device="cpu") -> "MSAForCausalLM":
    path = Path(path)
    raw = read_config(path)
    if raw.get("model_type") not in ("qwen3", "msa"):
        logger.warning("%s has model_type=%r; loading it as a Qwen3-family decoder", path, raw.get("model_type"))
    config = ModelConfig.from_hf_dict(raw, msa_config or MSAConfig())
    model = _build(cls, config, device)
    routers = {n for n, _ in model.named_parameters() if ".router_q_proj." in n or ".router_k_proj." in n}
    tensors = read_tensors(path)
    for n in routers:
        tensors.pop(n, None)  # a base checkpoint may carry none; fresh routers are seeded either way
    _assign(model, tensors, dtype, device, fresh=routers, source=path, seed=seed)
    return model.eval()


def save_pretrained(model: "MSAForCausalLM", path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and the weights (official layout). With ``max_shard_bytes`` the weights are split
    into ``model-0000i-of-0000n.safetensors`` files of at most that size (one tensor may exceed it) plus
    ``model.safetensors.index.json``, as Hugging Face shards them; stale weight files are removed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    for old in [*path.glob("model*.safetensors"), path / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {k: n for n, shard in zip(names, shards) for k in shard}
        total = sum(v.numel() * v.element_size() for v in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name, shard in zip(names, shards):
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / name)
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def fingerprint(model: "MSAForCausalLM") -> str:
    """blake2b of the config (sorted JSON) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    cfg = model.config.to_hf_dict()
    cfg = {k: cfg[k] for k in (*ModelConfig.BACKBONE_KEYS, "msa_config")}  # not dtype or other extras
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(model.state_dict()[name].shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
