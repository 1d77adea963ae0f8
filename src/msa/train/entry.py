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

__all__ = ["available_recipes", "load_recipe", "main", "run"]


def _recipe_roots() -> list[Path]:
    return [Path.cwd() / "recipes", Path(__file__).resolve().parents[3] / "recipes"]


def available_recipes() -> dict[str, Path]:
    """Recipe name -> file, from ``./recipes`` and the repository's ``recipes/`` (the first one wins)."""
    found: dict[str, Path] = {}
    for root in _recipe_roots():
        for f in sorted(root.glob("*.py")) if root.is_dir() else []:
            if not f.stem.startswith("_"):
                found.setdefault(f.stem, f)
    return found


def _recipe_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".py" or os.sep in name:
        if not p.exists():
            raise FileNotFoundError(f"recipe file {name} does not exist")
        return p
    found = available_recipes()
    if name in found:
        return found[name]
    raise FileNotFoundError(f"no recipe {name!r} in {[str(r) for r in _recipe_roots()]}; available: {sorted(found)}")


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


def run(config: TrainConfig) -> list[dict[str, Any]]:
    """Train with ``config``; returns the step metrics. Works under torchrun (DDP / FSDP2) and as one
    process. Progress is logged at ``config.logging.level`` on the ``msa.train`` loggers."""
    from msa.train.loop import Trainer
    from msa.train.parallelize import destroy_distributed

    if not logging.getLogger().handlers:
        logging.basicConfig(level=config.logging.level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("msa.train").setLevel(config.logging.level)  # progress shows without -v
    try:
        return Trainer(config).fit()
    finally:
        destroy_distributed()


def main(recipe_name: str, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Train with ``recipes/<recipe_name>.py`` and ``key.sub=value`` overrides; returns the step metrics."""
    return run(load_recipe(recipe_name, overrides))
