"""The checks of single values and the key check every section shares; each says what is wrong in words.

A check raises `fail(message)`; the loader turns that into a ConfigProblem at the value's key path and
line. When settings are loaded from a file, validation runs with a `Context` (the file's folder, and the
credentials whose variable is missing); built in code (tests, tools) there is none and paths stay as given.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import ValidationInfo, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from recycle_engine.config.source import EnvText, YamlMap, join, kind
from recycle_engine.money import CURRENCY_EXPONENTS, MAX_MINOR

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_SQLITE_TIMEOUT_S",
    "Check",
    "Context",
    "Need",
    "Section",
    "amount",
    "boolean",
    "choice",
    "credential",
    "crontab",
    "database_url",
    "decimal",
    "email_address",
    "fail",
    "folder",
    "http_url",
    "ident",
    "listed",
    "number",
    "optional",
    "secret",
    "show",
    "signing_key",
    "sqlite_busy_timeout",
    "text",
    "time_zone",
    "whole",
]

DEFAULT_DATABASE_URL: Final = "sqlite:///var/recycle.db"
ERROR_TYPE: Final = "config"  # the pydantic error type of every message written here

Check = Callable[[Any, ValidationInfo], Any]

_DECIMAL_TEXT = re.compile(r"\d+(?:\.\d+)?")
# One mailbox, as an envelope and a header take it: no display name, no spaces, no line breaks.
_EMAIL_TEXT = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+")
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # gateway ids end up in webhook URL paths


class Need(enum.Enum):
    """What a command does that needs a credential; a credential's variable may be missing otherwise."""

    FLEXFACTOR = "to call FlexFactor"
    WEBHOOKS = "to verify FlexFactor webhooks"
    CASCADE = "for POST /cascade"
    NMI = "to charge on NMI"
    EMAIL = "to e-mail the report"
    CRM = "to call the CRM"


@dataclass
class Context:
    """What validation of one file knows beyond the values: their folder, the credentials left unset."""

    base_dir: Path
    deferred: dict[str, Need | None] = field(default_factory=dict)  # path -> the use that needs it
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of the key checks


def fail(message: str, *, at: str | None = None) -> NoReturn:
    """Refuse a value; `at` names a key below the one being checked (e.g. a section's own key)."""
    raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "at": at})


def show(value: object) -> str:
    """A value for a message; anything that came from the environment may be a secret and is not shown."""
    return "the value from the environment" if isinstance(value, EnvText) else repr(value)


def _context(info: ValidationInfo) -> Context | None:
    return info.context if isinstance(info.context, Context) else None


def _from_env(value: Any) -> Any:
    # An environment variable is always text; "8080" or "true" from there reads as YAML would read it.
    if isinstance(value, EnvText) and not value.unset:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return str(value)
    return value


def _range_text(low: float, high: float | None) -> str:
    return f"between {low} and {high}" if high is not None else f"at least {low}"


# Scalars


def text(value: Any, info: ValidationInfo | None = None) -> str:
    if not isinstance(value, str):
        fail(f"must be text, not {kind(value)}")
    if not value.strip():
        fail("must not be empty")
    return str.__str__(value) if isinstance(value, EnvText) else value


def optional(check: Check) -> Check:
    def optional_check(value: Any, info: ValidationInfo) -> Any:
        return None if value is None else check(value, info)

    return optional_check


def credential(need: Need | None, check: Check = text) -> Check:
    """A value a command needs only for `need` (None: no command): a missing variable is left for it."""

    def credential_check(value: Any, info: ValidationInfo) -> Any:
        context = _context(info)
        if isinstance(value, EnvText) and value.unset and context is not None:
            context.deferred[value.path] = need
        if isinstance(value, EnvText) and value.unset:
            return "" if need is not None else None
        if value == "" and context is None and need is not None:
            return value  # an entry's part rebuilt from a file's values: its variable was missing
        return check(value, info)

    return credential_check


def secret(value: Any, info: ValidationInfo) -> str:
    """Text that only the environment may give (`${NAME}`), whenever settings come from a file."""
    if _context(info) is not None and not (isinstance(value, EnvText) and value.only_ref):
        fail("must come from the environment: write ${NAME} (secrets are never written in the file)")
    return text(value)


