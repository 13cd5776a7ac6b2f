"""The nightly recycle run: due attempts on processors, FlexFactor hand-offs claimed, then sent."""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    Row,
    Select,
    String,
    bindparam,
    insert,
    select,
    tuple_,
    update,
)

from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.domain.declines import DeclineType, OrderType, classify
from recycle_engine.domain.holdout import Arm, in_holdout
from recycle_engine.domain.ladder import PlannedAttempt, local_date, next_attempt
from recycle_engine.domain.outcomes import FailureCause, PurchaseStatus, next_bill_date, price_after_approval
from recycle_engine.domain.profiles import RecycleProfile
from recycle_engine.domain.states import Event, OutcomeSource, Source, State
from recycle_engine.errors import InputError
from recycle_engine.ports import ChargeRequest, ChargeResult, FlexFactorGateway, ProcessorGateway
from recycle_engine.services.handoff_sending import SendReport, SendResult, resolve_unanswered, send_pending
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.services.rollups import refresh_after_run
from recycle_engine.settings import Settings
from recycle_engine.storage.handoff_repo import insert_events
from recycle_engine.storage.holdout_repo import assignment_row, record_assignments
from recycle_engine.storage.models import Attempt, Decline, Handoff, Subscription
from recycle_engine.storage.profile_versions import ProfileBook
from recycle_engine.storage.subscription_repo import (
    Approval,
    LadderStep,
    RecycleFailure,
    apply_approvals,
    apply_failures,
    apply_ladder_steps,
    record_changes,
)

