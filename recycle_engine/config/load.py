"""load_settings: settings.yaml -> one frozen, checked Settings; every problem at once, with key path and line.

Three passes report problems: the reader (YAML, duplicate keys, `${NAME}`), the references (ids, gateways
named elsewhere, FlexFactor's placement rules, the ladder's attempts) on the values as written, and the
pydantic models (each key's own check). A path reported by an earlier pass is not reported again, and a
`${NAME}` whose variable is missing is reported once, as such.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError
from sqlalchemy.engine import URL, make_url

from recycle_engine.config.model import (
    SLOT_NAMES,
    GatewayType,
    Settings,
    SettingsFile,
    UnsetCredential,
    attempt_number,
    gateway_type_of,
)
from recycle_engine.config.source import EnvText, Source, YamlMap, join, kind, parent, read_yaml
from recycle_engine.config.values import ERROR_TYPE, Context, Need, show
from recycle_engine.domain.profiles import attempt_label
from recycle_engine.errors import ConfigError, ConfigProblem

__all__ = ["NEEDED_BY", "describe_database", "describe_settings", "key_lines", "load_settings", "require"]

# The commands that need each kind of credential (README: "Which command needs which secret").
NEEDED_BY: Final[Mapping[Need, str]] = {
    Need.FLEXFACTOR: "run submit (not --dry-run), run reconcile, rerun --now, cascade, scheduler, "
    "serve with serve.api_key",
    Need.WEBHOOKS: "serve",
    Need.CASCADE: "serve",
    Need.NMI: "run submit (not --dry-run), scheduler",
    Need.EMAIL: "run report --email, scheduler",
    Need.CRM: "crm pull, crm push, scheduler",
}

_FILE: Final = TypeAdapter(SettingsFile)
_ID_LISTS: Final = {
    "gateways": "gateway",
    "cascade_profiles": "cascade profile",
    "atri_profiles": "ATRI profile",
    "campaigns": "campaign",
    "recycle_profiles": "recycle profile",
}
_FF_ON_PRODUCT: Final = "FlexFactor is for decline salvage only and never sells a campaign product"
_FF_IN_ATRI: Final = "FlexFactor is never in an ATRI (routing) gateway profile"
_FF_DECLINING_CRM: Final = "declines come from ordinary gateways; FlexFactor is never a CRM merchant here"
_FF_DECLINING: Final = (
    "a recycle profile covers declining gateways and FlexFactor never is one; "
    "name it in a slot (4-6, 7-9 or final) instead"
)


def load_settings(
    path: Path, env: Mapping[str, str] | None = None, *, needs: Iterable[Need] = tuple(Need)
) -> Settings:
    """Read, check and convert settings.yaml; raises ConfigError listing every problem with key path and line.

    `env` (default os.environ) resolves `${NAME}` references. A credential whose variable is missing is an
    error only for the `needs` given (default: all); otherwise it is listed in `Settings.unset`, and
    `require` refuses it where it is used. A relative SQLite path and a relative report folder are taken
    from the folder of the settings file.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file: {exc.strerror or exc}", source=name) from None
    except UnicodeDecodeError:
        raise ConfigError("the settings file is not UTF-8 text", source=name) from None
    source = Source(name, os.environ if env is None else env)
    tree = read_yaml(text, source)
    if tree is None:
        tree = YamlMap()
        tree.path = ""
    if not isinstance(tree, dict):
        raise ConfigError([ConfigProblem(name, "must be a mapping of settings keys", 1)], source=name)
    unreadable = {p.path for p in source.problems}  # nothing below these is checked again
    _References(source).check(tree)
    context = Context(base_dir=path.resolve().parent)
    checked: SettingsFile | None = None
    errors: list[ErrorDetails] = []
    try:
        checked = _FILE.validate_python(tree, context=context)
    except ValidationError as exc:
        errors = exc.errors()
    unset = tuple(
        UnsetCredential(u.name, u.path, u.line, context.deferred[u.path])
        for u in source.unset
        if u.path in context.deferred
    )
    problems = _problems(source, context, errors, unreadable)
    problems += [_missing(u) for u in unset if u.need is not None and u.need in set(needs)]
    if problems or checked is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems or [ConfigProblem(name, "incomplete settings")], source=name)
    return checked.settings(path.resolve(), unset)


def key_lines(path: Path) -> Callable[[str], int | None]:
    """The line of a key path (or of its nearest written parent) in a settings file `load_settings` accepted."""
    source = Source(str(path), {})
    read_yaml(path.read_text(encoding="utf-8"), source)
    return source.line_of


