"""Anomaly checks after a nightly run, over plain numbers: hand-off volume, errors, webhooks, missed jobs."""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final

__all__ = [
    "INBOX_STALE_AFTER",
    "Anomaly",
    "AnomalyKind",
    "AnomalyThresholds",
    "NightFacts",
    "check_night_facts",
    "error_rate_anomaly",
    "handoff_count_anomaly",
    "missed_job_anomalies",
    "refused_webhooks_anomaly",
    "unsent_anomaly",
    "unresolved_handoffs_anomaly",
    "webhook_backlog_anomaly",
    "webhook_silence_anomaly",
]


class AnomalyKind(enum.StrEnum):
    """What looked wrong after a night."""

    HANDOFF_COUNT = "HANDOFF_COUNT"  # tonight's hand-offs far from the trailing median
    ERROR_RATE = "ERROR_RATE"  # too many hand-offs FlexFactor refused or never answered
    REFUSED_WEBHOOKS = "REFUSED_WEBHOOKS"  # too many webhooks refused (signature, age, body)
    WEBHOOK_SILENCE = "WEBHOOK_SILENCE"  # no webhook for hours while hand-offs wait on FlexFactor
    JOB_NOT_RUN = "JOB_NOT_RUN"  # a scheduled job has no successful run for its last scheduled day
    UNSENT = "UNSENT"  # a run ended with hand-offs never sent (FlexFactor rate limited or unreachable)
    UNRESOLVED_HANDOFFS = "UNRESOLVED_HANDOFFS"  # sent, answer lost, and no look-up settles them
    REPORT_NOT_SENT = "REPORT_NOT_SENT"  # the report could not be e-mailed after every retry
    WEBHOOK_BACKLOG = "WEBHOOK_BACKLOG"  # webhooks acknowledged but not applied: the inbox is not draining


@dataclass(frozen=True)
class AnomalyThresholds:
    """The `anomalies:` block of settings.yaml."""

    history_nights: int = 14  # trailing nights the hand-off count is compared with
    min_history_nights: int = 7  # fewer nights with a submit run: no volume check yet
    handoff_count_factor: float = 3.0  # normal range is [median / factor, median * factor]
    max_error_rate_percent: float = 5.0  # (refused + unanswered) / sent
    max_refused_webhooks: int = 20  # refused deliveries in the 24 hours before the check
    webhook_silence_hours: int = 24  # no delivery for this long ...
    pending_age_hours: int = 24  # ... while hand-offs have been SUBMITTED for at least this long


@dataclass(frozen=True)
class Anomaly:
    kind: AnomalyKind
    reason: str  # one line, as the alert hook and the report show it
    subject: str = ""  # the job, for JOB_NOT_RUN and UNSENT


@dataclass(frozen=True)
class NightFacts:
    """What the database says about one night, as plain values (the service gathers them)."""

    handoffs: int  # hand-offs made on the night's local day (cascades excluded)
    history: Sequence[int]  # hand-offs made on each trailing night that had a successful submit run
    sent: int  # of tonight's hand-offs, those a request went out for
    errors: int  # of those, FAILED (refused) or with an answer lost
    refused_webhooks: int  # deliveries refused in the 24 hours before the check
    last_webhook_at: datetime | None  # the latest delivery, accepted or not
    old_submitted: int  # hand-offs SUBMITTED for at least pending_age_hours
    jobs_due: Mapping[str, date] = field(default_factory=dict)  # job -> the local day it was last due
    jobs_succeeded: Mapping[str, bool] = field(default_factory=dict)  # job -> a run for that day succeeded
    unresolved: int = 0  # hand-offs sent at least pending_age_hours ago and still PENDING (answer lost)
    inbox_waiting: int = 0  # webhook deliveries acknowledged and not yet applied
    inbox_oldest_at: datetime | None = None  # when the oldest of them arrived


def handoff_count_anomaly(handoffs: int, history: Sequence[int], t: AnomalyThresholds) -> Anomaly | None:
    """Tonight's count outside [median / factor, median * factor] of the trailing nights.

    Quiet with fewer than `min_history_nights` nights, and when the median is 0 (no scale to compare)."""
    nights = list(history)[-t.history_nights :]
    if len(nights) < t.min_history_nights:
        return None
    median = float(statistics.median(nights))
    if median == 0:
        return None
    low, high = median / t.handoff_count_factor, median * t.handoff_count_factor
    if low <= handoffs <= high:
        return None
    return Anomaly(
        AnomalyKind.HANDOFF_COUNT,
        f"{handoffs} hand-offs tonight, outside {low:.1f}..{high:.1f} "
        f"(median {median:g} over the last {len(nights)} nights)",
    )