__all__ = ["DuePlan", "SubmitResult", "due_rows", "run_submit"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


@dataclass
class SubmitResult:
    run_id: str | None
    counts: Counter[str] = field(default_factory=Counter)
    preview: list[dict[str, Any]] = field(default_factory=list)  # dry run: the first planned rows
    by_slot: Counter[tuple[str, str]] = field(default_factory=Counter)  # (slot, gateway) -> count
    amounts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (gateway, currency) -> minor units


@dataclass(frozen=True)
class DuePlan:
    """One due subscription and what tonight does with it."""

    row: Row[Any]
    planned: PlannedAttempt | None  # None: the ladder is exhausted
    gateway_id: str | None
    profile: RecycleProfile | None = None  # the schedule version the subscription follows
    holdout: bool = False  # the slot names FlexFactor, but this subscription is in the holdout group


_SUBSCRIPTION_COLUMNS = (
    Subscription.id,
    Subscription.order_id,
    Subscription.product_id,
    Subscription.billing_cycle,
    Subscription.billing_interval_days,
    Subscription.price_minor,
    Subscription.currency,
    Subscription.shippable,
    Subscription.status,
    Subscription.recycle_profile_id,
    Subscription.recycle_profile_version,
    Subscription.recycle_transaction_id,
    Subscription.recycle_declined_gateway_id,
    Subscription.recycle_original_minor,
    Subscription.recycle_last_attempt,
    Subscription.recycle_last_ran_on,
    Subscription.next_attempt,
    Subscription.next_attempt_on,
)
_DECLINE_COLUMNS = (
    Decline.declined_at,
    Decline.utc_offset_minutes,
    Decline.response_code,
    Decline.response_text,
    Decline.avs_result,
    Decline.cvv_result,
    Decline.cavv_result,
    Decline.customer_id,
    Decline.email,
    Decline.phone,
    Decline.first_name,
    Decline.last_name,
    Decline.address1,
    Decline.address2,
    Decline.city,
    Decline.state,
    Decline.zip,
    Decline.country,
    Decline.ip_address,
    Decline.card_token,
    Decline.card_bin,
    Decline.card_last4,
    Decline.card_exp_month,
    Decline.card_exp_year,
    Decline.card_brand,
    Decline.card_type,
)
_DUE_COLUMNS = (*_SUBSCRIPTION_COLUMNS, *_DECLINE_COLUMNS)


def due_rows(
    conn: Connection, *, today: date, limit: int, after: tuple[date, str] | None = None, lock: bool = False
) -> list[Row[Any]]:
    """Recycling subscriptions due by `today` (local date) with no open hand-off, oldest first."""
    stmt = _due_page(limit, keyset=after is not None, lock=lock and conn.dialect.name == "postgresql")
    params: dict[str, Any] = {"due_by": today}
    if after is not None:
        params |= {"after_on": after[0], "after_id": after[1]}
    return list(conn.execute(stmt, params).all())


@functools.lru_cache(maxsize=16)
def _due_page(limit: int, *, keyset: bool, lock: bool) -> Select[Any]:
    # Built once per shape, values bound at run time: building it costs more than a page takes to
    # read once a night has a hundred pages.
    # Pick (and lock) a page of subscriptions first, then join their declines: a one-table page walks
    # the (status, next_attempt_on, id) index in order and stops at `limit`, whereas a joined page
    # lets the planner hash-join and sort every due row for each page (the whole night, once a page).
    # The locked rows carry their own columns out, so a row re-checked under the lock is read as it is
    # now; declines are never updated. The outer join keeps a subscription whose decline is missing in
    # the page (the claim books it as an error), so a short page still means the night is done.
    page = (
        select(*_SUBSCRIPTION_COLUMNS)
        .where(
            Subscription.status == PurchaseStatus.RECYCLE_BILLING.value,
            Subscription.next_attempt_on <= bindparam("due_by", type_=Date()),
            Subscription.open_handoff_id.is_(None),
        )
        .order_by(Subscription.next_attempt_on, Subscription.id)
        .limit(limit)
    )
    if keyset:
        after = tuple_(bindparam("after_on", type_=Date()), bindparam("after_id", type_=String()))
        page = page.where(tuple_(Subscription.next_attempt_on, Subscription.id) > after)
    if lock:
        page = page.with_for_update(of=Subscription, skip_locked=True)
    due = page.subquery("due")
    return (
        select(due, *_DECLINE_COLUMNS)
        .outerjoin(Decline, Decline.transaction_id == due.c.recycle_transaction_id)
        .order_by(due.c.next_attempt_on, due.c.id)
    )


def _plan(settings: Settings, row: Row[Any], book: ProfileBook) -> DuePlan:
    if row.declined_at is None:
        # The outer join in due_rows found no decline: nothing to charge or hand off from.
        raise KeyError(f"decline {row.recycle_transaction_id} of subscription {row.id} is not stored")
    profile = book.profile(row.recycle_profile_id, row.recycle_profile_version)
    if profile is None:
        return DuePlan(row, None, None)
    planned = next_attempt(
        profile,
        last_attempt=row.recycle_last_attempt,
        last_ran_on=row.recycle_last_ran_on,
        original_minor=row.recycle_original_minor,
        currency=row.currency,
    )
    gateway = None if planned is None else (planned.gateway_id or row.recycle_declined_gateway_id)
    named = settings.gateways.get(gateway or "")
    # A holdout subscription runs a FlexFactor slot on the declining gateway, as a slot without one.
    holdout = bool(named and named.is_flexfactor and in_holdout(row.id, profile.holdout_percent))
    if holdout:
        gateway = row.recycle_declined_gateway_id
    return DuePlan(row, planned, gateway, profile, holdout)


def _next_step(profile: RecycleProfile, row: Any, attempt: int, ran_on: date) -> LadderStep | RecycleFailure:
    """After a declined attempt (or a failed hand-off): the next attempt, or the end of the ladder."""
    nxt = next_attempt(
        profile,
        last_attempt=attempt,
        last_ran_on=ran_on,
        original_minor=row.recycle_original_minor,
        currency=row.currency,
    )
    if nxt is None:
        return RecycleFailure(row.id, FailureCause.ALL_ATTEMPTS_DECLINED.value)
    return LadderStep(row.id, attempt, ran_on, nxt.attempt, nxt.due_on)


def _book(step: LadderStep | RecycleFailure, steps: list[LadderStep], failures: list[RecycleFailure]) -> None:
    """File a ladder outcome where its writer will find it."""
    if isinstance(step, RecycleFailure):
        failures.append(step)
    else:
        steps.append(step)


def _handoff_request(
    settings: Settings, plan: DuePlan, *, handoff_id: str, key: str, at: datetime
) -> HandoffRequest:
    row, planned = plan.row, plan.planned
    assert planned is not None
    assert plan.gateway_id is not None
    ff = settings.gateways[plan.gateway_id].flexfactor
    assert ff is not None
    declining = settings.gateways.get(row.recycle_declined_gateway_id)
    missing = [
        n
        for n in ("card_token", "card_last4", "card_exp_month", "card_exp_year")
        if getattr(row, n) in (None, "")
    ]
    if missing:
        raise InputError(f"subscription {row.id}: missing {', '.join(missing)}")
    return HandoffRequest(
        source=Source.RECYCLE,
        submission_id=handoff_id,
        idempotency_key=key,
        mid=ff.mid,
        site_id=ff.site_id,
        expiry_at=at + timedelta(days=ff.expiry_days),
        amount_minor=planned.amount_minor,
        currency=row.currency,
        transaction_id=row.recycle_transaction_id,
        declined_at=row.declined_at,
        response_code=row.response_code or "",
        response_text=row.response_text or "",
        processor_type=declining.processor_type if declining else "unknown",
        card_token=row.card_token,
        card_bin=row.card_bin or "",
        card_last4=row.card_last4,
        card_exp_month=int(row.card_exp_month),
        card_exp_year=int(row.card_exp_year),
        card_brand=row.card_brand or "",
        card_type=row.card_type or "",
        avs=row.avs_result or "",
        cvv=row.cvv_result or "",
        cavv=row.cavv_result or "",
        customer_id=row.customer_id or "",
        email=row.email or "",
        phone=row.phone or "",
        first_name=row.first_name or "",
        last_name=row.last_name or "",
        address1=row.address1 or "",
        address2=row.address2 or "",
        city=row.city or "",
        state=row.state or "",
        zip=row.zip or "",
        country=row.country or "",
        ip_address=row.ip_address or "",
        purchase_id=row.id,
        billing_interval_days=row.billing_interval_days,
        regular_price_minor=row.price_minor,
        billing_cycle=row.billing_cycle,
        total_payments=None,
    )


class _Chunk:
    """Writes collected while planning one chunk, flushed in the claim transaction."""

    def __init__(self) -> None:
        self.handoffs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.handed: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.steps: list[LadderStep] = []
        self.failures: list[RecycleFailure] = []
        self.approvals: list[Approval] = []
        self.moved: list[dict[str, Any]] = []
        self.errors: list[tuple[str, str]] = []
        self.assignments: list[dict[str, Any]] = []


def _claim_chunk(
    conn: Connection,
    settings: Settings,
    processors: Mapping[str, ProcessorGateway],
    *,
    today: date,
    at: datetime,
    now: datetime,
    run_id: str,
    limit: int,
    counts: Counter[str],
) -> int:
    rows = due_rows(conn, today=today, limit=limit, lock=True)
    c = _Chunk()
    book = ProfileBook(conn, settings.recycle_profiles)
    for row in rows:
        counts["selected"] += 1
        try:
            plan = _plan(settings, row, book)
            _plan_one(
                settings, processors, plan, c, today=today, at=at, now=now, run_id=run_id, counts=counts
            )
        except (ValueError, KeyError, InputError) as exc:
            # One bad subscription never stops the night: book it for tomorrow and report it.
            counts["errors"] += 1
            log.error("attempt not run", extra={"subscription": row.id, "reason": str(exc)})
            c.moved.append({"b_id": row.id, "b_next": row.next_attempt, "b_on": today + timedelta(days=1)})
            c.errors.append((row.id, f"{type(exc).__name__}: {exc}"))
    if c.handoffs:
        conn.execute(insert(Handoff), c.handoffs)
        insert_events(conn, c.events)
    if c.handed:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == bindparam("b_id"))
            .values(
                open_handoff_id=bindparam("b_handoff"),
                recycle_last_attempt=bindparam("b_attempt"),
                recycle_last_ran_on=today,
                next_attempt=None,
                next_attempt_on=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False),
            c.handed,
        )
    if c.attempts:
        conn.execute(insert(Attempt), c.attempts)
    record_assignments(conn, c.assignments)
    if c.moved:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == bindparam("b_id"))
            .values(next_attempt=bindparam("b_next"), next_attempt_on=bindparam("b_on"), updated_at=now)
            .execution_options(synchronize_session=False),
            c.moved,
        )
    apply_ladder_steps(conn, c.steps, now=now, run_id=run_id)
    apply_failures(conn, c.failures, now=now, run_id=run_id, reason="RECYCLE_ENDED", source="SUBMIT")
    record_changes(
        conn,
        [
            {
                "entity": "SUBSCRIPTION",
                "entity_id": sub_id,
                "field": "next_attempt_on",
                "old_value": today.isoformat(),
                "new_value": f"{today + timedelta(days=1)} ({error})",
                "reason": "ATTEMPT_ERROR",
                "source": "SUBMIT",
                "run_id": run_id,
                "occurred_at": now,
                "handoff_id": None,
            }
            for sub_id, error in c.errors
        ],
    )
    counts["fulfillments"] += apply_approvals(
        conn, c.approvals, now=now, run_id=run_id, reason="RECYCLE_APPROVED", source="SUBMIT"
    )
    return len(rows)


