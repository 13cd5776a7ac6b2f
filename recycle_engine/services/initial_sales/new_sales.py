"""Hand-offs of declined initial sales (rerun, cascade): written in one transaction, sent on demand."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.config import Settings
from recycle_engine.domain.declines import DeclineType, OrderType, classify
from recycle_engine.domain.eligibility import Eligibility
from recycle_engine.domain.states import Source
from recycle_engine.errors import InputError
from recycle_engine.ports import FlexFactorGateway
from recycle_engine.services.nightly.handoff_sending import send_pending
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.storage.faults import DuplicateRow
from recycle_engine.storage.order_repo import (
    HandoffView,
    OrderDecline,
    existing_handoff,
    handoff_views,
    insert_handoff,
    order_with_latest_decline,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "Decide",
    "HandoffPlan",
    "Refused",
    "decline_type_now",
    "queue_new_sale_handoff",
    "refused_by",
    "send_at_once",
]

log = logging.getLogger(__name__)

# HandoffRequest field -> declines column, for the optional text values.
_TEXT_FIELDS: Final = {
    "response_code": "response_code",
    "response_text": "response_text",
    "card_brand": "card_brand",
    "card_type": "card_type",
    "card_bin": "card_bin",
    "avs": "avs_result",
    "cvv": "cvv_result",
    "cavv": "cavv_result",
    **{n: n for n in ("customer_id", "email", "phone", "first_name", "last_name", "address1", "address2")},
    **{n: n for n in ("city", "state", "zip", "country")},
}


@dataclass(frozen=True)
class Refused:
    """An order that may not be handed off: a stable code (domain Refusal or ours) and a sentence."""

    order_id: str
    code: str
    reason: str


@dataclass(frozen=True)
class HandoffPlan:
    """Where an eligible new sale goes: the FlexFactor gateway and the end of its window (None: cascade)."""

    source: Source
    gateway_id: str
    expiry_at: datetime | None


def refused_by(order_id: str, verdict: Eligibility) -> Refused:
    """The refusal a negative domain verdict stands for."""
    return Refused(order_id, str(verdict.reason_code), verdict.reason or "refused")


Decide = Callable[["Connection", OrderDecline], HandoffPlan | Refused]


def decline_type_now(settings: Settings, order: OrderDecline) -> DeclineType:
    """Soft or hard under today's decline mapping: a rule added since the import counts too."""
    decline = order.decline
    assert decline is not None
    gateway = settings.gateways.get(decline["gateway_id"])
    crm_type = DeclineType.HARD if decline["response_type"] == "HARD_DECLINE" else DeclineType.SOFT
    return classify(
        response_type=crm_type,
        response_text=decline["response_text"] or "",
        order_type=OrderType(order.order_type),
        gateway_id=decline["gateway_id"],
        gateway_type=gateway.type.value if gateway else "",
        rules=settings.decline_mapping,
    ).decline_type


def queue_new_sale_handoff(
    settings: Settings, engine: Engine, order_id: str, *, now: datetime, decide: Decide
) -> tuple[str, bool] | Refused:
    """In one transaction: read the order and its latest decline, ask `decide`, write the PENDING
    hand-off with its idempotency key and exact body. Returns (hand-off id, recurring product) or
    the refusal; nothing is written for a refused order."""
    try:
        with engine.begin() as conn:
            order = order_with_latest_decline(conn, order_id, lock=True)
            if order is None:
                return Refused(order_id, "UNKNOWN_ORDER", "No such order.")
            if order.decline is None:
                return Refused(order_id, "NO_DECLINE", "No decline is stored for the order.")
            try:
                plan = decide(conn, order)
            except ValueError as exc:  # an order type or status the domain does not know
                return Refused(order_id, "BAD_ORDER_DATA", str(exc))
            if isinstance(plan, Refused):
                return plan
            dedupe_key = f"{plan.source.value}:{order_id}:{order.decline['transaction_id']}"
            earlier = existing_handoff(conn, dedupe_key)
            if earlier is not None:
                return _already(order_id, plan.source, earlier)
            try:
                row = _handoff_row(settings, order, plan, dedupe_key=dedupe_key, now=now)
            except InputError as exc:
                return Refused(order_id, "BAD_ORDER_DATA", str(exc))
            insert_handoff(conn, row, now=now)
    except DuplicateRow:
        # Another process wrote a hand-off of this decline between our read and our insert.
        return Refused(
            order_id, "ALREADY_HANDED_OFF", "Another hand-off of this decline was written at the same moment."
        )
    log.info(
        "new-sale hand-off queued",
        extra={"order": order_id, "handoff": row["id"], "source": plan.source.value},
    )
    return row["id"], order.recurring_product


