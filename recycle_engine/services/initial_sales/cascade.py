"""Real-time cascade of one declined initial sale to FlexFactor: eligibility, one CIT call, instant result."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from recycle_engine.config import Settings
from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.eligibility import Refusal, cascade_eligibility
from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.domain.states import Source, State
from recycle_engine.errors import InputError
from recycle_engine.ports import FlexFactorGateway
from recycle_engine.services.initial_sales.new_sales import (
    HandoffPlan,
    Refused,
    decline_type_now,
    queue_new_sale_handoff,
    refused_by,
    send_at_once,
)
from recycle_engine.storage.handoff_repo import fail_unsent
from recycle_engine.storage.order_repo import HandoffView, OrderDecline, open_handoff_id

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["CascadeAnswer", "CascadeResult", "cascade_order", "cascade_target", "parse_cascade_request"]

log = logging.getLogger(__name__)

MAX_ORDER_ID_CHARS: Final = 64  # the orders.id column


class CascadeResult(enum.StrEnum):
    """What the caller (checkout, CRM) is told."""

    APPROVED = "approved"  # FlexFactor charged the card
    DECLINED = "declined"  # not charged now (CHALLENGE included: a later approval still applies, A7)
    UNKNOWN = "unknown"  # the answer was lost; reconcile settles the hand-off


@dataclass(frozen=True)
class CascadeAnswer:
    order_id: str
    result: CascadeResult
    handoff_id: str
    reason: str | None = None

    def as_json(self) -> dict[str, str]:
        body = {"order_id": self.order_id, "result": self.result.value, "handoff_id": self.handoff_id}
        return body | ({"reason": self.reason} if self.reason else {})


def parse_cascade_request(raw: bytes) -> str:
    """The order id of a `POST /cascade` body: exactly {"order_id": "<non-empty string>"}.

    Raises InputError naming what is wrong (not JSON, not an object, duplicate, unknown or missing
    keys, a wrong type)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise InputError(f"duplicate key(s): {', '.join(repeated)}")
        return dict(pairs)

    try:
        body = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise InputError('body must be a JSON object like {"order_id": "..."}')
    unknown = sorted(set(body) - {"order_id"})
    if unknown:
        raise InputError(f"unknown key(s): {', '.join(unknown)}")
    if "order_id" not in body:
        raise InputError("order_id is required")
    order_id = body["order_id"]
    if not isinstance(order_id, str):
        raise InputError("order_id must be a string")
    if not order_id.strip() or len(order_id) > MAX_ORDER_ID_CHARS:
        raise InputError(f"order_id must be 1 to {MAX_ORDER_ID_CHARS} characters")
    return order_id


def cascade_target(settings: Settings, declining_gateway_id: str) -> tuple[str, str] | None:
    """The FlexFactor gateway a soft decline on `declining_gateway_id` cascades to, and why.

    A FlexFactor gateway with cascade_all takes every initial sale, over all cascade profiles.
    Otherwise the first ATRI profile (settings order) that routes to the declining gateway and whose
    cascade profile lists a FlexFactor gateway leads there. None: no cascade path."""
    for gateway in settings.flexfactor_gateways():
        if gateway.flexfactor is not None and gateway.flexfactor.cascade_all:
            return gateway.id, f"cascade_all on {gateway.id}"
    for atri in settings.atri_profiles.values():
        if declining_gateway_id not in atri.gateways or atri.cascade_profile is None:
            continue
        profile = settings.cascade_profiles.get(atri.cascade_profile)
        for gateway_id in profile.gateways if profile else ():
            member = settings.gateways.get(gateway_id)
            if member is not None and member.is_flexfactor:
                return gateway_id, f"ATRI profile {atri.id}, cascade profile {atri.cascade_profile}"
    return None