def _plan_one(
    settings: Settings,
    processors: Mapping[str, ProcessorGateway],
    plan: DuePlan,
    c: _Chunk,
    *,
    today: date,
    at: datetime,
    now: datetime,
    run_id: str,
    counts: Counter[str],
) -> None:
    row, planned, profile = plan.row, plan.planned, plan.profile
    if profile is None:
        c.failures.append(RecycleFailure(row.id, FailureCause.NO_PROFILE.value))
        counts["recycle_failed"] += 1
        return
    if planned is None:
        c.failures.append(RecycleFailure(row.id, FailureCause.ALL_ATTEMPTS_DECLINED.value))
        counts["recycle_failed"] += 1
        return
    if planned.due_on > today:
        # Settings changed since the date was booked: keep the ladder's own date.
        c.moved.append({"b_id": row.id, "b_next": planned.attempt, "b_on": planned.due_on})
        counts["rescheduled"] += 1
        return
    gateway = settings.gateways.get(plan.gateway_id or "")
    if gateway is None:
        c.failures.append(RecycleFailure(row.id, FailureCause.NO_PROFILE.value))
        counts["recycle_failed"] += 1
        return
    if plan.holdout or gateway.is_flexfactor:
        arm = Arm.HOLDOUT if plan.holdout else Arm.FLEXFACTOR
        c.assignments.append(assignment_row(row, planned, arm, run_id=run_id, now=now))
        counts[f"group_{arm.value.lower()}"] += 1  # group_flexfactor or group_holdout
    if gateway.is_flexfactor:
        _plan_handoff(settings, plan, c, today=today, at=at, now=now, run_id=run_id, counts=counts)
        return
    processor = processors[gateway.id]
    result, text = processor.charge(
        ChargeRequest(
            gateway.id,
            f"{row.id}:{planned.attempt}",
            planned.amount_minor,
            row.currency,
            row.card_token or "",
            row.card_last4 or "",
        )
    )
    counts["charged"] += 1
    c.attempts.append(
        {
            "id": f"att-{uuid.uuid4()}",
            "subscription_id": row.id,
            "decline_transaction_id": row.recycle_transaction_id,
            "attempt": planned.attempt,
            "gateway_id": gateway.id,
            "amount_minor": planned.amount_minor,
            "currency": row.currency,
            "result": result.value,
            "response_text": text,
            "run_id": run_id,
            "occurred_at": now,
        }
    )
    if result is ChargeResult.APPROVED:
        counts["charge_approved"] += 1
        c.approvals.append(
            Approval(
                subscription_id=row.id,
                order_id=row.order_id,
                product_id=row.product_id,
                billing_cycle=row.billing_cycle,
                next_bill_on=next_bill_date(today, row.billing_interval_days)
                if row.billing_interval_days
                else None,
                price_minor=price_after_approval(
                    hold_recycle_price=profile.hold_recycle_price,
                    approved_minor=planned.amount_minor,
                    regular_minor=row.price_minor,
                ),
                gateway_id=row.recycle_declined_gateway_id,
                shippable=bool(row.shippable),
            )
        )
        return
    decline = classify(
        response_type=DeclineType.HARD if result is ChargeResult.HARD_DECLINE else DeclineType.SOFT,
        response_text=text,
        order_type=OrderType.REBILL,
        gateway_id=gateway.id,
        gateway_type=gateway.type.value,
        rules=settings.decline_mapping,
    )
    if decline.decline_type is DeclineType.HARD:
        counts["charge_hard_declined"] += 1
        counts["recycle_failed"] += 1
        c.failures.append(RecycleFailure(row.id, FailureCause.HARD_DECLINE.value))
        return
    counts["charge_soft_declined"] += 1
    step = _next_step(profile, row, planned.attempt, today)
    if isinstance(step, RecycleFailure):
        counts["recycle_failed"] += 1
        c.failures.append(step)
    else:
        c.steps.append(step)