def require(settings: Settings, *needs: Need) -> None:
    """Raise ConfigError naming every credential `needs` use whose variable is missing."""
    missing = settings.missing_for(*needs)
    if missing:
        raise ConfigError([_missing(u) for u in missing], source=str(settings.source_path or "settings"))


def _missing(unset: UnsetCredential) -> ConfigProblem:
    purpose = f"; it is needed {unset.need.value}" if unset.need is not None else ""
    return ConfigProblem(unset.path, f"environment variable {unset.variable} is not set{purpose}", unset.line)


def _problems(
    source: Source, context: Context, errors: list[ErrorDetails], unreadable: set[str]
) -> list[ConfigProblem]:
    """The reader's and the references' problems, the key checks', then each model error not yet said."""
    problems = list(source.problems)
    for path, message in context.problems:
        problems.append(ConfigProblem(path, message, source.line_of(path)))
    said = {p.path for p in problems}
    deferred = set(context.deferred)
    for u in source.unset:
        if u.path not in deferred:
            problems.append(ConfigProblem(u.path, f"environment variable {u.name} is not set", u.line))
    said |= {u.path for u in source.unset}
    unreadable = {p for p in unreadable | {u.path for u in source.unset} if p}
    for error in errors:
        if error["type"] == "missing":
            continue  # the key check has named it, with what the key is for
        path, message = _translate(error)
        if path in said or any(path.startswith((p + ".", p + "[")) for p in unreadable):
            continue
        said.add(path)
        problems.append(ConfigProblem(path, message, source.line_of(path)))
    return problems


def _translate(error: ErrorDetails) -> tuple[str, str]:
    loc = list(error["loc"])
    if len(loc) > 2 and loc[0] == "gateways" and isinstance(loc[1], int) and isinstance(loc[2], str):
        if loc[2] in {t.value for t in GatewayType}:
            del loc[2]  # the entry's type, as pydantic names the union member
    path = ""
    for step in loc:
        if step == "[key]":
            continue
        path = f"{path}[{step}]" if isinstance(step, int) else join(path, str(step))
    ctx = error.get("ctx") or {}
    raw = error.get("input")
    if error["type"] == ERROR_TYPE:
        at = ctx.get("at")
        return (join(path, at) if at else path), str(ctx.get("message", error["msg"]))
    allowed = ", ".join(t.value for t in GatewayType)
    if error["type"] == "union_tag_invalid" and isinstance(raw, dict):
        return join(path, "type"), f"unknown gateway type {show(raw.get('type'))}; allowed: {allowed}"
    if error["type"] == "union_tag_not_found":
        if isinstance(raw, dict):
            return join(path, "type"), f"is required: {' or '.join(t.value for t in GatewayType)}"
        return path, f"must be a mapping with keys id, type and those of its type, not {kind(raw)}"
    return path, error["msg"]


