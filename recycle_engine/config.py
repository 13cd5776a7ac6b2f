"""settings.yaml -> one frozen, checked Settings; `${NAME}` reads the environment; every problem at once."""

from __future__ import annotations

import base64
import binascii
import difflib
import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from recycle_engine.domain.declines import DeclineType, MappingRule, MappingScope, RuleOrderType
from recycle_engine.domain.profiles import (
    FINAL,
    AttemptRule,
    RecycleProfile,
    ReductionType,
    Slot,
    attempt_label,
)
from recycle_engine.errors import ConfigError, ConfigProblem
from recycle_engine.settings import (
    AtriProfile,
    BatchingSettings,
    Campaign,
    CampaignProduct,
    CascadeProfile,
    FlexFactorSettings,
    GatewaySettings,
    GatewayType,
    HttpSettings,
    JobSettings,
    ReportSettings,
    ServeSettings,
    Settings,
    SimulatedSettings,
)

__all__ = ["ROOT_KEYS", "Key", "describe_database", "describe_settings", "load_settings"]

DEFAULT_DATABASE_URL: Final = "sqlite:///var/recycle.db"


class _Mark(enum.Enum):
    REQUIRED = "required"  # a Key default: the key must be written
    INVALID = "invalid"  # a converter has already reported why
    UNRESOLVED = "unresolved"  # a ${NAME} whose variable is missing; reported once, never re-checked


REQUIRED: Final = _Mark.REQUIRED
INVALID: Final = _Mark.INVALID
UNRESOLVED: Final = _Mark.UNRESOLVED