def _plan_handoff(
    settings: Settings,
    plan: DuePlan,
    c: _Chunk,
    *,
    today: date,
    at: datetime,
    now: datetime,
    run_id: str,
    counts: Counter[str],
) -> None:
    row, planned = plan.row, plan.planned
    assert planned is not None
    assert plan.gateway_id is not None
    handoff_id = str(uuid.uuid4())
    key = str(uuid.uuid4())
    ff = settings.gateways[plan.gateway_id].flexfactor
    assert ff is not None
    state, error, body = State.PENDING, None, "{}"
    try:
        body = json.dumps(
            build_evaluate_body(_handoff_request(settings, plan, handoff_id=handoff_id, key=key, at=at))
        )
    except InputError as exc:
        # Bad data on one subscription: the hand-off fails on its own and the ladder moves on.
        state, error = State.FAILED, str(exc)
    c.handoffs.append(
        {
            "id": handoff_id,
            "source": Source.RECYCLE.value,
            "order_id": row.order_id or row.id,
            "purchase_id": row.id,
            "transaction_id": row.recycle_transaction_id,
            "gateway_id": plan.gateway_id,
            "declining_gateway_id": row.recycle_declined_gateway_id,
            "slot": planned.slot.value,
            "attempt": planned.attempt,
            "billing_cycle": row.billing_cycle,
            "amount_minor": planned.amount_minor,
            "currency": row.currency,
            "idempotency_key": key,
            "request_body": body,
            "dedupe_key": f"RECYCLE:{row.id}:{row.recycle_transaction_id}:{planned.attempt}",
            "state": state.value,
            "created_at": now,
            "expires_at": at + timedelta(days=ff.expiry_days),
            "last_error": error,
            "outcome_at": now if error else None,
            "run_id": run_id,
            "poll_count": 0,
            "resend_count": 0,
            "late_outcome": False,
            "updated_at": now,
        }
    )
    c.events.append(
        {
            "handoff_id": handoff_id,
            "kind": "CREATED" if error is None else Event.REJECTED.value,
            "source": OutcomeSource.RESPONSE.value,
            "state_after": state.value,
            "amount_minor": planned.amount_minor,
            "idempotency_key": key,
            "detail": error,
            "occurred_at": now,
        }
    )
    if error is None:
        counts["handoffs_created"] += 1
        c.handed.append({"b_id": row.id, "b_handoff": handoff_id, "b_attempt": planned.attempt})
        return
    counts["handoffs_invalid"] += 1
    log.warning("hand-off not built", extra={"subscription": row.id, "reason": error})
    assert plan.profile is not None
    step = _next_step(plan.profile, row, planned.attempt, today)
    _book(step, c.steps, c.failures)


