"""Rerun declined initial sales on a FlexFactor gateway: queue a RERUN hand-off, or send it at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from recycle_engine.config import Settings
from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.eligibility import rerun_eligibility
from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.domain.states import Source
from recycle_engine.ports import FlexFactorGateway
from recycle_engine.services.initial_sales.new_sales import (
    Decide,
    HandoffPlan,
    Refused,
    decline_type_now,
    queue_new_sale_handoff,
    refused_by,
    send_at_once,
)
from recycle_engine.storage.order_repo import HandoffView, OrderDecline, open_handoff_id

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["RerunReport", "RerunResult", "rerun_orders"]


@dataclass(frozen=True)
class RerunResult:
    """One order of a rerun command: refused, queued, or (with --now) sent and read back."""

    order_id: str
    handoff_id: str | None = None
    refusal: Refused | None = None
    view: HandoffView | None = None
    recurring_product: bool = False


@dataclass
class RerunReport:
    results: list[RerunResult] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return sum(1 for r in self.results if r.refusal is not None)

    @property
    def sent(self) -> int:
        return sum(1 for r in self.results if r.view is not None and r.view.was_sent)

    @property
    def queued(self) -> int:
        return sum(1 for r in self.results if r.handoff_id is not None) - self.sent


def rerun_orders(
    settings: Settings,
    engine: Engine,
    clients: Mapping[str, FlexFactorGateway],
    order_ids: Sequence[str],
    *,
    gateway_id: str,
    now: datetime,
    send_now: bool,
) -> RerunReport:
    """Queue a RERUN hand-off per eligible order (sent by the next `run submit`), or send at once.

    A refused order changes nothing. With `send_now`, the queued hand-offs go out through the nightly
    sending path and an immediate final answer is applied to the order before this returns."""
    report = RerunReport()
    decide = _rerun_decider(settings, gateway_id, now)
    for order_id in order_ids:
        outcome = queue_new_sale_handoff(settings, engine, order_id, now=now, decide=decide)
        if isinstance(outcome, Refused):
            report.results.append(RerunResult(order_id, refusal=outcome))
        else:
            handoff_id, recurring = outcome
            report.results.append(RerunResult(order_id, handoff_id=handoff_id, recurring_product=recurring))
    if send_now:
        ids = [r.handoff_id for r in report.results if r.handoff_id is not None]
        views = send_at_once(settings, engine, clients, ids, now=now)
        report.results = [
            replace(r, view=views.get(r.handoff_id)) if r.handoff_id else r for r in report.results
        ]
    return report


def _rerun_decider(settings: Settings, gateway_id: str, now: datetime) -> Decide:
    gateway = settings.gateways.get(gateway_id)

    def decide(conn: Connection, order: OrderDecline) -> HandoffPlan | Refused:
        verdict = rerun_eligibility(
            order_type=OrderType(order.order_type),
            order_status=OrderStatus(order.status),
            decline_type=decline_type_now(settings, order),
            gateway_is_flexfactor=gateway is not None and gateway.is_flexfactor,
            # The CRM's forceLoadBalancerId: never a route to FlexFactor (domain.md 9, check 2).
            named_via_atri=gateway is None and gateway_id in settings.atri_profiles,
            has_open_handoff=open_handoff_id(conn, order.order_id) is not None,
        )
        if not verdict.eligible:
            return refused_by(order.order_id, verdict)
        assert gateway is not None
        assert gateway.flexfactor is not None
        # A5: a CIT rerun still gets a window, counted from the moment it is queued.
        expiry_at = now + timedelta(days=gateway.flexfactor.expiry_days)
        return HandoffPlan(Source.RERUN, gateway_id, expiry_at)

    return decide