def error_rate_anomaly(sent: int, errors: int, t: AnomalyThresholds) -> Anomaly | None:
    if sent == 0:
        return None
    rate = 100.0 * errors / sent
    if rate <= t.max_error_rate_percent:
        return None
    return Anomaly(
        AnomalyKind.ERROR_RATE,
        f"FlexFactor error rate {rate:.1f} % ({errors} refused or unanswered of {sent} sent) "
        f"is above {t.max_error_rate_percent:g} %",
    )


def refused_webhooks_anomaly(refused: int, t: AnomalyThresholds) -> Anomaly | None:
    if refused <= t.max_refused_webhooks:
        return None
    return Anomaly(
        AnomalyKind.REFUSED_WEBHOOKS,
        f"{refused} webhooks refused in the last 24 hours (more than {t.max_refused_webhooks})",
    )


def webhook_silence_anomaly(
    last_webhook_at: datetime | None, old_submitted: int, now: datetime, t: AnomalyThresholds
) -> Anomaly | None:
    """No delivery for `webhook_silence_hours` while hand-offs have waited `pending_age_hours` or more."""
    if old_submitted == 0:
        return None
    silence = timedelta(hours=t.webhook_silence_hours)
    if last_webhook_at is not None and now - last_webhook_at < silence:
        return None
    since = "ever" if last_webhook_at is None else f"since {last_webhook_at.isoformat(timespec='minutes')}"
    return Anomaly(
        AnomalyKind.WEBHOOK_SILENCE,
        f"no webhook received {since} (over {t.webhook_silence_hours} h) while {old_submitted} "
        f"hand-offs are SUBMITTED for over {t.pending_age_hours} h",
    )


# `serve` applies a delivery within seconds of its acknowledgement; one waiting this long is stuck.
INBOX_STALE_AFTER: Final = timedelta(minutes=15)


def webhook_backlog_anomaly(waiting: int, oldest_at: datetime | None, now: datetime) -> Anomaly | None:
    """Webhook deliveries acknowledged at least INBOX_STALE_AFTER ago and still not applied."""
    if waiting == 0 or oldest_at is None or now - oldest_at < INBOX_STALE_AFTER:
        return None
    return Anomaly(
        AnomalyKind.WEBHOOK_BACKLOG,
        f"{waiting} webhooks acknowledged but not applied, the oldest since "
        f"{oldest_at.isoformat(timespec='minutes')}: is `serve` running? it applies them when it starts",
    )


def unresolved_handoffs_anomaly(unresolved: int, t: AnomalyThresholds) -> Anomaly | None:
    """Hand-offs whose answer was lost stay unresolved: the "was it received?" look-up keeps failing."""
    if unresolved == 0:
        return None
    return Anomaly(
        AnomalyKind.UNRESOLVED_HANDOFFS,
        f"{unresolved} hand-offs sent over {t.pending_age_hours} h ago are still unresolved (answer lost, "
        "look-ups not settling them): see the run's lookup_errors and the LOOKUP_ERROR events",
    )


def missed_job_anomalies(due: Mapping[str, date], succeeded: Mapping[str, bool]) -> list[Anomaly]:
    """A job with no successful run for the local day it was last due."""
    return [
        Anomaly(
            AnomalyKind.JOB_NOT_RUN,
            f"job {job} has no successful run for its scheduled day {due_on.isoformat()}",
            subject=job,
        )
        for job, due_on in sorted(due.items())
        if not succeeded.get(job, False)
    ]


def unsent_anomaly(job: str, unsent_by_gateway: Mapping[str, int]) -> Anomaly | None:
    """A run of `job` ended with hand-offs still waiting to be sent (never sent), per gateway."""
    total = sum(unsent_by_gateway.values())
    if total == 0:
        return None
    where = ", ".join(f"{g} {n}" for g, n in sorted(unsent_by_gateway.items()))
    return Anomaly(
        AnomalyKind.UNSENT,
        f"{job} ended with {total} hand-offs never sent ({where}); run reconcile to send them",
        subject=job,
    )


def check_night_facts(facts: NightFacts, t: AnomalyThresholds, *, now: datetime) -> list[Anomaly]:
    """Every anomaly of the night, in a fixed order."""
    found = [
        handoff_count_anomaly(facts.handoffs, facts.history, t),
        error_rate_anomaly(facts.sent, facts.errors, t),
        refused_webhooks_anomaly(facts.refused_webhooks, t),
        webhook_silence_anomaly(facts.last_webhook_at, facts.old_submitted, now, t),
        unresolved_handoffs_anomaly(facts.unresolved, t),
        webhook_backlog_anomaly(facts.inbox_waiting, facts.inbox_oldest_at, now),
    ]
    return [a for a in found if a is not None] + missed_job_anomalies(facts.jobs_due, facts.jobs_succeeded)