def _after_record(
    settings: Settings, today: date, run_id: str, now: datetime
) -> Callable[[Connection, list[SendResult]], None]:
    """A rejected RECYCLE hand-off counts as a declined attempt: continue its ladder in the same transaction."""

    def continue_ladders(conn: Connection, results: list[SendResult]) -> None:
        failed = [
            r.item.purchase_id
            for r in results
            if r.error_kind == "rejected" and r.item.source == Source.RECYCLE.value
        ]
        failed_ids = [p for p in failed if p]
        if not failed_ids:
            return
        rows = conn.execute(
            select(*_DUE_COLUMNS)
            .join(Decline, Decline.transaction_id == Subscription.recycle_transaction_id)
            .where(Subscription.id.in_(failed_ids))
        )
        steps: list[LadderStep] = []
        failures: list[RecycleFailure] = []
        book = ProfileBook(conn, settings.recycle_profiles)
        for row in rows:
            profile = book.profile(row.recycle_profile_id, row.recycle_profile_version)
            if profile is None:
                failures.append(RecycleFailure(row.id, FailureCause.NO_PROFILE.value))
                continue
            step = _next_step(profile, row, row.recycle_last_attempt, today)
            _book(step, steps, failures)
        apply_ladder_steps(conn, steps, now=now, run_id=run_id)
        apply_failures(conn, failures, now=now, run_id=run_id, reason="RECYCLE_ENDED", source="SUBMIT")

    return continue_ladders