def _already(order_id: str, source: Source, earlier: tuple[str, str]) -> Refused:
    handoff_id, state = earlier
    return Refused(
        order_id,
        "ALREADY_HANDED_OFF",
        f"This decline already had a {source.value} hand-off ({handoff_id}, {state}); each decline goes once.",
    )


def _handoff_row(
    settings: Settings, order: OrderDecline, plan: HandoffPlan, *, dedupe_key: str, now: datetime
) -> dict[str, Any]:
    decline = order.decline
    assert decline is not None
    handoff_id, key = str(uuid.uuid4()), str(uuid.uuid4())
    ff = settings.gateways[plan.gateway_id].flexfactor
    assert ff is not None
    body = build_evaluate_body(
        _request(settings, order, plan, handoff_id=handoff_id, key=key, mid=ff.mid, site_id=ff.site_id)
    )
    return {
        "id": handoff_id,
        "source": plan.source.value,
        "order_id": order.order_id,
        "purchase_id": decline["purchase_id"] or order.purchase_id,
        "transaction_id": decline["transaction_id"],
        "gateway_id": plan.gateway_id,
        "declining_gateway_id": decline["gateway_id"],
        "slot": None,
        "attempt": None,
        "billing_cycle": decline["billing_cycle"],
        "amount_minor": decline["amount_minor"],
        "currency": decline["currency"],
        "idempotency_key": key,
        "request_body": json.dumps(body),
        "dedupe_key": dedupe_key,
        "created_at": now,
        "expires_at": plan.expiry_at,
        "poll_count": 0,
        "resend_count": 0,
        "late_outcome": False,
        "updated_at": now,
    }


def _request(
    settings: Settings,
    order: OrderDecline,
    plan: HandoffPlan,
    *,
    handoff_id: str,
    key: str,
    mid: str,
    site_id: str,
) -> HandoffRequest:
    d = order.decline
    assert d is not None
    missing = [
        n for n in ("card_token", "card_last4", "card_exp_month", "card_exp_year") if d[n] in (None, "")
    ]
    if missing:
        raise InputError(f"order {order.order_id}: the decline lacks {', '.join(missing)}")
    declining = settings.gateways.get(d["gateway_id"])
    # Optional text the feed may leave empty; the payload builder drops or fills what FlexFactor needs.
    texts: dict[str, Any] = {name: d[column] or "" for name, column in _TEXT_FIELDS.items()}
    return HandoffRequest(
        source=plan.source,
        submission_id=handoff_id,
        idempotency_key=key,
        mid=mid,
        site_id=site_id,
        expiry_at=plan.expiry_at,
        amount_minor=d["amount_minor"],
        currency=d["currency"],
        transaction_id=d["transaction_id"],
        # FlexFactor reads the shopper's local offset beside the UTC time (timezoneUtcOffset).
        declined_at=d["declined_at"].astimezone(timezone(timedelta(minutes=d["utc_offset_minutes"] or 0))),
        processor_type=declining.processor_type if declining else "unknown",
        card_token=d["card_token"],
        card_last4=d["card_last4"],
        card_exp_month=int(d["card_exp_month"]),
        card_exp_year=int(d["card_exp_year"]),
        ip_address=order.ip_address or d["ip_address"] or "",
        **texts,
    )


def send_at_once(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    handoff_ids: Sequence[str],
    *,
    now: datetime,
) -> dict[str, HandoffView]:
    """Send these PENDING hand-offs now through the nightly sending path, apply any final answer to
    its order at once, and read each back. A lost answer leaves its hand-off PENDING for reconcile."""
    if not handoff_ids:
        return {}
    http = settings.http
    # As submit's lease: long enough for every retry of one call, so nobody else sends it meanwhile.
    lease = timedelta(seconds=(http.connect_timeout_s + http.read_timeout_s) * (http.max_retries + 1) + 60)
    report = send_pending(
        engine,
        clients,
        now=now,
        run_id=f"now-{uuid.uuid4()}",
        batch_size=settings.batching.batch_size,
        concurrency=min(settings.batching.concurrency, len(handoff_ids)),
        lease=lease,
        only_ids=list(handoff_ids),
        send_clock=None,  # `now` is this request's reading of the wall clock: the real send instant
    )
    if report.final_ids:
        apply_outcomes(settings, engine, now=now, handoff_ids=report.final_ids)
    with engine.connect() as conn:
        return handoff_views(conn, handoff_ids)
