"""Exactly-once charges on processors that can be asked about a charge (NMI).

Each attempt is a `processor_charges` row, its id the order id sent, committed (with the subscription
taken off tonight's selection) before the call. A lost answer is looked up by that order id before
anything is sent again, and only a confirmed absence charges again. A run that dies leaves the row
PENDING under its lease; once the lease has passed, the next run puts the subscription back on the
ladder where it stood, and its claim looks the charge up first."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

from recycle_engine.config import GatewaySettings
from recycle_engine.errors import ProcessorUnknownOutcome
from recycle_engine.ports import ChargeRequest, ChargeResult, LookupProcessor, ProcessorGateway
from recycle_engine.services.nightly.due_attempts import DuePlan
from recycle_engine.storage import processor_charge_repo
from recycle_engine.storage.bulk_rows import insert_rows
from recycle_engine.storage.models import ProcessorCharge
from recycle_engine.storage.processor_charge_repo import ANSWERED, PENDING

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "ChargeOutcome",
    "PendingCharge",
    "call_charges",
    "charge_lease",
    "claim_charges",
    "record_outcomes",
    "release_stale_charges",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingCharge:
    """An attempt whose charge row is committed and leased to this run, ready to call."""

    plan: DuePlan
    gateway_id: str
    charge_id: str  # sent as the processor's order id
    amount_minor: int
    currency: str
    needs_lookup: bool  # the row existed: a previous run may have charged it
    known: tuple[ChargeResult, str] | None = None  # an answer already recorded for this attempt


@dataclass(frozen=True)
class ChargeOutcome:
    charge: PendingCharge
    answer: tuple[ChargeResult, str] | None  # None: still unknown, left for the next run's lookup
    sends: int
    lookups: int
    error: str | None = None


def charge_lease(gateway: GatewaySettings) -> timedelta:
    """How long a run holds a charge: a send and a lookup at their full timeouts, plus a margin."""
    assert gateway.nmi is not None
    return timedelta(seconds=2 * (gateway.nmi.connect_timeout_s + gateway.nmi.read_timeout_s) + 60)


def claim_charges(
    conn: Connection,
    plans: Sequence[tuple[DuePlan, GatewaySettings]],
    *,
    run_id: str,
    at: datetime,
    now: datetime,
) -> list[PendingCharge]:
    """In the claim transaction: a PENDING row per attempt (or the existing one, taken over), and each
    subscription taken off the selection until the answer is recorded."""
    if not plans:
        return []
    keys = {(p.row.id, p.row.recycle_transaction_id, p.planned.attempt) for p, _ in plans if p.planned}
    existing = {
        (r.subscription_id, r.decline_transaction_id, r.attempt): r
        for r in processor_charge_repo.charges_of_subscriptions(conn, sorted({k[0] for k in keys}))
        if (r.subscription_id, r.decline_transaction_id, r.attempt) in keys
    }
    new_rows: list[dict[str, object]] = []
    taken: list[tuple[str, datetime]] = []
    pending: list[PendingCharge] = []
    for plan, gateway in plans:
        row, planned = plan.row, plan.planned
        assert planned is not None
        until = at + charge_lease(gateway)
        found = existing.get((row.id, row.recycle_transaction_id, planned.attempt))
        if found is None:
            charge_id = uuid.uuid4().hex
            new_rows.append(
                {
                    "id": charge_id,
                    "subscription_id": row.id,
                    "decline_transaction_id": row.recycle_transaction_id,
                    "attempt": planned.attempt,
                    "gateway_id": gateway.id,
                    "amount_minor": planned.amount_minor,
                    "currency": row.currency,
                    "state": PENDING,
                    "result": None,
                    "response_text": None,
                    "resume_attempt": row.next_attempt,
                    "resume_on": row.next_attempt_on,
                    "sends": 0,
                    "lookups": 0,
                    "last_error": None,
                    "run_id": run_id,
                    "claimed_by": run_id,
                    "claimed_until": until,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            pending.append(
                PendingCharge(plan, gateway.id, charge_id, planned.amount_minor, row.currency, False)
            )
        else:
            # A row from an earlier run: whatever it sent may have charged, so it is looked up
            # first, and it keeps its order id and amount.
            known = (
                (ChargeResult(found.result), found.response_text or "")
                if found.state == ANSWERED and found.result
                else None
            )
            taken.append((found.id, until))
            pending.append(
                PendingCharge(
                    plan, found.gateway_id, found.id, found.amount_minor, found.currency, True, known
                )
            )
    insert_rows(conn, ProcessorCharge, new_rows)
    for charge_id, until in taken:
        processor_charge_repo.lease_charge(conn, charge_id, run_id=run_id, until=until, now=now)
    processor_charge_repo.take_off_selection(conn, [p.plan.row.id for p in pending], now=now)
    return pending


def call_charges(
    processors: Mapping[str, ProcessorGateway], pending: Sequence[PendingCharge], *, concurrency: int
) -> list[ChargeOutcome]:
    """Call the processor for each pending charge, `concurrency` at a time, outside any transaction."""
    if not pending:
        return []
    with ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(pending))), thread_name_prefix="nmi"
    ) as pool:
        return list(pool.map(lambda p: _call(cast(LookupProcessor, processors[p.gateway_id]), p), pending))


def _call(processor: LookupProcessor, charge: PendingCharge) -> ChargeOutcome:
    if charge.known is not None:
        return ChargeOutcome(charge, charge.known, 0, 0)
    lookups = sends = 0
    if charge.needs_lookup:
        lookups += 1
        try:
            found = processor.find_charge(charge.charge_id)
        except ProcessorUnknownOutcome as exc:
            return ChargeOutcome(charge, None, sends, lookups, str(exc))
        if found is not None:
            return ChargeOutcome(charge, found, sends, lookups)
    row = charge.plan.row
    request = ChargeRequest(
        charge.gateway_id,
        charge.charge_id,
        charge.amount_minor,
        charge.currency,
        row.card_token or "",
        row.card_last4 or "",
    )
    sends += 1
    try:
        return ChargeOutcome(charge, processor.charge(request), sends, lookups)
    except ProcessorUnknownOutcome as exc:
        error = str(exc)
    # The answer was lost: the processor may hold the charge. Ask it by our order id; an absence seen
    # this soon is not trusted (the sale may still be in flight) and is left to the next run's lookup.
    lookups += 1
    try:
        found = processor.find_charge(charge.charge_id)
    except ProcessorUnknownOutcome as exc:
        return ChargeOutcome(charge, None, sends, lookups, f"{error}; lookup: {exc}")
    return ChargeOutcome(charge, found, sends, lookups, None if found else error)


def record_outcomes(conn: Connection, outcomes: Sequence[ChargeOutcome], *, now: datetime) -> None:
    """Write each answer on its charge row; an unknown one stays PENDING under its lease, for the
    lookup of the first run after the lease."""
    for o in outcomes:
        if o.answer is None:
            log.warning(
                "charge answer lost; looked up next run",
                extra={"charge": o.charge.charge_id, "subscription": o.charge.plan.row.id},
            )
        processor_charge_repo.record_charge_attempt(
            conn,
            o.charge.charge_id,
            sends=o.sends,
            lookups=o.lookups,
            now=now,
            answer=None if o.answer is None else (o.answer[0].value, o.answer[1]),
            error=o.error,
        )


def release_stale_charges(engine: Engine, *, at: datetime, now: datetime) -> int:
    """Put back on the ladder the subscriptions whose charge is PENDING with no live lease (a run died,
    or the answer was lost), so tonight's claim looks each charge up before anything is sent."""
    with engine.begin() as conn:
        released = processor_charge_repo.release_stale_charges(conn, at=at, now=now)
    if released:
        log.warning("charges to look up before any resend", extra={"count": released})
    return released