def run_submit(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    processors: Mapping[str, ProcessorGateway],
    *,
    at: datetime,
    now: datetime,
    dry_run: bool = False,
    progress: Progress | None = None,
    preview_rows: int = 20,
    run_id: str | None = None,
) -> SubmitResult:
    """The nightly run at logical time `at`: settle lost answers, run due attempts, hand off, record.

    Records are stamped with `at` (so a replayed night reads as that night); `now` stamps the job run.
    With `run_id`, the caller owns that job run (several workers share one) and it is neither
    started nor finished here; without it the run records itself."""
    today = local_date(at, settings.timezone)
    if dry_run:
        return _dry_run(settings, engine, today=today, preview_rows=preview_rows)
    if run_id is not None:
        result = SubmitResult(run_id)
        _night(settings, engine, clients, processors, at=at, today=today, result=result, progress=progress)
        return result
    run_id = start_run(engine, "submit", logical_at=at, now=now)
    result = SubmitResult(run_id)
    try:
        _night(settings, engine, clients, processors, at=at, today=today, result=result, progress=progress)
        refresh_after_run(engine, settings.timezone, now=at, run_id=run_id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        finish_run(engine, run_id, now=now, counts=dict(result.counts), error=error)
        raise
    finish_run(engine, run_id, now=now, counts=dict(result.counts))
    return result


def _night(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    processors: Mapping[str, ProcessorGateway],
    *,
    at: datetime,
    today: date,
    result: SubmitResult,
    progress: Progress | None,
) -> None:
    """Settle lost answers, claim every due attempt (processor attempts run in the claim), then send."""
    run_id = result.run_id
    assert run_id is not None
    counts = result.counts
    http = settings.http
    # Long enough for one call with all its retries, as FlexFactor's timeouts allow; lookups and sends
    # that a dead worker leased are free again this long after it claimed them.
    lease = timedelta(seconds=(http.connect_timeout_s + http.read_timeout_s) * (http.max_retries + 1) + 60)
    window = timedelta(days=23)
    lookups = resolve_unanswered(engine, clients, now=at, window=window, run_id=run_id, lease=lease)
    counts.update(
        {"adopted": lookups.adopted, "queued_resend": lookups.resent, "lookup_failed": lookups.failed}
    )
    batch = settings.batching.batch_size
    # Sending starts with the first claimed chunk: the HTTP pool works while later chunks are planned
    # and written. Every hand-off is committed before its call, so the overlap changes no guarantee.
    claiming = threading.Event()
    claiming.set()
    sending: Future[SendReport]
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
            on_batch=(lambda rep, _res: progress("sent", rep.sent)) if progress else None,
            after_record=_after_record(settings, today, run_id, at),
            claiming=claiming,
            skip_gateways={g.id for g in settings.flexfactor_gateways()} - set(clients),
        )
        try:
            _claim_all(
                settings,
                engine,
                processors,
                at=at,
                today=today,
                run_id=run_id,
                counts=counts,
                progress=progress,
            )
        finally:
            claiming.clear()
        report = sending.result()
    counts.update(report.as_counts())
    if report.skipped_gateways:
        counts["skipped_gateways"] = len(report.skipped_gateways)


def _claim_all(
    settings: Settings,
    engine: Engine,
    processors: Mapping[str, ProcessorGateway],
    *,
    at: datetime,
    today: date,
    run_id: str,
    counts: Counter[str],
    progress: Progress | None,
) -> None:
    """Claim every due attempt, a chunk per transaction (processor attempts run in the claim)."""
    batch = settings.batching.batch_size
    while True:
        with engine.begin() as conn:
            n = _claim_chunk(
                conn,
                settings,
                processors,
                today=today,
                at=at,
                now=at,
                run_id=run_id,
                limit=batch,
                counts=counts,
            )
        if progress:
            progress("claimed", counts["selected"])
        if n < batch:
            return


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
                    plan = _plan(settings, row, book)
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
