"""Converters of single values: text, secrets, numbers, choices, decimals, zones, crons, URLs, folders."""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from recycle_engine.config_sections import Converter
from recycle_engine.config_yaml import INVALID, _kind, _Reader
from recycle_engine.storage.db import sqlite_busy_timeout

__all__ = [
    "DEFAULT_DATABASE_URL",
    "_bool",
    "_choice",
    "_cron",
    "_database_url",
    "_decimal",
    "_enum",
    "_folder",
    "_http_url",
    "_int",
    "_number",
    "_secret",
    "_signing_key",
    "_text",
    "_timezone",
]

DEFAULT_DATABASE_URL: Final = "sqlite:///var/recycle.db"

_DECIMAL_TEXT = re.compile(r"\d+(?:\.\d+)?")


# Scalar converters: each reports its own problem and returns INVALID.


def _text(*, non_empty: bool = True) -> Converter:
    def convert(r: _Reader, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            r.add(path, f"must be text, not {_kind(value)}")
            return INVALID
        if non_empty and not value.strip():
            r.add(path, "must not be empty")
            return INVALID
        return value

    return convert


def _secret(r: _Reader, path: str, value: Any) -> Any:
    if path not in r.env_only:
        r.add(path, "must come from the environment: write ${NAME} (secrets are never written in the file)")
        return INVALID
    return _text()(r, path, value)


def _signing_key(r: _Reader, path: str, value: Any) -> Any:
    text = _secret(r, path, value)
    if text is INVALID:
        return INVALID
    try:
        decoded = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        r.add(path, "is not valid base64 (copy the key exactly as the FlexFactor portal shows it)")
        return INVALID
    return text.strip()


def _env_scalar(r: _Reader, path: str, value: Any) -> Any:
    # An environment variable is always text; "8080" or "true" from there reads as YAML would read it.
    if isinstance(value, str) and path in r.from_env:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _range_text(low: float, high: float | None) -> str:
    return f"between {low} and {high}" if high is not None else f"at least {low}"


def _int(low: int, high: int | None = None, *, why: str = "") -> Converter:
    def convert(r: _Reader, path: str, raw: Any) -> Any:
        value = _env_scalar(r, path, raw)
        if isinstance(value, bool) or not isinstance(value, int):
            r.add(path, f"must be a whole number, not {_kind(value)}")
            return INVALID
        if value < low or (high is not None and value > high):
            r.add(path, f"must be {_range_text(low, high)}{why}; got {r.show(path, value)}")
            return INVALID
        return value

    return convert


def _number(low: float, high: float | None = None, *, above: bool = False) -> Converter:
    """A float (seconds, rates); `above` makes `low` itself invalid."""

    def convert(r: _Reader, path: str, raw: Any) -> Any:
        value = _env_scalar(r, path, raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            r.add(path, f"must be a number, not {_kind(value)}")
            return INVALID
        too_low = value <= low if above else value < low
        if too_low or (high is not None and value > high):
            bound = f"above {low}" if above else _range_text(low, high)
            r.add(path, f"must be {bound}; got {r.show(path, value)}")
            return INVALID
        return float(value)

    return convert


def _bool(r: _Reader, path: str, raw: Any) -> Any:
    value = _env_scalar(r, path, raw)
    if not isinstance(value, bool):
        r.add(path, f"must be true or false, not {_kind(value)}")
        return INVALID
    return value


def _choice(options: Mapping[str, object], what: str) -> Converter:
    by_text = {name.upper(): value for name, value in options.items()}

    def convert(r: _Reader, path: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in by_text:
            return by_text[value.strip().upper()]
        r.add(path, f"unknown {what} {r.show(path, value)}; allowed: {', '.join(options)}")
        return INVALID

    return convert


def _enum(cls: type[enum.StrEnum], what: str) -> Converter:
    return _choice({member.value: member for member in cls}, what)


def _decimal(high: Decimal | None = None) -> Converter:
    """A non-negative decimal written as text ("5.00") or a whole number; floats are refused as inexact."""

    def convert(r: _Reader, path: str, value: Any) -> Any:
        if isinstance(value, float):
            r.add(path, f'write it as quoted text such as "{value:.2f}": a YAML float is not exact')
            return INVALID
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            r.add(path, f"must be a decimal number written as text, not {_kind(value)}")
            return INVALID
        text = value.strip()
        if text.startswith("-"):
            r.add(path, f"must not be negative; got {r.show(path, text)}")
            return INVALID
        if not _DECIMAL_TEXT.fullmatch(text):
            r.add(path, f'must be a decimal number such as "5.00"; got {r.show(path, value)}')
            return INVALID
        amount = Decimal(text)
        if high is not None and amount > high:
            r.add(path, f"must be between 0 and {high}; got {r.show(path, text)}")
            return INVALID
        return amount

    return convert


def _timezone(r: _Reader, path: str, value: Any) -> Any:
    name = _text()(r, path, value)
    if name is INVALID:
        return INVALID
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        r.add(path, f"unknown time zone {r.show(path, name)}; use an IANA name such as America/New_York")
        return INVALID


def _cron(r: _Reader, path: str, value: Any) -> Any:
    text = _text()(r, path, value)
    if text is INVALID:
        return INVALID
    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except (ValueError, TypeError, KeyError) as exc:
        detail = f": {exc}" if path not in r.from_env else ""
        r.add(path, f"is not a 5-field crontab (minute hour day-of-month month day-of-week){detail}")
        return INVALID
    return text.strip()


def _http_url(r: _Reader, path: str, value: Any) -> Any:
    text = _text()(r, path, value)
    if text is INVALID:
        return INVALID
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        r.add(path, f"must be an http:// or https:// URL; got {r.show(path, text)}")
        return INVALID
    return text.strip().rstrip("/")


def _database_url(r: _Reader, path: str, value: Any) -> Any:
    text = _text()(r, path, value)
    if text is INVALID:
        return INVALID
    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError):
        r.add(path, f"is not a database URL such as {DEFAULT_DATABASE_URL}; got {r.show(path, text)}")
        return INVALID
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        r.add(path, f"the engine runs on sqlite or postgresql, not {backend}")
        return INVALID
    if backend == "sqlite":
        try:
            sqlite_busy_timeout(url)
        except ValueError as exc:
            r.add(path, str(exc))
            return INVALID
    database = url.database or ""
    if backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        # Relative to the settings file, so the scheduler finds the same file from any working directory.
        if not Path(database).is_absolute():
            url = url.set(database=os.path.normpath(r.base_dir / database))
    return url.render_as_string(hide_password=False)


def _folder(r: _Reader, path: str, value: Any) -> Any:
    text = _text()(r, path, value)
    if text is INVALID:
        return INVALID
    folder = Path(text.strip())
    return folder if folder.is_absolute() else Path(os.path.normpath(r.base_dir / folder))
