"""``key.sub=value`` overrides of nested config dataclasses, with type conversion and clear errors.

Keys walk dataclass fields (and list items by index: ``schedule.phases.0.lr=3e-4``). Values are
converted to the field's annotated type: int, float, str, bool (true/false/1/0/yes/no), None
("none"/"null") where the type allows it, and tuples / lists / dicts as Python or JSON literals.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from typing import Any

__all__ = ["apply_overrides", "OverrideError"]


class OverrideError(ValueError):
    pass


def _options(t: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(t)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(t)
    return (t,)


def _convert(raw: str, t: Any, key: str) -> Any:
    opts = _options(t)
    if type(None) in opts and raw.strip().lower() in ("none", "null"):
        return None
    errors = []
    for opt in opts:
        if opt is type(None):
            continue
        try:
            return _convert_one(raw, opt)
        except (ValueError, SyntaxError, TypeError) as err:
            errors.append(f"{getattr(opt, '__name__', opt)}: {err}")
    raise OverrideError(f"{key}={raw!r}: cannot convert to {t}: {'; '.join(errors)}")


def _convert_one(raw: str, t: Any) -> Any:
    if t is Any:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    if t is bool:
        v = raw.strip().lower()
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true/false")
    if t is int:
        return int(raw)
    if t is float:
        return float(raw)
    if t is str:
        return raw
    origin = typing.get_origin(t) or t
    if origin in (tuple, list, dict):
        v = ast.literal_eval(raw)
        if not isinstance(v, (tuple, list, dict)):
            raise ValueError(f"expected a {origin.__name__} literal")
        if origin is tuple:
            return tuple(v)
        if origin is list:
            (item,) = typing.get_args(t) or (None,)
            if dataclasses.is_dataclass(item):  # e.g. data.curriculum=[[500,16],[0,32]]: items by position
                return [item(**x) if isinstance(x, dict) else item(*x) for x in v]
            return list(v)
        return v
    raise TypeError(f"unsupported field type {t}")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _set(obj: Any, parts: list[str], raw: str, full: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(obj, list):
        try:
            idx = int(head)
            item = obj[idx]
        except (ValueError, IndexError):
            raise OverrideError(f"{full}: {head!r} is not an index of a list of {len(obj)}") from None
        if not rest:
            raise OverrideError(f"{full}: cannot replace a whole list item; set its fields")
        _set(item, rest, raw, full)
        return
    if not dataclasses.is_dataclass(obj):
        raise OverrideError(f"{full}: {type(obj).__name__} has no sub-keys")
    names = [f.name for f in dataclasses.fields(obj)]
    if head not in names:
        raise OverrideError(f"{full}: unknown key {head!r}; expected one of {names}")
    if rest:
        _set(getattr(obj, head), rest, raw, full)
        return
    t = _hints(obj)[head]
    value = _convert(raw, t, full)
    if dataclasses.is_dataclass(getattr(obj, head)) and not dataclasses.is_dataclass(value):
        raise OverrideError(f"{full}: is a section; set one of its fields")
    object.__setattr__(obj, head, value)  # frozen dataclasses (e.g. BiosConfig) too


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Apply ``key.sub=value`` strings to ``config`` in place (and return it)."""
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise OverrideError(f"override {item!r} has an empty key")
        _set(config, key.split("."), raw, key)
    return config
