"""The nightly recycle run: due attempts on processors, FlexFactor hand-offs claimed, then sent."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.ports import Clock, FlexFactorGateway, ProcessorGateway
from recycle_engine.services.job_runs import finish_run, start_run, wall_time
from recycle_engine.services.nightly.anomalies import count_unsent
from recycle_engine.services.nightly.claim_process import ClaimProcess, can_claim_in_process
from recycle_engine.services.nightly.claiming import NightClaim, Progress, claim_all
from recycle_engine.services.nightly.due_attempts import DuePlan, continue_ladders_after, due_rows, plan_due
from recycle_engine.services.nightly.handoff_sending import SendReport, resolve_unanswered, send_pending
from recycle_engine.services.nightly.processor_charges import release_stale_charges
from recycle_engine.services.reporting.rollups import refresh_after_run
from recycle_engine.storage.profile_versions import ProfileBook

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["DuePlan", "SubmitResult", "due_rows", "run_submit"]

log = logging.getLogger(__name__)


@dataclass
class SubmitResult:
    run_id: str | None
    counts: Counter[str] = field(default_factory=Counter)
    preview: list[dict[str, Any]] = field(default_factory=list)  # dry run: the first planned rows
    by_slot: Counter[tuple[str, str]] = field(default_factory=Counter)  # (slot, gateway) -> count
    amounts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (gateway, currency) -> minor units


def run_submit(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    processors: Mapping[str, ProcessorGateway],
    *,
    night: Night,
    send_clock: Clock,
    dry_run: bool = False,
    progress: Progress | None = None,
    preview_rows: int = 20,
    clock: Clock | None = None,
) -> SubmitResult:
    """The nightly run of `night`: settle lost answers, run due attempts, hand off, record.

    Records are stamped with `night.at` (so a replayed night reads as that night); `clock` (when given,
    else `night.at`) stamps the job run's start and finish. A night that carries a run id belongs to a
    caller that owns that job run (several workers share one): it is neither started nor finished
    here; otherwise the run records itself, INCOMPLETE with an UNSENT anomaly when hand-offs are left
    unsent (counts["unsent"]). FlexFactor's window of a hand-off counts from its first send by
    `send_clock`, which has no default: a replayed night still sends now (`bootstrap.Run.submit` wires
    the real one)."""
    if dry_run:
        return _dry_run(settings, engine, today=night.today, preview_rows=preview_rows)
    owned = night.run_id is None  # a night with a run id belongs to a caller that records its run
    at = night.at
    if owned:
        night = night.started(start_run(engine, "submit", logical_at=at, now=wall_time(clock, night)))
    run_id = night.job_run
    result = SubmitResult(run_id)
    try:
        _night(
            settings,
            engine,
            clients,
            processors,
            night,
            result=result,
            progress=progress,
            send_clock=send_clock,
        )
        if not owned:
            return result
        refresh_after_run(engine, settings.timezone, now=at, run_id=run_id)
        unsent = count_unsent(settings, engine, result.counts, job="submit", at=at, run_id=run_id)
    except Exception as exc:
        if owned:
            error = f"{type(exc).__name__}: {exc}"
            finish_run(engine, run_id, now=wall_time(clock, night), counts=dict(result.counts), error=error)
        raise
    finish_run(engine, run_id, now=wall_time(clock, night), counts=dict(result.counts), incomplete=unsent > 0)
    return result


def _night(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    processors: Mapping[str, ProcessorGateway],
    night: Night,
    *,
    result: SubmitResult,
    progress: Progress | None,
    send_clock: Clock,
) -> None:
    """Settle lost answers, then claim every due attempt (processor attempts run in the claim) while a
    second thread sends the hand-offs already claimed."""
    at, run_id = night.at, night.job_run
    counts = result.counts
    http = settings.http
    # Long enough for one call with all its retries, as FlexFactor's timeouts allow; lookups and sends
    # that a dead worker leased are free again this long after it claimed them.
    lease = timedelta(seconds=(http.connect_timeout_s + http.read_timeout_s) * (http.max_retries + 1) + 60)
    window = timedelta(days=23)
    lookups = resolve_unanswered(engine, clients, now=at, window=window, run_id=run_id, lease=lease)
    counts.update(
        {
            "adopted": lookups.adopted,
            "queued_resend": lookups.resent,
            "lookup_failed": lookups.failed,
            "lookup_errors": lookups.errors,
        }
    )
    # Processor charges a dead run left, or whose answer was lost: back on the ladder, looked up first.
    if stale := release_stale_charges(engine, at=at, now=at):
        counts["charges_to_look_up"] = stale
    batch = settings.batching.batch_size
    # Sending starts with the first claimed chunk: the HTTP pool works while later chunks are planned
    # and written. Every hand-off is committed before its call, so the overlap changes no guarantee.
    to_claim = NightClaim(settings, engine, processors, night)
    claim = ClaimProcess(to_claim) if can_claim_in_process(engine) else None
    claiming_here = threading.Event()
    if claim is None:
        claiming_here.set()
    log.info("claiming due attempts", extra={"in": "a process of its own" if claim else "a thread"})

    def on_batch(report: SendReport, _results: object) -> None:
        if progress:
            progress("sent", report.sent)
            if claim is not None:
                progress("claimed", claim.claimed)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="send") as sender:
        sending = sender.submit(
            send_pending,
            engine,
            clients,
            now=at,
            run_id=run_id,
            batch_size=batch,
            concurrency=settings.batching.concurrency,
            lease=lease,
            on_batch=on_batch if progress else None,
            after_record=continue_ladders_after(settings, night),
            claiming=claim if claim is not None else claiming_here,
            skip_gateways={g.id for g in settings.flexfactor_gateways()} - set(clients),
            send_clock=send_clock,
        )
        try:
            if claim is not None:
                counts.update(claim.result())
            else:
                claim_all(to_claim, counts=counts, progress=progress)
        except BaseException:
            if claim is not None:
                claim.stop()
            raise
        finally:
            claiming_here.clear()
        claimed_s = time.monotonic() - started
        log.info(
            "due attempts claimed", extra={"selected": counts["selected"], "seconds": round(claimed_s, 1)}
        )
        report = sending.result()
        log.info(
            "hand-offs sent",
            extra={"sent": report.sent, "seconds": round(time.monotonic() - started, 1)},
        )
    counts.update(report.as_counts())
    if report.skipped_gateways:
        counts["skipped_gateways"] = len(report.skipped_gateways)


def _dry_run(settings: Settings, engine: Engine, *, today: date, preview_rows: int) -> SubmitResult:
    """What tonight would do, read-only: counts by slot and gateway, amounts, the first rows."""
    result = SubmitResult(None)
    after: tuple[date, str] | None = None
    with engine.connect() as conn:
        book = ProfileBook(conn, settings.recycle_profiles)
        while True:
            rows = due_rows(conn, today=today, limit=settings.batching.batch_size, after=after)
            for row in rows:
                result.counts["selected"] += 1
                try:
                    plan = plan_due(settings, row, book)
                except (ValueError, KeyError) as exc:
                    result.counts["would_error"] += 1
                    log.warning(
                        "attempt cannot be planned", extra={"subscription": row.id, "reason": str(exc)}
                    )
                    continue
                if plan.planned is None or plan.gateway_id is None:
                    result.counts["would_fail"] += 1
                    continue
                kind = "flexfactor" if settings.gateways[plan.gateway_id].is_flexfactor else "processor"
                result.counts[f"would_{kind}"] += 1
                if plan.holdout:
                    result.counts["would_holdout"] += 1
                result.by_slot[(plan.planned.slot.value, plan.gateway_id)] += 1
                result.amounts[(plan.gateway_id, row.currency)] += plan.planned.amount_minor
                if len(result.preview) < preview_rows:
                    result.preview.append(
                        {
                            "subscription": row.id,
                            "attempt": plan.planned.attempt,
                            "slot": plan.planned.slot.value,
                            "gateway": plan.gateway_id,
                            "amount_minor": plan.planned.amount_minor,
                            "currency": row.currency,
                            "due_on": plan.planned.due_on.isoformat(),
                        }
                    )
            if not rows:
                break
            after = (rows[-1].next_attempt_on, rows[-1].id)
    return result