_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")  # "$${" writes a literal "${"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ONLY_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_LAST_STEP = re.compile(r"(?:\.[^.\[\]]+|\[\d+\])$")
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # gateway ids end up in webhook URL paths
_DECIMAL_TEXT = re.compile(r"\d+(?:\.\d+)?")
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str:
    match = _LAST_STEP.search(path)
    return path[: match.start()] if match else ""


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "text" if isinstance(value, str) else type(value).__name__


class _Reader:
    """Reads the YAML tree and collects every problem with its line; knows which values the environment gave."""

    def __init__(self, source: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.env = env
        self.lines: dict[str, int] = {}
        self.problems: list[ConfigProblem] = []
        self.from_env: set[str] = set()  # paths whose text used ${...}: never echoed in messages
        self.env_only: set[str] = set()  # paths whose text is exactly one ${NAME}: allowed for secrets
        self.ids: dict[str, dict[str, str]] = {}  # list path -> id -> path of its `id` key
        self.gateway_types: dict[str, GatewayType | None] = {}
        self.recycle_owner: dict[str, str] = {}  # gateway id -> where a recycle profile first covers it

    def add(self, path: str, message: str) -> None:
        self.problems.append(
            ConfigProblem(path=path or self.source, message=message, line=self.line_of(path))
        )

    def line_of(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def show(self, path: str, value: object) -> str:
        """A value for a message; anything that came from the environment may be a secret and is not shown."""
        return "the value from the environment" if path in self.from_env else repr(value)

    def id_at(self, item_path: str, list_path: str) -> str:
        return next((i for i, p in self.ids.get(list_path, {}).items() if _parent(p) == item_path), item_path)

    # YAML nodes -> plain values, recording the line of every key path on the way.

    def tree(self, loader: yaml.SafeLoader, node: yaml.Node, path: str, seen: frozenset[int]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            self.add(path, "an alias refers to itself")
            return INVALID
        seen = seen | {id(node)}
        if isinstance(node, yaml.MappingNode):
            return self._mapping(loader, node, path, seen)
        if isinstance(node, yaml.SequenceNode):
            return [self.tree(loader, item, f"{path}[{i}]", seen) for i, item in enumerate(node.value)]
        try:
            value = loader.construct_object(node)
        except yaml.YAMLError as exc:
            self.add(path, f"cannot read this value: {getattr(exc, 'problem', exc)}")
            return INVALID
        return self._expand(value, path) if isinstance(value, str) else value

    def _mapping(
        self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, seen: frozenset[int]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        written: set[str] = set()
        for key_node, value_node, merged in self._pairs(node):
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(path, "a key must be a plain name")
                continue
            # The key's text as written: `0002:` or `4-6:` stay names, never YAML numbers.
            key = str(key_node.value)
            child = _join(path, key)
            first_line = self.lines.get(child)
            self.lines[child] = key_node.start_mark.line + 1
            if not merged and key in written:
                self.add(child, f"key {key!r} is written twice in this mapping (first on line {first_line})")
            if not merged:
                written.add(key)
            result[key] = self.tree(loader, value_node, child, seen)
        return result

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """Key/value pairs with `<<: *anchor` merges first, so keys written here override them."""
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        own: list[tuple[yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged.extend((k, v, True) for k, v, _ in self._pairs(source))
        return merged + own

    def _expand(self, text: str, path: str) -> Any:
        if "${" not in text:
            return text
        missing: list[str] = []
        used_env = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used_env
            name = match.group(1)
            if name is None:
                return "${"
            used_env = True
            if not _ENV_NAME.fullmatch(name):
                missing.append(name)
                self.add(path, f"'${{{name}}}' does not name an environment variable (letters, digits, _)")
                return ""
            if name not in self.env:
                missing.append(name)
                self.add(path, f"environment variable {name} is not set")
                return ""
            return self.env[name]

        result = _ENV_REF.sub(replace, text)
        if used_env:
            self.from_env.add(path)
        if _ONLY_ENV_REF.fullmatch(text):
            self.env_only.add(path)
        return UNRESOLVED if missing else result


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


def _id_text(r: _Reader, path: str, value: Any) -> Any:
    # CRM ids are often numbers (`id: 12`); they are names here all the same.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID_TEXT.fullmatch(value):
        r.add(path, f"must be an id of letters, digits, '.', '_' or '-'; got {r.show(path, value)}")
        return INVALID
    return value


def _id(what: str) -> Converter:
    """An entry's id, unique within its list (`gateways[2].id` is unique in `gateways`)."""

    def convert(r: _Reader, path: str, value: Any) -> Any:
        entry_id = _id_text(r, path, value)
        if entry_id is INVALID:
            return INVALID
        seen = r.ids.setdefault(_parent(_parent(path)), {})
        if entry_id in seen:
            first = seen[entry_id]
            r.add(
                path, f"duplicate {what} id {entry_id!r} (first at {_parent(first)}, line {r.line_of(first)})"
            )
            return INVALID
        seen[entry_id] = path
        return entry_id

    return convert


def _gateway_ref(flexfactor_refused: str | None = None) -> Converter:
    """A gateway id that must exist; `flexfactor_refused` says why a FlexFactor gateway cannot go here."""

    def convert(r: _Reader, path: str, value: Any) -> Any:
        gateway_id = _id_text(r, path, value)
        if gateway_id is INVALID:
            return INVALID
        known = r.ids.get("gateways", {})
        if gateway_id not in known:
            r.add(path, f"unknown gateway {gateway_id!r}; gateways: {', '.join(known) or 'none'}")
            return INVALID
        if flexfactor_refused and r.gateway_types.get(gateway_id) is GatewayType.FLEXFACTOR:
            r.add(path, f"{gateway_id!r} is a FlexFactor gateway: {flexfactor_refused}")
            return INVALID
        return gateway_id

    return convert


def _cascade_profile_ref(r: _Reader, path: str, value: Any) -> Any:
    profile_id = _id_text(r, path, value)
    if profile_id is INVALID:
        return INVALID
    known = r.ids.get("cascade_profiles", {})
    if profile_id not in known:
        r.add(path, f"unknown cascade profile {profile_id!r}; cascade profiles: {', '.join(known) or 'none'}")
        return INVALID
    return profile_id


_FF_ON_PRODUCT: Final = "FlexFactor is for decline salvage only and never sells a campaign product"
_FF_IN_ATRI: Final = "FlexFactor is never in an ATRI (routing) gateway profile"
_FF_DECLINING: Final = (
    "a recycle profile covers declining gateways and FlexFactor never is one; "
    "name it in a slot (4-6, 7-9 or final) instead"
)
_SIMULATED_RESULTS: Final = {
    "APPROVED": "APPROVED",
    "SOFT_DECLINE": "SOFT_DECLINE",
    "HARD_DECLINE": "HARD_DECLINE",
}


# Entries with rules across their keys.


def _card_results(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.add(path, f"must map card last 4 digits to a result, not {_kind(raw)}")
        return INVALID
    result_of = _choice(_SIMULATED_RESULTS, "result")
    results: dict[str, str] = {}
    for last4, value in raw.items():
        if not re.fullmatch(r"\d{4}", last4):
            r.add(_join(path, last4), f"{last4!r} is not the last 4 digits of a card")
            continue
        result = _apply(result_of, r, _join(path, last4), value)
        if result is not INVALID:
            results[last4] = result
    return results


def _gateway(r: _Reader, path: str, raw: Any) -> Any:
    kind = raw.get("type") if isinstance(raw, dict) else None
    kind_text = kind.strip().lower() if isinstance(kind, str) else ""
    keys = _GATEWAY_KEYS_BY_TYPE.get(kind_text, _GATEWAY_KEYS)
    # With an unknown type we cannot tell which keys belong; report the type, not every other key.
    values = _section(r, path, raw, keys, strict=kind_text in _GATEWAY_KEYS_BY_TYPE)
    if "id" in values:
        r.gateway_types[values["id"]] = values.get("type")
    if not _complete(values, keys) or keys is _GATEWAY_KEYS:
        return INVALID
    if values["type"] is GatewayType.FLEXFACTOR:
        flexfactor = FlexFactorSettings(**{name: values[name] for name in _FLEXFACTOR_KEYS})
        return GatewaySettings(
            values["id"], values["type"], processor_type="flexfactor", flexfactor=flexfactor
        )
    return GatewaySettings(
        values["id"], values["type"], processor_type=values["processor_type"], simulated=values["simulated"]
    )


def _gateways(r: _Reader, path: str, raw: Any) -> Any:
    gateways = _keyed(_gateway)(r, path, raw)
    if gateways is INVALID:
        return INVALID
    cascading = [g.id for g in gateways.values() if g.flexfactor is not None and g.flexfactor.cascade_all]
    for gateway_id in cascading[1:]:
        where = _join(_parent(r.ids["gateways"][gateway_id]), "cascade_all")
        r.add(where, f"only one FlexFactor gateway may set cascade_all; {cascading[0]!r} already does")
    return gateways


def _recycle_gateway(r: _Reader, path: str, value: Any) -> Any:
    gateway_id = _gateway_ref(_FF_DECLINING)(r, path, value)
    if gateway_id is INVALID:
        return INVALID
    first = r.recycle_owner.setdefault(gateway_id, path)
    if first == path:
        return gateway_id
    owner = _parent(_parent(first))
    if owner == _parent(_parent(path)):
        r.add(path, f"gateway {gateway_id!r} is listed twice in this profile (line {r.line_of(first)})")
    else:
        r.add(
            path,
            f"gateway {gateway_id!r} is already in recycle profile {r.id_at(owner, 'recycle_profiles')!r} "
            f"(line {r.line_of(first)}); a gateway belongs to at most one recycle profile",
        )
    return INVALID


def _attempt_number(r: _Reader, path: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "final":
        return FINAL
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 9:
        r.add(path, f"must be 1..9 or final; got {r.show(path, value)}")
        return INVALID
    return number


def _attempts(r: _Reader, path: str, raw: Any) -> Any:
    """The ladder as (path, AttemptRule) pairs, so the profile can point at a bad reduction."""
    if not isinstance(raw, list) or not raw:
        r.add(path, 'must list at least one attempt, e.g. - {attempt: 1, days: 2, reduction: "0"}')
        return INVALID
    rules: list[tuple[str, AttemptRule]] = []
    first_path: dict[int, str] = {}
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        values = _section(r, item_path, item, _ATTEMPT_KEYS)
        number = values.get("attempt")
        if number in first_path:
            first = first_path[number]
            r.add(
                _join(item_path, "attempt"),
                f"attempt {attempt_label(number)} is listed twice (also {first}, line {r.line_of(first)})",
            )
            continue
        if number is not None:
            first_path[number] = item_path
        if _complete(values, _ATTEMPT_KEYS):
            rules.append((item_path, AttemptRule(**values)))
    numbered = sum(
        1 for item in raw if not (isinstance(item, dict) and str(item.get("attempt")).lower() == "final")
    )
    if numbered > 9:
        r.add(path, f"at most nine numbered attempts plus final; found {numbered} numbered")
    return tuple(rules)


_SLOT_NAMES: Final = {"4-6": Slot.S4_6, "7-9": Slot.S7_9, "final": Slot.FINAL}


def _slots(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        r.add(path, f"must map slots 4-6, 7-9 and final to a gateway or null, not {_kind(raw)}")
        return INVALID
    slots: dict[Slot, str | None] = dict.fromkeys(_SLOT_NAMES.values(), None)
    for name, value in raw.items():
        slot_path = _join(path, name)
        slot = _SLOT_NAMES.get(name.strip().lower())
        if slot is None:
            is_flexfactor = isinstance(value, str) and r.gateway_types.get(value) is GatewayType.FLEXFACTOR
            reason = (
                "FlexFactor can be chosen only for slots 4-6, 7-9 and final"
                if is_flexfactor
                else f"unknown slot {name!r}; slots: 4-6, 7-9, final"
            )
            r.add(slot_path, f"{reason}; attempts 1-3 always run on the declining gateway")
            continue
        gateway_id = _apply(_optional(_gateway_ref()), r, slot_path, value)
        if gateway_id is not INVALID:
            slots[slot] = gateway_id
    return slots


def _recycle_profile(r: _Reader, path: str, raw: Any) -> Any:
    values = _section(r, path, raw, _RECYCLE_PROFILE_KEYS)
    if values.get("reduction_type") is ReductionType.PERCENT:
        for item_path, rule in values.get("attempts", ()):
            if rule.reduction > 100:
                r.add(
                    _join(item_path, "reduction"), f"a percent reduction must be 0..100; got {rule.reduction}"
                )
    if not _complete(values, _RECYCLE_PROFILE_KEYS):
        return INVALID
    attempts = tuple(sorted((rule for _, rule in values.pop("attempts")), key=lambda rule: rule.attempt))
    return RecycleProfile(attempts=attempts, **values)


def _decline_mapping(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.add(path, f"must be a list of rules, not {_kind(raw)}")
        return INVALID
    rules: list[MappingRule] = []
    for position, item in enumerate(raw):
        item_path = f"{path}[{position}]"
        values = _section(r, item_path, item, _MAPPING_KEYS)
        written = [name for name in ("gateway", "gateway_type") if isinstance(item, dict) and item.get(name)]
        if len(written) != 1:
            r.add(
                item_path,
                "needs exactly one of gateway (one gateway by id: MID scope) "
                "or gateway_type (every gateway of a type: Gateway scope)",
            )
            continue
        if not _complete(values, _MAPPING_KEYS):
            continue
        by_gateway = values["gateway"] is not None
        rules.append(
            MappingRule(
                scope=MappingScope.MID if by_gateway else MappingScope.GATEWAY,
                target=values["gateway"] if by_gateway else values["gateway_type"].value,
                order_type=values["order_type"],
                contains=values["contains"],
                map_to=values["map_to"],
                display_message=values["display_message"],
                position=position,
            )
        )
    return tuple(rules)


def _jobs(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        r.add(path, f"must map job names ({', '.join(_JOBS)}) to their schedule, not {_kind(raw)}")
        return INVALID
    for name in raw:
        if name not in _JOBS:
            r.add(_join(path, name), f"unknown job {name!r}; jobs: {', '.join(_JOBS)}")
    jobs: dict[str, JobSettings] = {}
    for name, keys in _JOBS.items():
        values = _section(r, _join(path, name), raw.get(name), keys)
        if _complete(values, keys):
            jobs[name] = JobSettings(name=name, **values)
    return jobs


def _http(r: _Reader, path: str, raw: Any) -> Any:
    values = _section(r, path, raw, _HTTP_KEYS)
    if not _complete(values, _HTTP_KEYS):
        return INVALID
    if values["backoff_max_s"] < values["backoff_base_s"]:
        r.add(_join(path, "backoff_max_s"), "must be at least backoff_base_s")
        return INVALID
    return HttpSettings(**values)


# The key tables: every key of settings.yaml beside its default (as written in YAML) and what it does.

_SIMULATED_KEYS: Final = {
    "default": Key(
        _choice(_SIMULATED_RESULTS, "result"), "SOFT_DECLINE", "result of every charge not overridden"
    ),
    "by_card_last4": Key(_card_results, {}, 'results by card last 4, e.g. {"0000": APPROVED}'),
}
_GATEWAY_KEYS: Final = {
    "id": Key(_id("gateway"), REQUIRED, "unique name other settings use for this gateway"),
    "type": Key(_enum(GatewayType, "gateway type"), REQUIRED, "simulated or flexfactor"),
}
_FLEXFACTOR_KEYS: Final = {
    "base_url": Key(_http_url, REQUIRED, "FlexFactor API root, e.g. https://api-sandbox.flexfactor.io/v1"),
    "app_key": Key(_text(), REQUIRED, "API key (AppKey)"),
    "app_secret": Key(_secret, REQUIRED, "API secret (AppSecret); only as ${NAME}"),
    "mid": Key(_text(), REQUIRED, "FlexFactor merchant id"),
    "site_id": Key(_text(), REQUIRED, "FlexFactor site id"),
    "environment_key": Key(_text(), REQUIRED, "tokenization key (EnvironmentKey)"),
    "hmac_signing_key": Key(_signing_key, REQUIRED, "base64 webhook signing key; only as ${NAME}"),
    "expiry_days": Key(
        _int(1, 21, why=" (FlexFactor retries for at most 21 days)"), 21, "days FlexFactor keeps retrying"
    ),
    "cascade_all": Key(_bool, False, "send every soft-declined initial sale here, over all cascade profiles"),
    "webhook_tolerance_seconds": Key(_int(1, 86_400), 300, "how old a signed webhook may be"),
    "webhook_public_host": Key(_optional(_text()), None, "Host that FlexFactor signs, when behind a proxy"),
}
_GATEWAY_KEYS_BY_TYPE: Final = {
    GatewayType.SIMULATED.value: {
        **_GATEWAY_KEYS,
        "processor_type": Key(_text(), "nmi", "processor name reported to FlexFactor as responseCodeSource"),
        "simulated": Key(
            _mapping(_SIMULATED_KEYS, SimulatedSettings), {}, "how the bundled processor answers"
        ),
    },
    GatewayType.FLEXFACTOR.value: {**_GATEWAY_KEYS, **_FLEXFACTOR_KEYS},
}
_PRODUCT_KEYS: Final = {
    "id": Key(_id("product"), REQUIRED, "product id at the CRM"),
    "gateway": Key(_gateway_ref(_FF_ON_PRODUCT), REQUIRED, "gateway that sells it; never FlexFactor"),
}
_CAMPAIGN_KEYS: Final = {
    "id": Key(_id("campaign"), REQUIRED, "campaign id at the CRM"),
    "products": Key(_list(_mapping(_PRODUCT_KEYS, CampaignProduct)), [], "products and their gateways"),
    "disable_recycle_billing": Key(_bool, False, "true: soft declines of this campaign are not recycled"),
}
_CASCADE_PROFILE_KEYS: Final = {
    "id": Key(_id("cascade profile"), REQUIRED, "unique name"),
    "gateways": Key(_list(_gateway_ref(), min_items=1, what="gateway"), REQUIRED, "gateways tried in turn"),
}
_ATRI_PROFILE_KEYS: Final = {
    "id": Key(_id("ATRI profile"), REQUIRED, "unique name"),
    "gateways": Key(
        _list(_gateway_ref(_FF_IN_ATRI), min_items=1, what="gateway"), REQUIRED, "gateways routed to"
    ),
    "cascade_profile": Key(_optional(_cascade_profile_ref), None, "cascade profile for its soft declines"),
}
_ATTEMPT_KEYS: Final = {
    "attempt": Key(_attempt_number, REQUIRED, "1..9 or final"),
    "days": Key(
        _int(0, 365), REQUIRED, "days after the previous attempt that ran (attempt 1: after the decline)"
    ),
    "reduction": Key(_decimal(), "0", "added to the reduction so far: percent of the original, or an amount"),
    "skip": Key(_bool, False, "true: never charged; adds no days and no reduction"),
}
_RECYCLE_PROFILE_KEYS: Final = {
    "id": Key(_id("recycle profile"), REQUIRED, "unique name"),
    "gateways": Key(
        _list(_recycle_gateway), REQUIRED, "declining gateways it covers; each in one profile at most"
    ),
    "reduction_type": Key(_enum(ReductionType, "reduction type"), "percent", "percent or flat"),
    "minimum_price": Key(_decimal(), "0", "a reduced price never goes below this"),
    "bill_on_saturday": Key(_bool, False, "move every attempt forward to a Saturday"),
    "hold_recycle_price": Key(
        _bool, False, "an approval at a reduced price keeps that price for later rebills"
    ),
    "attempts": Key(_attempts, REQUIRED, "re-attempts 1..9 and final"),
    "slots": Key(_slots, {}, "gateway of slots 4-6, 7-9, final; null or absent: the declining gateway"),
    "holdout_percent": Key(
        _decimal(Decimal(100)), "0", "share of declines left out of recycling, to measure lift"
    ),
}
_MAPPING_KEYS: Final = {
    "gateway": Key(_optional(_gateway_ref()), None, "one gateway by id (MID scope)"),
    "gateway_type": Key(_optional(_enum(GatewayType, "gateway type")), None, "every gateway of a type"),
    "order_type": Key(_enum(RuleOrderType, "order type"), "ALL", "ALL, NEW_SALE (and upsales) or RECURRING"),
    "contains": Key(_text(), REQUIRED, "text the processor's message contains (case-insensitive)"),
    "map_to": Key(_enum(DeclineType, "decline type"), REQUIRED, "SOFT or HARD"),
    "display_message": Key(_optional(_text()), None, "text shown instead of the processor's"),
}
_BATCHING_KEYS: Final = {
    "batch_size": Key(_int(1, 10_000), 500, "hand-offs per batch"),
    "concurrency": Key(_int(1, 256), 32, "requests to FlexFactor in flight at once"),
    "rate_limit_per_second": Key(_number(0, above=True), 100.0, "most requests to FlexFactor per second"),
}
_HTTP_KEYS: Final = {
    "connect_timeout_s": Key(_number(0, 300, above=True), 5.0, "seconds to open a connection"),
    "read_timeout_s": Key(_number(0, 600, above=True), 30.0, "seconds to wait for an answer"),
    "max_retries": Key(_int(0, 20), 4, "retries of a request that never reached FlexFactor, or a 429"),
    "backoff_base_s": Key(_number(0, 60), 0.5, "first wait between retries, doubled each time"),
    "backoff_max_s": Key(_number(0, 3600), 30.0, "longest wait between retries"),
}


def _job_keys(cron: str, misfire_grace_seconds: int) -> dict[str, Key]:
    return {
        "cron": Key(_cron, cron, "minute hour day-of-month month day-of-week, in the settings timezone"),
        "misfire_grace_seconds": Key(
            _int(1, 7 * 86_400), misfire_grace_seconds, "how late a missed run may start"
        ),
    }


_JOBS: Final = {
    "submit": _job_keys("0 2 * * *", 14_400),  # the nightly run: due attempts, FlexFactor batches, reruns
    "reconcile": _job_keys("30 3 * * *", 14_400),  # apply outcomes, poll, settle expired windows
    "report": _job_keys("0 6 * * *", 21_600),  # the daily recovery report
}
_REPORT_KEYS: Final = {
    "output_dir": Key(
        _folder, "reports/out", "folder of the HTML and CSV reports (relative: to settings.yaml)"
    ),
    "fee_percent": Key(_optional(_number(0, 100)), None, "FlexFactor fee in percent of recovered amounts"),
}
_SERVE_KEYS: Final = {
    "host": Key(_text(), "127.0.0.1", "address the webhook service listens on"),
    "port": Key(_int(1, 65_535), 8080, "port the webhook service listens on"),
    "api_key": Key(_optional(_secret), None, "bearer key for POST /cascade; only as ${NAME}"),
    "max_body_bytes": Key(_int(1, 16 * 1024 * 1024), 64 * 1024, "largest request body accepted"),
}
_DATABASE_KEYS: Final = {
    "url": Key(
        _database_url, DEFAULT_DATABASE_URL, "SQLAlchemy URL; a relative SQLite path is beside settings.yaml"
    ),
}

# Gateways come before everything that names them, cascade profiles before ATRI profiles.
ROOT_KEYS: Final[Mapping[str, Key]] = {
    "timezone": Key(_timezone, REQUIRED, "IANA zone of the merchant's day; 'due today' and the crons use it"),
    "database": Key(_mapping(_DATABASE_KEYS, lambda url: url), {}, "where the engine keeps its state"),
    "gateways": Key(_gateways, REQUIRED, "ordinary processors and FlexFactor gateways"),
    "cascade_profiles": Key(_keyed(_mapping(_CASCADE_PROFILE_KEYS, CascadeProfile)), [], "real-time retries"),
    "atri_profiles": Key(_keyed(_mapping(_ATRI_PROFILE_KEYS, AtriProfile)), [], "routing of initial sales"),
    "campaigns": Key(_keyed(_mapping(_CAMPAIGN_KEYS, Campaign)), [], "campaigns and their product gateways"),
    "recycle_profiles": Key(_keyed(_recycle_profile), [], "recycle ladders by declining gateway"),
    "decline_mapping": Key(_decline_mapping, [], "rules that re-classify a decline as soft or hard"),
    "insufficient_funds_phrases": Key(
        _list(_text()), ["insufficient funds"], "processor texts meaning insufficient funds (never cascaded)"
    ),
    "batching": Key(_mapping(_BATCHING_KEYS, BatchingSettings), {}, "size and pace of FlexFactor batches"),
    "http": Key(_http, {}, "timeouts and retries of calls to FlexFactor"),
    "jobs": Key(_jobs, {}, "cron schedules of submit, reconcile and report"),
    "reports": Key(_mapping(_REPORT_KEYS, ReportSettings), {}, "where reports go"),
    "serve": Key(_mapping(_SERVE_KEYS, ServeSettings), {}, "the webhook and cascade HTTP service"),
    "alert_command": Key(_optional(_text()), None, "shell command run with a failed job's message"),
}


def _compose(text: str, source: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = ConfigProblem(source, f"not valid YAML: {exc.problem or exc.context}", line)
        raise ConfigError([problem], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, check and convert settings.yaml; raises ConfigError listing every problem with key path and line.

    `env` (default os.environ) resolves `${NAME}` references. A relative SQLite path and a relative
    report folder are taken from the folder of the settings file.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("the settings file is not UTF-8 text", source=source) from None
    loader, node = _compose(text, source)
    try:
        r = _Reader(source, path.resolve().parent, os.environ if env is None else env)
        tree = {} if node is None else r.tree(loader, node, "", frozenset())
    finally:
        loader.dispose()
    if not isinstance(tree, dict):
        raise ConfigError([ConfigProblem(source, "must be a mapping of settings keys", 1)], source=source)
    values = _section(r, "", tree, ROOT_KEYS)
    if r.problems or not _complete(values, ROOT_KEYS):
        problems = sorted(r.problems, key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems or [ConfigProblem(source, "incomplete settings")], source=source)
    return Settings(
        timezone=values["timezone"],
        database_url=values["database"],
        gateways=values["gateways"],
        campaigns=values["campaigns"],
        atri_profiles=values["atri_profiles"],
        cascade_profiles=values["cascade_profiles"],
        recycle_profiles=values["recycle_profiles"],
        decline_mapping=values["decline_mapping"],
        batching=values["batching"],
        http=values["http"],
        jobs=values["jobs"],
        reports=values["reports"],
        serve=values["serve"],
        insufficient_funds_phrases=values["insufficient_funds_phrases"],
        alert_command=values["alert_command"],
        source_path=path.resolve(),
    )


def describe_database(url: str) -> str:
    """The database kind and place, without user name or password."""
    parsed: URL = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite file {parsed.database}" if parsed.database else "sqlite in memory"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()} at {parsed.host}{port}/{parsed.database or ''}"


def describe_settings(settings: Settings) -> list[str]:
    """A short summary for `config check`: no secrets, no credentials."""
    lines = [
        f"settings: {settings.source_path}",
        f"timezone: {settings.timezone.key}",
        f"database: {describe_database(settings.database_url)}",
    ]
    for kind in GatewayType:
        ids = [g.id for g in settings.gateways.values() if g.type is kind]
        lines.append(f"{kind.value} gateways: {', '.join(ids) or 'none'}")
    for profile in settings.recycle_profiles.values():
        attempts = ", ".join(
            f"{attempt_label(a.attempt)}{' (skip)' if a.skip else ''}" for a in profile.attempts
        )
        slots = ", ".join(
            f"{slot.value}: {gateway or 'declining gateway'}" for slot, gateway in profile.slots.items()
        )
        lines.append(
            f"recycle profile {profile.id}: covers {', '.join(profile.gateways) or 'no gateway'}; "
            f"attempts {attempts}; slots {slots}"
        )
    lines.append("jobs: " + ", ".join(f"{job.name} '{job.cron}'" for job in settings.jobs.values()))
    return lines