def signing_key(value: Any, info: ValidationInfo) -> str:
    key = secret(value, info).strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        fail("is not valid base64 (copy the key exactly as the FlexFactor portal shows it)")
    return key


def whole(low: int, high: int | None = None, *, why: str = "") -> Check:
    def whole_check(raw: Any, info: ValidationInfo) -> int:
        value = _from_env(raw)
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"must be a whole number, not {kind(value)}")
        if value < low or (high is not None and value > high):
            fail(
                f"must be {_range_text(low, high)}{why}; got {show(raw if isinstance(raw, EnvText) else value)}"
            )
        return value

    return whole_check


def number(low: float, high: float | None = None, *, above: bool = False) -> Check:
    """A float (seconds, rates); `above` makes `low` itself invalid."""

    def number_check(raw: Any, info: ValidationInfo) -> float:
        value = _from_env(raw)
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"must be a number, not {kind(value)}")
        too_low = value <= low if above else value < low
        if too_low or (high is not None and value > high):
            bound = f"above {low}" if above else _range_text(low, high)
            fail(f"must be {bound}; got {show(raw if isinstance(raw, EnvText) else value)}")
        return float(value)

    return number_check


def boolean(raw: Any, info: ValidationInfo) -> bool:
    value = _from_env(raw)
    if not isinstance(value, bool):
        fail(f"must be true or false, not {kind(value)}")
    return value


def choice(options: Mapping[str, object] | type[enum.Enum], what: str) -> Check:
    """One of `options` (names, or an enum's values), in any letter case."""
    if isinstance(options, type):
        options = {str(member.value): member for member in options}
    by_text = {name.upper(): value for name, value in options.items()}
    names = ", ".join(options)

    def choice_check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value.strip().upper() in by_text:
            return by_text[value.strip().upper()]
        fail(f"unknown {what} {show(value)}; allowed: {names}")

    return choice_check


def decimal(high: Decimal | None = None) -> Check:
    """A non-negative decimal written as text ("5.00") or a whole number; floats are refused as inexact."""

    def decimal_check(value: Any, info: ValidationInfo) -> Decimal:
        if isinstance(value, float):
            fail(f'write it as quoted text such as "{value:.2f}": a YAML float is not exact')
        if isinstance(value, Decimal):
            value = str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            fail(f"must be a decimal number written as text, not {kind(value)}")
        written = value.strip()
        if written.startswith("-"):
            fail(f"must not be negative; got {show(value if isinstance(value, EnvText) else written)}")
        if not _DECIMAL_TEXT.fullmatch(written):
            fail(f'must be a decimal number such as "5.00"; got {show(value)}')
        amount = Decimal(written)
        if high is not None and amount > high:
            fail(
                f"must be between 0 and {high}; got {show(value if isinstance(value, EnvText) else written)}"
            )
        return amount

    return decimal_check


def amount() -> Check:
    """A non-negative money amount in major units that every known currency can hold in MAX_MINOR."""
    exponent = max(CURRENCY_EXPONENTS.values())
    largest = Decimal(MAX_MINOR).scaleb(-exponent)
    as_decimal = decimal()

    def amount_check(value: Any, info: ValidationInfo) -> Decimal:
        written: Decimal = as_decimal(value, info)
        # Checked here, not when a price is planned: past this, planning an attempt would fail every night.
        if written > largest:
            fail(
                f"must be at most {largest}, the largest amount the engine handles in every currency "
                f"(10^12 - 1 minor units); got {show(value if isinstance(value, EnvText) else written)}"
            )
        return written

    return amount_check


