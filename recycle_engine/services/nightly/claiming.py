"""Claiming the night's due attempts: selection in pages, the ladder's plan for each, processor charges,
and the hand-off rows (key and exact body) committed before anything is sent."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.config import GatewaySettings, GatewayType, Settings
from recycle_engine.domain.declines import DeclineType, OrderType, classify
from recycle_engine.domain.holdout import Arm
from recycle_engine.domain.night import Night
from recycle_engine.domain.outcomes import FailureCause, next_bill_date, price_after_approval
from recycle_engine.domain.states import Event, OutcomeSource, Source
from recycle_engine.errors import InputError
from recycle_engine.ports import ChargeRequest, ChargeResult, ProcessorGateway
from recycle_engine.services.nightly.due_attempts import (
    DuePlan,
    book_step,
    due_rows,
    next_step,
    plan_due,
)
from recycle_engine.services.nightly.processor_charges import (
    PendingCharge,
    call_charges,
    claim_charges,
    record_outcomes,
)
from recycle_engine.storage.bulk_rows import columns_of, insert_rows, update_columns
from recycle_engine.storage.handoff_repo import insert_created
from recycle_engine.storage.holdout_repo import assignment_row, record_assignments
from recycle_engine.storage.models import Attempt, Subscription
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

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["NightClaim", "Progress", "claim_all"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (what, how many so far)


@dataclass(frozen=True)
class NightClaim:
    """What claiming one night needs, whether it runs in a thread or in a process of its own."""

    settings: Settings
    engine: Engine
    processors: Mapping[str, ProcessorGateway]
    night: Night  # at stamps what the claim writes; attempts due by today are claimed; under run_id


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
        # The decline's own local offset beside its UTC time (timezoneUtcOffset), as the feed gave it.
        declined_at=row.declined_at.astimezone(timezone(timedelta(minutes=row.utc_offset_minutes or 0))),
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
        self.to_charge: list[tuple[DuePlan, GatewaySettings]] = []  # attempts on a processor asked first


def _claim_chunk(
    conn: Connection,
    settings: Settings,
    processors: Mapping[str, ProcessorGateway],
    *,
    night: Night,
    limit: int,
    counts: Counter[str],
) -> tuple[int, list[PendingCharge]]:
    """Plan and write one chunk; returns how many rows it selected and the charges to call after
    its commit."""
    today = night.today
    rows = due_rows(conn, today=today, limit=limit, lock=True)
    c = _Chunk()
    book = ProfileBook(conn, settings.recycle_profiles)
    for row in rows:
        counts["selected"] += 1
        try:
            plan = plan_due(settings, row, book)
            _plan_or_charge(settings, processors, plan, c, night=night, counts=counts)
        except (ValueError, KeyError, InputError) as exc:
            # One bad subscription never stops the night: book it for tomorrow and report it.
            counts["errors"] += 1
            log.error("attempt not run", extra={"subscription": row.id, "reason": str(exc)})
            c.moved.append(
                {"id": row.id, "next_attempt": row.next_attempt, "next_attempt_on": today + timedelta(days=1)}
            )
            c.errors.append((row.id, f"{type(exc).__name__}: {exc}"))
    pending = claim_charges(conn, c.to_charge, run_id=night.job_run, at=night.at, now=night.at)
    _flush(conn, c, night=night, counts=counts)
    return len(rows), pending


def _flush(conn: Connection, c: _Chunk, *, night: Night, counts: Counter[str]) -> None:
    today, now, run_id = night.today, night.at, night.job_run
    insert_created(conn, c.handoffs, c.events)
    handed = {"recycle_last_ran_on": today, "next_attempt": None, "next_attempt_on": None, "updated_at": now}
    update_columns(conn, Subscription, "id", columns_of(c.handed), handed)
    insert_rows(conn, Attempt, c.attempts)
    record_assignments(conn, c.assignments)
    update_columns(conn, Subscription, "id", columns_of(c.moved), {"updated_at": now})
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


def _plan_or_charge(
    settings: Settings,
    processors: Mapping[str, ProcessorGateway],
    plan: DuePlan,
    c: _Chunk,
    *,
    night: Night,
    counts: Counter[str],
) -> None:
    """Act on one due attempt: book its failure or new date, write its FlexFactor hand-off, queue its
    NMI charge for after the commit, or charge an in-process processor (simulated) here and now."""
    today = night.today
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
        c.moved.append({"id": row.id, "next_attempt": planned.attempt, "next_attempt_on": planned.due_on})
        counts["rescheduled"] += 1
        return
    gateway = settings.gateways.get(plan.gateway_id or "")
    if gateway is None:
        c.failures.append(RecycleFailure(row.id, FailureCause.NO_PROFILE.value))
        counts["recycle_failed"] += 1
        return
    if plan.holdout or gateway.is_flexfactor:
        arm = Arm.HOLDOUT if plan.holdout else Arm.FLEXFACTOR
        c.assignments.append(assignment_row(row, planned, arm, run_id=night.job_run, now=night.at))
        counts[f"group_{arm.value.lower()}"] += 1  # group_flexfactor or group_holdout
    if gateway.is_flexfactor:
        _plan_handoff(settings, plan, c, night=night, counts=counts)
        return
    if gateway.type is GatewayType.NMI:
        # Recorded and committed before the call, then charged once the claim has committed.
        c.to_charge.append((plan, gateway))
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
    _apply_charge(settings, plan, gateway, result, text, c, night=night, counts=counts)


def _apply_charge(
    settings: Settings,
    plan: DuePlan,
    gateway: GatewaySettings,
    result: ChargeResult,
    text: str,
    c: _Chunk,
    *,
    night: Night,
    counts: Counter[str],
    amount_minor: int | None = None,
) -> None:
    """Book a charge's answer: the transaction row, then an approval, a failure or the next step."""
    today, now, run_id = night.today, night.at, night.job_run
    row, planned, profile = plan.row, plan.planned, plan.profile
    assert planned is not None
    assert profile is not None
    counts["charged"] += 1
    c.attempts.append(
        {
            "id": f"att-{uuid.uuid4()}",
            "subscription_id": row.id,
            "decline_transaction_id": row.recycle_transaction_id,
            "attempt": planned.attempt,
            "gateway_id": gateway.id,
            "amount_minor": planned.amount_minor if amount_minor is None else amount_minor,
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
    step = next_step(profile, row, planned.attempt, today)
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
    night: Night,
    counts: Counter[str],
) -> None:
    row, planned = plan.row, plan.planned
    today, at, now, run_id = night.today, night.at, night.at, night.job_run
    assert planned is not None
    assert plan.gateway_id is not None
    handoff_id = str(uuid.uuid4())
    key = str(uuid.uuid4())
    ff = settings.gateways[plan.gateway_id].flexfactor
    assert ff is not None
    error, body = None, "{}"
    try:
        body = json.dumps(
            build_evaluate_body(_handoff_request(settings, plan, handoff_id=handoff_id, key=key, at=at))
        )
    except InputError as exc:
        # Bad data on one subscription: the hand-off fails on its own and the ladder moves on.
        error = str(exc)
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
            "kind": (Event.CREATED if error is None else Event.REJECTED).value,
            "source": OutcomeSource.RESPONSE.value,
            "amount_minor": planned.amount_minor,
            "idempotency_key": key,
            "detail": error,
            "occurred_at": now,
        }
    )
    if error is None:
        counts["handoffs_created"] += 1
        c.handed.append(
            {"id": row.id, "open_handoff_id": handoff_id, "recycle_last_attempt": planned.attempt}
        )
        return
    counts["handoffs_invalid"] += 1
    log.warning("hand-off not built", extra={"subscription": row.id, "reason": error})
    assert plan.profile is not None
    step = next_step(plan.profile, row, planned.attempt, today)
    book_step(step, c.steps, c.failures)


