"""ROOT_KEYS and the smaller key tables: campaigns, cascade and ATRI profiles, batching, http, jobs, serve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from recycle_engine.config_gateways import _gateways
from recycle_engine.config_recycle import _decline_mapping, _recycle_profile
from recycle_engine.config_refs import _FF_IN_ATRI, _FF_ON_PRODUCT, _cascade_profile_ref, _gateway_ref, _id
from recycle_engine.config_sections import Key, _complete, _keyed, _list, _mapping, _optional, _section
from recycle_engine.config_values import (
    DEFAULT_DATABASE_URL,
    _bool,
    _cron,
    _database_url,
    _folder,
    _int,
    _number,
    _secret,
    _text,
    _timezone,
)
from recycle_engine.config_yaml import INVALID, REQUIRED, _join, _kind, _Reader
from recycle_engine.settings import (
    AnomalyThresholds,
    AtriProfile,
    BatchingSettings,
    Campaign,
    CampaignProduct,
    CascadeProfile,
    HttpSettings,
    JobSettings,
    ReportSettings,
    ServeSettings,
)

__all__ = ["ROOT_KEYS"]


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
_ANOMALY_KEYS: Final = {
    "history_nights": Key(_int(1, 366), 14, "trailing nights tonight's hand-off count is compared with"),
    "min_history_nights": Key(_int(1, 366), 7, "nights with a submit run needed before the count is checked"),
    "handoff_count_factor": Key(
        _number(1, 1000, above=True), 3.0, "normal count: between median / factor and median * factor"
    ),
    "max_error_rate_percent": Key(
        _number(0, 100), 5.0, "most hand-offs FlexFactor refused or never answered, percent of those sent"
    ),
    "max_refused_webhooks": Key(_int(0), 20, "most webhook deliveries refused in 24 hours"),
    "webhook_silence_hours": Key(_int(1, 24 * 30), 24, "hours without any webhook that raise an alert ..."),
    "pending_age_hours": Key(_int(1, 24 * 30), 24, "... while hand-offs have been SUBMITTED this long"),
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
    "anomalies": Key(
        _mapping(_ANOMALY_KEYS, AnomalyThresholds), {}, "checks after each nightly run, alerted and reported"
    ),
    "alert_command": Key(_optional(_text()), None, "shell command run with a failed job's message"),
}