def ident(value: Any, info: ValidationInfo | None = None) -> str:
    """An id of an entry or a reference to one; CRM ids are often numbers (`id: 12`), names all the same."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID_TEXT.fullmatch(value):
        fail(f"must be an id of letters, digits, '.', '_' or '-'; got {show(value)}")
    return str.__str__(value) if isinstance(value, EnvText) else value


def email_address(value: Any, info: ValidationInfo | None = None) -> str:
    """One address such as billing@example.com (no name, no list: each recipient is its own entry)."""
    written = text(value).strip()
    if not _EMAIL_TEXT.fullmatch(written):
        fail(f"must be one e-mail address such as billing@example.com; got {show(value)}")
    return written


def time_zone(value: Any, info: ValidationInfo) -> ZoneInfo:
    name = text(value)
    if isinstance(value, ZoneInfo):
        return value
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        fail(
            f"unknown time zone {show(value if isinstance(value, EnvText) else name)}; "
            "use an IANA name such as America/New_York"
        )


def crontab(value: Any, info: ValidationInfo) -> str:
    written = text(value)
    try:
        CronTrigger.from_crontab(written, timezone="UTC")
    except (ValueError, TypeError, KeyError) as exc:
        detail = f": {exc}" if not isinstance(value, EnvText) else ""
        fail(f"is not a 5-field crontab (minute hour day-of-month month day-of-week){detail}")
    return written.strip()


def http_url(value: Any, info: ValidationInfo) -> str:
    written = text(value)
    parts = urlsplit(written.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail(f"must be an http:// or https:// URL; got {show(value)}")
    return written.strip().rstrip("/")


def _beside_settings(written: Path, info: ValidationInfo) -> Path:
    context = _context(info)
    if written.is_absolute() or context is None:
        return written
    return Path(os.path.normpath(context.base_dir / written))


DEFAULT_SQLITE_TIMEOUT_S: Final = 30.0
_MAX_SQLITE_TIMEOUT_S: Final = 86_400.0


def sqlite_busy_timeout(url: URL) -> float:
    """`?timeout=SECONDS` of a SQLite URL (default 30): how long a write waits for another writer's
    lock before DatabaseBusy. Raises ValueError, saying why, for anything but 0 to 86400 seconds."""
    given = url.query.get("timeout")
    if given is None:
        return DEFAULT_SQLITE_TIMEOUT_S
    value = given[-1] if isinstance(given, tuple) else given
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= _MAX_SQLITE_TIMEOUT_S:
        raise ValueError(f"timeout={value} must be seconds from 0 to {_MAX_SQLITE_TIMEOUT_S:g}")
    return seconds


def database_url(value: Any, info: ValidationInfo) -> str:
    written = text(value)
    try:
        url = make_url(written.strip())
    except (ArgumentError, ValueError):
        fail(f"is not a database URL such as {DEFAULT_DATABASE_URL}; got {show(value)}")
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        fail(f"the engine runs on sqlite or postgresql, not {backend}")
    if backend == "sqlite":
        try:
            sqlite_busy_timeout(url)
        except ValueError as exc:
            fail(str(exc))
    database = url.database or ""
    if backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        # Relative to the settings file, so the scheduler finds the same file from any working directory.
        url = url.set(database=str(_beside_settings(Path(database), info)))
    return url.render_as_string(hide_password=False)


def folder(value: Any, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        return _beside_settings(value, info)
    return _beside_settings(Path(text(value).strip()), info)


def listed(*, min_items: int = 0, what: str = "item") -> Check:
    """A list (empty when the key has no value)."""

    def listed_check(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            fail(f"must be a list, not {kind(value)}")
        if len(value) < min_items:
            fail(f"needs at least {min_items} {what}")
        return value

    return listed_check


# Sections


@pydantic_dataclass(frozen=True)
class Section:
    """Base of every mapping of settings.yaml: unknown keys (with "did you mean") and missing keys.

    Both are reported by key path, so a section with an unknown key still checks the keys it knows.
    """

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, ArgsKwargs):
            return data  # built in code, keyword by keyword
        if data is None:
            data = {}
        if not isinstance(data, dict):
            fail(f"must be a mapping with keys {', '.join(cls.keys())}, not {kind(data)}")
        context = _context(info)
        path = data.path if isinstance(data, YamlMap) else ""
        allowed = cls.keys()
        unknown = [name for name in data if name not in allowed]
        if context is not None:
            for name in unknown:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                context.problems.append(
                    (join(path, name), f"unknown key {name!r}{hint}; allowed keys: {', '.join(allowed)}")
                )
            for name in allowed:
                info_ = cls.__pydantic_fields__[name]  # type: ignore[attr-defined]
                if name not in data and info_.is_required():
                    context.problems.append((join(path, name), f"is required: {info_.description}"))
        return {name: value for name, value in data.items() if name in allowed}

    @classmethod
    def keys(cls) -> list[str]:
        """Its keys in the order settings.yaml documents them."""
        return [f.name for f in fields(cls)]
