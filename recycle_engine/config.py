"""settings.yaml -> one frozen, checked Settings; `${NAME}` reads the environment; every problem at once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from recycle_engine.config_keys import ROOT_KEYS
from recycle_engine.config_sections import Key, _complete, _section
from recycle_engine.config_yaml import _compose, _Reader
from recycle_engine.domain.profiles import attempt_label
from recycle_engine.errors import ConfigError, ConfigProblem
from recycle_engine.settings import GatewayType, Settings

# load_settings is assembled from config_yaml (the reader), config_sections (Key and the checks),
# config_values, config_refs, config_gateways, config_recycle and config_keys; their underscored names
# are shared among those modules only. ROOT_KEYS and Key are re-exported: callers take them from here.
__all__ = ["ROOT_KEYS", "Key", "describe_database", "describe_settings", "load_settings"]


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
        anomalies=values["anomalies"],
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