def cascade_order(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    order_id: str,
    *,
    now: datetime,
) -> CascadeAnswer | Refused:
    """Cascade one declined initial sale to FlexFactor in real time and apply the answer at once.

    Refused (nothing written, nothing sent): unknown order (code UNKNOWN_ORDER), no cascade path, hard
    or insufficient-funds decline, no ip_address, order not DECLINED, an open hand-off, a decline
    already cascaded. Otherwise one CASCADE hand-off is written, sent without expiryDateUtc, and its
    final answer applied to the order (outcome source RESPONSE)."""

    def decide(conn: Connection, order: OrderDecline) -> HandoffPlan | Refused:
        assert order.decline is not None
        target = cascade_target(settings, order.decline["gateway_id"])
        verdict = cascade_eligibility(
            order_type=OrderType(order.order_type),
            decline_type=decline_type_now(settings, order),
            response_text=order.decline["response_text"] or "",
            insufficient_funds_phrases=settings.insufficient_funds_phrases,
            ip_address=order.ip_address or order.decline["ip_address"],
            gateway_in_cascade_path=target is not None,
            cascade_all=False,  # already folded into `target`
        )
        if not verdict.eligible:
            return refused_by(order.order_id, verdict)
        status = OrderStatus(order.status)
        # One open hand-off per order (domain.md 8), and only a sale that is still declined.
        if status is OrderStatus.COMPLETE:
            return Refused(order.order_id, Refusal.ORDER_COMPLETE.value, "The order is already COMPLETE.")
        if status is not OrderStatus.DECLINED:
            return Refused(
                order.order_id, Refusal.NOT_DECLINED.value, f"The order is {status}, not DECLINED."
            )
        if open_handoff_id(conn, order.order_id) is not None:
            return Refused(
                order.order_id,
                Refusal.OPEN_HANDOFF.value,
                "The order already has an open FlexFactor hand-off.",
            )
        assert target is not None
        return HandoffPlan(Source.CASCADE, target[0], expiry_at=None)  # expiry_days never apply

    queued = queue_new_sale_handoff(settings, engine, order_id, now=now, decide=decide)
    if isinstance(queued, Refused):
        log.info("cascade refused", extra={"order": order_id, "code": queued.code})
        return queued
    handoff_id, _ = queued
    view = send_at_once(settings, engine, clients, [handoff_id], now=now)[handoff_id]
    if not view.was_sent:
        _fail_unsent(engine, handoff_id, view.last_error, now=now)
    answer = _answer(order_id, view)
    log.info(
        "cascade answered",
        extra={"order": order_id, "handoff": handoff_id, "result": answer.result.value, "state": view.state},
    )
    return answer


def _answer(order_id: str, view: HandoffView) -> CascadeAnswer:
    def told(result: CascadeResult, reason: str | None = None) -> CascadeAnswer:
        return CascadeAnswer(order_id, result, view.handoff_id, reason)

    state = State(view.state)
    if state is State.APPROVED:
        return told(CascadeResult.APPROVED)
    if state is State.SUBMITTED:
        return told(
            CascadeResult.DECLINED,
            f"FlexFactor answered {view.vendor_status}; the hand-off stays open and a later approval still applies",
        )
    if state is State.FAILED:
        return told(CascadeResult.DECLINED, f"not accepted by FlexFactor: {view.last_error}")
    if state is State.PENDING:
        if not view.was_sent:
            return told(CascadeResult.DECLINED, "FlexFactor could not be reached; nothing was sent")
        return told(CascadeResult.UNKNOWN, "FlexFactor's answer was lost; reconcile will settle the hand-off")
    return told(CascadeResult.DECLINED, f"FlexFactor answered {view.vendor_status or state.value}")


def _fail_unsent(engine: Engine, handoff_id: str, error: str | None, *, now: datetime) -> None:
    # A cascade that never left us is over: the shopper has gone, so no later run may send it.
    with engine.begin() as conn:
        fail_unsent(conn, handoff_id, f"cascade not sent: {error or 'FlexFactor unreachable'}", now=now)
