"""What `recycle-engine status` shows: last job runs, open hand-offs by age, outcomes waiting to be
applied, schedule, scheduler roles."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from recycle_engine.domain.anomalies import INBOX_STALE_AFTER
from recycle_engine.storage import crm_repo, status_queries, webhook_inbox
from recycle_engine.storage.delivery_repo import DeliveryRow, recent_deliveries

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "ACTIVE_LEASE",
    "AGE_BUCKETS",
    "JOBSTORE_TABLE",
    "STANDBY_PREFIX",
    "JobSchedule",
    "RunSummary",
    "SchedulerRole",
    "Status",
    "gather_status",
    "render_status",
]

ACTIVE_LEASE: Final = "scheduler"  # scheduler_leases.name of the one active scheduler
STANDBY_PREFIX: Final = "scheduler:standby:"  # + a short id: one heartbeat row per waiting standby
JOBSTORE_TABLE: Final = "apscheduler_jobs"  # APScheduler's persistent job store (it creates the table)
OPEN_STATES: Final = ("PENDING", "SUBMITTED")
# (label, first day, last day) of a hand-off's age in whole days since it was created.
AGE_BUCKETS: Final[tuple[tuple[str, int, int | None], ...]] = (
    ("0-3", 0, 3),
    ("4-7", 4, 7),
    ("8-14", 8, 14),
    ("15-21", 15, 21),
    (">21", 22, None),
)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    job: str
    status: str  # RUNNING, SUCCEEDED, INCOMPLETE, FAILED, ABANDONED or MISSED
    logical_at: datetime
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, Any]
    error: str | None


@dataclass(frozen=True)
class JobSchedule:
    job: str
    cron: str
    next_fire_at: datetime | None  # from the cron settings
    stored_next_run_at: datetime | None  # what the job store holds; earlier means a catch-up is pending


@dataclass(frozen=True)
class SchedulerRole:
    role: str  # "active" or "standby"
    holder: str  # host:pid:id
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Status:
    now: datetime
    last_runs: dict[str, RunSummary]  # the latest run of each job, by job name
    recent_runs: list[RunSummary]  # newest first
    pending_by_age: dict[str, int]  # every AGE_BUCKETS label, in order
    schedule: list[JobSchedule]
    schedulers: list[SchedulerRole]  # live leases only: the active one first, then standbys
    # Final outcomes recorded but not yet applied to orders and subscriptions, and the oldest one's time.
    outcomes_to_apply: int = 0
    oldest_outcome_at: datetime | None = None
    # Processor (NMI) charges whose answer was lost: each is looked up by order id before any resend.
    charges_unanswered: int = 0
    # The latest report e-mails, newest day first: a FAILED one needs someone (`run report --email`).
    deliveries: list[DeliveryRow] = field(default_factory=list)
    # Webhook deliveries acknowledged to FlexFactor and not yet applied by `serve`, and the oldest's arrival.
    webhooks_waiting: int = 0
    oldest_webhook_at: datetime | None = None
    # Deliveries of the change outbox to the CRM, by state (empty without `crm push`).
    crm_deliveries: dict[str, int] = field(default_factory=dict)
    crm_rejects: int = 0

    @property
    def active(self) -> SchedulerRole | None:
        return next((s for s in self.schedulers if s.role == "active"), None)


def gather_status(
    engine: Engine,
    *,
    now: datetime,
    crons: Mapping[str, str],
    next_fire_times: Mapping[str, datetime | None],
    recent: int = 10,
) -> Status:
    """Read the status at `now` (aware UTC); `next_fire_times` come from the job triggers, by job name."""
    with engine.connect() as conn:
        last_runs = {run.job: run for run in _latest_per_job(conn)}
        recent_runs = _recent(conn, recent)
        pending = _pending_by_age(conn, now)
        stored = _stored_next_runs(conn)
        schedulers = _live_leases(conn, now)
        queued, oldest = status_queries.outcome_queue_size(conn)
        unanswered = status_queries.unanswered_charge_count(conn)
        deliveries = recent_deliveries(conn)
        inbox = webhook_inbox.backlog(conn)
        crm_deliveries = crm_repo.delivery_counts(conn)
        rejects = status_queries.crm_reject_count(conn)
    schedule = [
        JobSchedule(job, cron, next_fire_times.get(job), stored.get(job)) for job, cron in crons.items()
    ]
    return Status(
        now,
        last_runs,
        recent_runs,
        pending,
        schedule,
        schedulers,
        int(queued),
        oldest,
        int(unanswered),
        deliveries,
        inbox.waiting,
        inbox.oldest_received_at,
        crm_deliveries,
        int(rejects),
    )


def _summary(row: Any) -> RunSummary:
    counts: dict[str, Any] = json.loads(row.counts) if row.counts else {}
    return RunSummary(
        row.id, row.job, row.status, row.logical_at, row.started_at, row.finished_at, counts, row.error
    )


def _latest_per_job(conn: Connection) -> list[RunSummary]:
    return [_summary(row) for row in status_queries.latest_run_per_job(conn)]


def _recent(conn: Connection, limit: int) -> list[RunSummary]:
    return [_summary(row) for row in status_queries.recent_runs(conn, limit)]


def _pending_by_age(conn: Connection, now: datetime) -> dict[str, int]:
    found = status_queries.open_handoffs_by_age(conn, now, open_states=OPEN_STATES, buckets=AGE_BUCKETS)
    return {label: found.get(label, 0) for label, _first, _last in AGE_BUCKETS}


def _stored_next_runs(conn: Connection) -> dict[str, datetime | None]:
    stored = status_queries.stored_next_run_times(conn, JOBSTORE_TABLE)
    if stored is None:
        return {}  # no scheduler has been active on this database yet
    return {job_id: None if ts is None else datetime.fromtimestamp(ts, UTC) for job_id, ts in stored.items()}


def _live_leases(conn: Connection, now: datetime) -> list[SchedulerRole]:
    rows = status_queries.live_scheduler_leases(
        conn, now, active_name=ACTIVE_LEASE, standby_prefix=STANDBY_PREFIX
    )
    roles = [
        SchedulerRole(
            "active" if row.name == ACTIVE_LEASE else "standby",
            row.holder,
            row.acquired_at,
            row.expires_at,
        )
        for row in rows
    ]
    return sorted(roles, key=lambda r: r.role != "active")


def render_status(status: Status, timezone: ZoneInfo) -> list[str]:
    """The status as text lines, times in the settings timezone with their offset."""

    def at(value: datetime | None) -> str:
        return value.astimezone(timezone).isoformat(timespec="seconds") if value else "-"

    lines = ["scheduler:"]
    if not status.schedulers:
        lines.append("  no scheduler is running (no live lease)")
    for s in status.schedulers:
        lines.append(f"  {s.role:8} {s.holder}  since {at(s.acquired_at)}  lease until {at(s.expires_at)}")
    lines.append("jobs:")
    for job in status.schedule:
        pending = ""
        if job.stored_next_run_at and job.stored_next_run_at <= status.now:
            pending = f"  (catch-up of {at(job.stored_next_run_at)} pending)"
        lines.append(f"  {job.job:10} cron '{job.cron}'  next {at(job.next_fire_at)}{pending}")
        last = status.last_runs.get(job.job)
        lines.append(f"  {'':10} last {_run_line(last, at) if last else 'never ran'}")
    lines.append("recent runs:")
    lines.extend(f"  {run.job:10} {_run_line(run, at)}" for run in status.recent_runs)
    if not status.recent_runs:
        lines.append("  none")
    lines.append("pending hand-offs by age (days):")
    lines.append("  " + "  ".join(f"{label}: {n}" for label, n in status.pending_by_age.items()))
    oldest = f" (oldest {at(status.oldest_outcome_at)})" if status.oldest_outcome_at else ""
    lines.append(f"outcomes waiting to be applied: {status.outcomes_to_apply}{oldest}")
    if status.charges_unanswered:
        lines.append(
            f"processor charges with a lost answer: {status.charges_unanswered} "
            "(looked up by order id on the next run, before anything is sent again)"
        )
    if status.deliveries:
        lines.append("report e-mails:")
        lines.extend(f"  {_delivery_line(d, at)}" for d in status.deliveries)
    if status.webhooks_waiting:
        stuck = (
            status.oldest_webhook_at is not None
            and status.now - status.oldest_webhook_at >= INBOX_STALE_AFTER
        )
        lines.append(
            f"webhooks acknowledged, not yet applied: {status.webhooks_waiting} "
            f"(oldest {at(status.oldest_webhook_at)})"
            + ("  NOT DRAINING: is `serve` running? it applies them when it starts" if stuck else "")
        )
    if status.crm_deliveries:
        shown = ", ".join(f"{state.lower()} {n}" for state, n in sorted(status.crm_deliveries.items()))
        lines.append(f"changes to the CRM: {shown}")
        refused = status.crm_deliveries.get("REFUSED", 0) + status.crm_deliveries.get("FAILED", 0)
        if refused:
            lines.append(
                f"  {refused} refused or failed: `recycle-engine crm deliveries --state REFUSED --state FAILED`"
            )
    if status.crm_rejects:
        lines.append(
            f"CRM rows rejected by the import checks: {status.crm_rejects} (`recycle-engine crm rejects`)"
        )
    return lines


def _delivery_line(d: DeliveryRow, at: Callable[[datetime | None], str]) -> str:
    tries = f"{d.attempts} {'try' if d.attempts == 1 else 'tries'}"
    text = f"{d.day.isoformat()}  {d.state:8} to {d.recipients}  ({tries}, finished {at(d.finished_at)})"
    if d.state != "SENT" and d.last_error:
        text += (
            f"  error: {d.last_error.splitlines()[0][:200]}; send it with `run report --date {d.day} --email`"
        )
    return text


def _run_line(run: RunSummary, at: Callable[[datetime | None], str]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))
    text = f"{run.status:10} {run.run_id}  logical {at(run.logical_at)}  finished {at(run.finished_at)}"
    if counts:
        text += f"  [{counts}]"
    if run.error:
        text += f"  error: {run.error.splitlines()[0][:200]}"
    return text