class _References:
    """Checks between entries, on the values as written: ids, references, FlexFactor's place, ladders."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.ids: dict[str, dict[str, str]] = {}  # list path -> id -> path of its `id` key
        self.types: dict[str, str | None] = {}  # gateway id -> its type as written

    def check(self, tree: dict[str, Any]) -> None:
        self.tree = tree
        for key, what in _ID_LISTS.items():
            for i, entry in self._entries(tree, key):
                self._id(f"{key}[{i}]", entry, what)
                if key == "gateways" and isinstance(entry, dict) and _as_id(entry.get("id")):
                    self.types.setdefault(str(_as_id(entry.get("id"))), gateway_type_of(entry))
        self._cascade_all(tree)
        for i, campaign in self._entries(tree, "campaigns"):
            for j, product in self._entries(campaign, "products", f"campaigns[{i}]"):
                where = f"campaigns[{i}].products[{j}]"
                self._id(where, product, "product")
                self._gateway(join(where, "gateway"), _get(product, "gateway"), _FF_ON_PRODUCT)
        for i, profile in self._entries(tree, "cascade_profiles"):
            self._gateways(f"cascade_profiles[{i}]", profile, None)
        for i, profile in self._entries(tree, "atri_profiles"):
            self._gateways(f"atri_profiles[{i}]", profile, _FF_IN_ATRI)
            written = _as_id(_get(profile, "cascade_profile"))
            known = self.ids.get("cascade_profiles", {})
            if written is not None and written not in known:
                self.source.add(
                    f"atri_profiles[{i}].cascade_profile",
                    f"unknown cascade profile {written!r}; cascade profiles: {', '.join(known) or 'none'}",
                )
        owner: dict[str, str] = {}
        for i, profile in self._entries(tree, "recycle_profiles"):
            self._recycle_profile(f"recycle_profiles[{i}]", profile, owner)
        for i, rule in self._entries(tree, "decline_mapping"):
            self._gateway(f"decline_mapping[{i}].gateway", _get(rule, "gateway"), None)
            scopes = [
                name for name in ("gateway", "gateway_type") if isinstance(rule, dict) and rule.get(name)
            ]
            if len(scopes) != 1:
                self.source.add(
                    f"decline_mapping[{i}]",
                    "needs exactly one of gateway (one gateway by id: MID scope) "
                    "or gateway_type (every gateway of a type: Gateway scope)",
                )
        crm = tree.get("crm")
        merchants = crm.get("gateways") if isinstance(crm, dict) else None
        if isinstance(merchants, dict):
            for merchant_id, gateway in merchants.items():
                self._gateway(f"crm.gateways.{merchant_id}", gateway, _FF_DECLINING_CRM)

    def _entries(self, raw: Any, key: str, path: str = "") -> list[tuple[int, Any]]:
        items = raw.get(key) if isinstance(raw, dict) else None
        return list(enumerate(items)) if isinstance(items, list) else []

    def _id(self, entry_path: str, entry: Any, what: str) -> None:
        entry_id = _as_id(_get(entry, "id"))
        if entry_id is None:
            return
        path = join(entry_path, "id")
        seen = self.ids.setdefault(parent(entry_path), {})
        if entry_id in seen:
            first = seen[entry_id]
            self.source.add(
                path,
                f"duplicate {what} id {entry_id!r} (first at {parent(first)}, line {self.source.line_of(first)})",
            )
        else:
            seen[entry_id] = path

    def _gateway(self, path: str, value: Any, flexfactor_refused: str | None) -> str | None:
        """A gateway id that must exist; `flexfactor_refused` says why a FlexFactor gateway cannot go here."""
        gateway_id = _as_id(value)
        if gateway_id is None:
            return None
        known = self.ids.get("gateways", {})
        if gateway_id not in known:
            self.source.add(
                path,
                f"unknown gateway {gateway_id!r}{_did_you_mean(gateway_id, known)}; "
                f"gateways: {', '.join(known) or 'none'}",
            )
            return None
        if flexfactor_refused and self.types.get(gateway_id) == GatewayType.FLEXFACTOR.value:
            self.source.add(path, f"{gateway_id!r} is a FlexFactor gateway: {flexfactor_refused}")
            return None
        return gateway_id

    def _gateways(
        self, profile_path: str, profile: Any, flexfactor_refused: str | None
    ) -> list[tuple[str, str]]:
        found = []
        for j, value in self._entries(profile, "gateways"):
            path = f"{profile_path}.gateways[{j}]"
            gateway_id = self._gateway(path, value, flexfactor_refused)
            if gateway_id is not None:
                found.append((path, gateway_id))
        return found

    def _cascade_all(self, tree: dict[str, Any]) -> None:
        cascading: list[str] = []
        for i, entry in self._entries(tree, "gateways"):
            flag = _get(entry, "cascade_all")
            if isinstance(flag, EnvText):
                flag = yaml.safe_load(flag) if not flag.unset else None
            if gateway_type_of(entry) == GatewayType.FLEXFACTOR.value and flag is True:
                if cascading:
                    self.source.add(
                        f"gateways[{i}].cascade_all",
                        f"only one FlexFactor gateway may set cascade_all; {cascading[0]!r} already does",
                    )
                cascading.append(str(_as_id(_get(entry, "id"))))

    def _recycle_profile(self, path: str, profile: Any, owner: dict[str, str]) -> None:
        for gateway_path, gateway_id in self._gateways(path, profile, _FF_DECLINING):
            first = owner.setdefault(gateway_id, gateway_path)
            if first == gateway_path:
                continue
            line = self.source.line_of(first)
            if parent(first) == parent(gateway_path):
                self.source.add(
                    gateway_path, f"gateway {gateway_id!r} is listed twice in this profile (line {line})"
                )
            else:
                owner_id = _as_id(_get(self._at(parent(parent(first))), "id"))
                self.source.add(
                    gateway_path,
                    f"gateway {gateway_id!r} is already in recycle profile {owner_id!r} (line {line}); "
                    "a gateway belongs to at most one recycle profile",
                )
        slots = _get(profile, "slots")
        for name, value in slots.items() if isinstance(slots, dict) else []:
            slot_path = join(join(path, "slots"), name)
            if name.strip().lower() not in SLOT_NAMES:
                is_flexfactor = (
                    isinstance(value, str) and self.types.get(value) == GatewayType.FLEXFACTOR.value
                )
                # Only the real slot 1-3 gets FlexFactor's placement rule; `7-10` is a typo, not a placement.
                reason = (
                    "FlexFactor can be chosen only for slots 4-6, 7-9 and final"
                    if is_flexfactor and name.strip() == "1-3"
                    else f"unknown slot {name!r}; slots: 4-6, 7-9, final"
                )
                self.source.add(slot_path, f"{reason}; attempts 1-3 always run on the declining gateway")
            elif value is not None:
                self._gateway(slot_path, value, None)
        self._attempts(path, profile)

    def _attempts(self, path: str, profile: Any) -> None:
        reduction_type = _get(profile, "reduction_type")
        percent = reduction_type is None or (
            isinstance(reduction_type, str) and reduction_type.strip().lower() == "percent"
        )
        first_path: dict[int, str] = {}
        numbered = 0
        for i, item in self._entries(profile, "attempts"):
            item_path = f"{path}.attempts[{i}]"
            try:
                number = attempt_number(_get(item, "attempt"))
            except PydanticCustomError:
                number = None
            if number is not None and number in first_path:
                first = first_path[number]
                self.source.add(
                    join(item_path, "attempt"),
                    f"attempt {attempt_label(number)} is listed twice (also {first}, line {self.source.line_of(first)})",
                )
            elif number is not None:
                first_path[number] = item_path
            if not (isinstance(item, dict) and str(item.get("attempt")).lower() == "final"):
                numbered += 1
            reduction = _get(item, "reduction")
            if percent and isinstance(reduction, str | int) and not isinstance(reduction, bool | EnvText):
                try:
                    amount = Decimal(str(reduction).strip())
                except InvalidOperation:
                    continue
                if amount > 100:
                    self.source.add(
                        join(item_path, "reduction"), f"a percent reduction must be 0..100; got {amount}"
                    )
        if numbered > 9:
            self.source.add(
                join(path, "attempts"),
                f"at most nine numbered attempts plus final; found {numbered} numbered",
            )

    def _at(self, path: str) -> Any:
        """The raw entry at a path such as recycle_profiles[0]."""
        key, _, index = path.partition("[")
        return dict(self._entries(self.tree, key)).get(int(index.rstrip("]")))


def _did_you_mean(written: str, known: Iterable[str]) -> str:
    """A hint for a misspelt id: the same letters in another case first, else the closest id."""
    names = list(known)
    same = [name for name in names if name.casefold() == written.casefold()]
    close = same or difflib.get_close_matches(written, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def _as_id(value: Any) -> str | None:
    """An id as the models read it, or None when it is no id (the models say why)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value and not isinstance(value, EnvText):
        return value
    return None


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
    for kind_ in GatewayType:
        ids = [g.id for g in settings.gateways.values() if g.type is kind_]
        lines.append(f"{kind_.value} gateways: {', '.join(ids) or 'none'}")
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
    if settings.crm is not None:
        crm = settings.crm
        lines.append(
            f"crm: {crm.type.value} at {crm.base_url}; {crm.results_per_page} rows a page, "
            f"at most {crm.rate_limit_per_second:g} calls a second; pull looks back {crm.pull.lookback_minutes} min"
        )
    lines.append("jobs: " + ", ".join(f"{job.name} '{job.cron}'" for job in settings.jobs.values()))
    email = settings.reports.email
    if email is not None:
        login = "with a login" if email.username else "without a login"
        tls = "STARTTLS" if email.starttls else "no TLS"
        lines.append(
            f"report e-mail: to {', '.join(email.to)} via {email.host}:{email.port} ({tls}, {login}), "
            f"{email.attempts} tries"
        )
    for unset in settings.unset:
        where = f"{unset.path}, line {unset.line}" if unset.line else unset.path
        use = f"needed by: {NEEDED_BY[unset.need]}" if unset.need is not None else "no command uses it"
        lines.append(f"environment variable {unset.variable} is not set ({where}); {use}")
    return lines
