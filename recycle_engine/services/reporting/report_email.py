"""E-mail the day's report: once per day, retried with a bounded backoff, every outcome recorded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from recycle_engine.config import EmailSettings, Settings
from recycle_engine.domain.anomalies import Anomaly, AnomalyKind
from recycle_engine.errors import ConfigError, RecycleEngineError, ReportDeliveryError
from recycle_engine.ports import Clock
from recycle_engine.reports.email_message import report_message
from recycle_engine.services.nightly.anomalies import Alert, alert_and_record
from recycle_engine.services.reporting.report import ReportResult
from recycle_engine.storage.delivery_repo import claim_delivery, finish_delivery, record_failed_send

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["CHANNEL", "MAX_WAIT_S", "DeliveryResult", "ReportFiles", "Send", "email_report", "report_files"]

log = logging.getLogger(__name__)

CHANNEL = "email"
MAX_WAIT_S = 600.0  # the longest wait between two tries, so the job (and the jobs queued behind it) ends
Send = Callable[[EmailSettings, EmailMessage], list[str]]  # returns the recipients refused


@dataclass(frozen=True)
class DeliveryResult:
    state: str  # SENT, FAILED, or ALREADY_SENT (an earlier run sent the day; nothing was sent now)
    attempts: int  # sends tried by this call
    error: str | None = None  # the last failure
    refused: tuple[str, ...] = ()  # recipients the server refused while it took the others


@dataclass(frozen=True)
class ReportFiles:
    """The rendered report to send: its day, files, and the summary that becomes the mail's body."""

    day: date
    html_path: Path
    csv_path: Path
    subject: str
    body: str
    run_id: str | None


def report_files(result: ReportResult) -> ReportFiles:
    """What a rendered report e-mails: the summary as the body, its files attached."""
    day = result.day
    assert day is not None  # run_report always sets it
    return ReportFiles(
        day=day,
        html_path=result.html_path,
        csv_path=result.csv_path,
        subject=result.headline or f"Recovery report {day.isoformat()}",
        body=result.summary_text,
        run_id=result.run_id,
    )


def email_report(
    settings: Settings,
    engine: Engine,
    files: ReportFiles,
    *,
    clock: Clock,
    send: Send,
    alert: Alert | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Send the report of `files.day` to `reports.email.to`, unless that day was sent already.

    Tries `attempts` times, waiting `backoff_s`, then twice as long before each later try (at most
    MAX_WAIT_S). Each failure
    is recorded on the day's `report_deliveries` row; the last one closes it FAILED and records a
    REPORT_NOT_SENT anomaly (told to `alert` first). Raises ConfigError when e-mail is not configured and
    RecycleEngineError when the report files cannot be read; a failed send is a result, not an error."""
    email = settings.reports.email
    if email is None:
        raise ConfigError("reports.email is not set: add it to e-mail the report (README: e-mail)")
    now = clock.now()
    message = _message(email, files, now)
    with engine.begin() as conn:
        delivery_id, done = claim_delivery(
            conn, day=files.day, channel=CHANNEL, recipients=", ".join(email.to), run_id=files.run_id, now=now
        )
    if done is not None:
        log.info(
            "report already e-mailed", extra={"day": files.day.isoformat(), "sent_at": str(done.finished_at)}
        )
        return DeliveryResult("ALREADY_SENT", 0)
    error: str | None = None
    for attempt in range(1, email.attempts + 1):
        try:
            refused = send(email, message)
        except ReportDeliveryError as exc:
            error = str(exc)
            log.warning(
                "report e-mail failed",
                extra={
                    "day": files.day.isoformat(),
                    "attempt": attempt,
                    "of": email.attempts,
                    "error": error,
                },
            )
            with engine.begin() as conn:
                record_failed_send(conn, delivery_id, error=error)
            if attempt < email.attempts:
                sleep(min(email.backoff_s * 2 ** (attempt - 1), MAX_WAIT_S))
            continue
        with engine.begin() as conn:
            if refused:
                record_failed_send(conn, delivery_id, error=f"recipients refused: {', '.join(refused)}")
            finish_delivery(conn, delivery_id, sent=True, now=clock.now())
        log.info(
            "report e-mailed", extra={"day": files.day.isoformat(), "attempt": attempt, "to": len(email.to)}
        )
        return DeliveryResult("SENT", attempt, refused=tuple(refused))
    finished = clock.now()
    with engine.begin() as conn:
        finish_delivery(conn, delivery_id, sent=False, now=finished)
    reason = f"the report of {files.day} was not e-mailed after {email.attempts} tries: {error}"
    alert_and_record(
        engine,
        [Anomaly(AnomalyKind.REPORT_NOT_SENT, reason, subject=CHANNEL)],
        alert or (lambda _a: False),
        day=files.day,
        now=finished,
        run_id=files.run_id,
    )
    return DeliveryResult("FAILED", email.attempts, error)


def _message(email: EmailSettings, files: ReportFiles, now: datetime) -> EmailMessage:
    html_path, csv_path = files.html_path, files.csv_path
    try:
        html, csv = html_path.read_bytes(), csv_path.read_bytes()
    except OSError as exc:
        raise RecycleEngineError(f"cannot read the report to e-mail it: {exc.strerror or exc}") from exc
    return report_message(
        subject=files.subject,
        body=files.body,
        sender=email.from_address,
        recipients=email.to,
        sent_at=now,
        html_name=html_path.name,
        html=html,
        csv_name=csv_path.name,
        csv=csv,
    )
