"""Key, and the checks that walk a mapping, list or keyed list of settings.yaml against its key table."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recycle_engine.config_yaml import INVALID, REQUIRED, UNRESOLVED, _join, _kind, _Reader

__all__ = ["Converter", "Key", "_apply", "_complete", "_keyed", "_list", "_mapping", "_optional", "_section"]


Converter = Callable[[_Reader, str, Any], Any]


@dataclass(frozen=True)
class Key:
    """One settings key: how its value is checked and converted, its default as written in YAML, what it does."""

    convert: Converter
    default: object
    description: str


def _apply(convert: Converter, r: _Reader, path: str, value: Any) -> Any:
    # A missing ${NAME} is reported where it is read; checking the empty value again would only add noise.
    if value is UNRESOLVED or value is INVALID:
        return INVALID
    return convert(r, path, value)


def _section(
    r: _Reader, path: str, raw: Any, keys: Mapping[str, Key], *, strict: bool = True
) -> dict[str, Any]:
    """Check a mapping against its key table; returns the converted values of the keys that are valid."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        r.add(path, f"must be a mapping with keys {', '.join(keys)}, not {_kind(raw)}")
        return {}
    for name in raw:
        if strict and name not in keys:
            close = difflib.get_close_matches(name, keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            r.add(_join(path, name), f"unknown key {name!r}{hint}; allowed keys: {', '.join(keys)}")
    values: dict[str, Any] = {}
    for name, key in keys.items():
        if name in raw:
            value = raw[name]
        elif key.default is REQUIRED:
            r.add(_join(path, name), f"is required: {key.description}")
            continue
        else:
            value = key.default
        converted = _apply(key.convert, r, _join(path, name), value)
        if converted is not INVALID:
            values[name] = converted
    return values


def _complete(values: Mapping[str, Any], keys: Mapping[str, Key]) -> bool:
    return all(name in values for name in keys)


def _mapping(keys: Mapping[str, Key], build: Callable[..., Any]) -> Converter:
    def convert(r: _Reader, path: str, raw: Any) -> Any:
        values = _section(r, path, raw, keys)
        return build(**values) if _complete(values, keys) else INVALID

    return convert


def _list(item: Converter, *, min_items: int = 0, what: str = "item") -> Converter:
    def convert(r: _Reader, path: str, raw: Any) -> Any:
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            r.add(path, f"must be a list, not {_kind(raw)}")
            return INVALID
        if len(raw) < min_items:
            r.add(path, f"needs at least {min_items} {what}")
        converted = [_apply(item, r, f"{path}[{i}]", value) for i, value in enumerate(raw)]
        return tuple(c for c in converted if c is not INVALID)

    return convert


def _keyed(item: Converter) -> Converter:
    """A list of entries with ids -> {id: entry}; duplicate ids are reported by `_id`."""
    as_list = _list(item)

    def convert(r: _Reader, path: str, raw: Any) -> Any:
        entries = as_list(r, path, raw)
        return INVALID if entries is INVALID else {entry.id: entry for entry in entries}

    return convert


def _optional(convert: Converter) -> Converter:
    def optional(r: _Reader, path: str, value: Any) -> Any:
        return None if value is None else convert(r, path, value)

    return optional