def claim_all(job: NightClaim, *, counts: Counter[str], progress: Progress | None) -> None:
    """Claim every due attempt, a chunk per transaction (processor attempts run in the claim)."""
    batch = job.settings.batching.batch_size
    while True:
        with job.engine.begin() as conn:
            n, pending = _claim_chunk(
                conn, job.settings, job.processors, night=job.night, limit=batch, counts=counts
            )
        if pending:
            _charge_claimed(job, pending, counts=counts)
        if progress:
            progress("claimed", counts["selected"])
        if n < batch:
            return


def _charge_claimed(job: NightClaim, pending: list[PendingCharge], *, counts: Counter[str]) -> None:
    """Call the processor for charges already committed, then book their answers in one transaction."""
    settings, night = job.settings, job.night
    outcomes = call_charges(job.processors, pending, concurrency=settings.batching.concurrency)
    c = _Chunk()
    for o in outcomes:
        counts["charge_sends"] += o.sends
        counts["charge_lookups"] += o.lookups
        if o.answer is None:
            counts["charge_unknown"] += 1
            continue
        if o.charge.needs_lookup and o.sends == 0:
            counts["charge_found_by_lookup"] += 1
        _apply_charge(
            settings,
            o.charge.plan,
            settings.gateways[o.charge.gateway_id],
            o.answer[0],
            o.answer[1],
            c,
            night=night,
            counts=counts,
            amount_minor=o.charge.amount_minor,
        )
    with job.engine.begin() as conn:
        record_outcomes(conn, outcomes, now=night.at)
        _flush(conn, c, night=night, counts=counts)
