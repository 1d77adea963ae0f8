"""``msa.train.main``: load a recipe, apply overrides, train. The CLI's ``msa train`` calls it."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from msa.train.config import TrainConfig
from msa.train.overrides import apply_overrides

logger = logging.getLogger(__name__)

__all__ = ["load_recipe", "main"]


def _recipe_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".py" or os.sep in name:
        if not p.exists():
            raise FileNotFoundError(f"recipe file {name} does not exist")
        return p
    roots = [Path.cwd() / "recipes", Path(__file__).resolve().parents[3] / "recipes"]
    for root in roots:
        if (root / f"{name}.py").exists():
            return root / f"{name}.py"
    available = sorted({f.stem for r in roots if r.is_dir() for f in r.glob("*.py") if not f.stem.startswith("_")})
    raise FileNotFoundError(f"no recipe {name!r} in {[str(r) for r in roots]}; available: {available}")


def load_recipe(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """``recipes/<name>.py`` (or a path) must define ``recipe() -> TrainConfig``; overrides are applied."""
    path = _recipe_path(name)
    spec = importlib.util.spec_from_file_location(f"msa_recipe_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import recipe {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "recipe", None)
    if fn is None:
        raise AttributeError(f"recipe file {path} has no function recipe()")
    config = fn()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{path}: recipe() returned {type(config).__name__}, expected TrainConfig")
    apply_overrides(config, overrides or [])
    config.validate()
    return config


def main(recipe_name: str, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Train with ``recipes/<recipe_name>.py`` and ``key.sub=value`` overrides; returns the step metrics.

    Works under torchrun (DDP / FSDP2) and as one process."""
    from msa.train.loop import Trainer
    from msa.train.parallelize import destroy_distributed

    config = load_recipe(recipe_name, overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=config.logging.level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return Trainer(config).fit()
    finally:
        destroy_distributed()
