"""An order FlexFactor shows with another amount than we handed off: reconcile records it once per
amount seen, and the report lists it as a reconciliation exception with what to do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.domain.night import Night
from recycle_engine.ports import OrderSnapshot
from recycle_engine.services.outcomes.reconcile import run_reconcile
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, HandoffEvent
from tests.integration.test_report import a_handoff, settings_for

HANDED_OFF = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)  # 02:00 in New York
FIRST_POLL = datetime(2026, 6, 11, 7, 30, tzinfo=UTC)  # the reconcile of the next night
SECOND_POLL = FIRST_POLL + timedelta(days=1)


class FlexFactorShowing:
    """A FlexFactor gateway whose orders are still processing, at the amounts it is told."""

    def __init__(self, amounts: dict[str, tuple[int | None, str | None]]) -> None:
        self.amounts = amounts

    def get_order(self, flexfactor_order_id: str) -> OrderSnapshot:
        minor, currency = self.amounts[flexfactor_order_id]
        return OrderSnapshot(
            flexfactor_order_id=flexfactor_order_id,
            external_order_id=None,
            status_code=4,
            status_name="PROCESSING",
            state=None,
            needs_attention=None,
            order_placed_at=HANDED_OFF,
            expiry_at=HANDED_OFF + timedelta(days=21),
            amount_minor=minor,
            currency=currency,
        )


def _submitted(engine: Engine) -> None:
    """Three open hand-offs of 27.49 USD: one FlexFactor shows at 25.00, one agrees, one shows none."""
    rows = [
        a_handoff(
            name,
            created=HANDED_OFF,
            state="SUBMITTED",
            amount=2749,
            flexfactor_order_id=f"ff-{name}",
            next_poll_at=HANDED_OFF + timedelta(days=1),
        )
        for name in ("cut", "same", "silent")
    ]
    with engine.begin() as conn:
        conn.execute(insert(Handoff), rows)


def _mismatches(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        stmt = (
            select(HandoffEvent.handoff_id, HandoffEvent.amount_minor, HandoffEvent.detail)
            .where(HandoffEvent.kind == "AMOUNT_MISMATCH")
            .order_by(HandoffEvent.id)
        )
        return [tuple(r) for r in conn.execute(stmt)]


def _reconcile(settings: Any, engine: Engine, clients: Any, at: datetime) -> Any:
    return run_reconcile(
        settings, engine, clients, night=Night.of(at, settings.timezone), send_clock=FixedClock(at)
    )


def test_given_flexfactor_shows_another_amount_when_reconcile_polls_then_it_is_recorded_once_and_reported(
    db_url: str, tmp_path: Path
) -> None:
    # given
    settings = settings_for(tmp_path, db_url)
    engine = make_engine(db_url)
    _submitted(engine)
    flexfactor = FlexFactorShowing(
        {"ff-cut": (2500, "USD"), "ff-same": (2749, "USD"), "ff-silent": (None, None)}
    )
    clients: Any = {"flexfactor-main": flexfactor}
    # when: two nights' polls see the same amount, then FlexFactor shows it in another currency
    first = _reconcile(settings, engine, clients, FIRST_POLL)
    _reconcile(settings, engine, clients, SECOND_POLL)
    recorded = _mismatches(engine)
    flexfactor.amounts["ff-cut"] = (2749, "EUR")
    third = SECOND_POLL + timedelta(days=1)
    _reconcile(settings, engine, clients, third)
    report = run_report(
        settings,
        engine,
        day=third.astimezone(settings.timezone).date(),
        night=Night.of(third, settings.timezone),
    )
    # then: one event per amount seen, with FlexFactor's amount and both texts
    assert first.counts["amount_mismatches"] == 1
    assert recorded == [("cut", 2500, "FlexFactor shows 25.00 USD; we handed off 27.49 USD")]
    assert _mismatches(engine)[1:] == [("cut", 2749, "FlexFactor shows 27.49 EUR; we handed off 27.49 USD")]
    # then: the report lists the hand-off once, with the latest finding and what to do
    html = report.html_path.read_text(encoding="utf-8")
    assert "Amount differs from what we handed off" in html
    assert "FlexFactor shows 27.49 EUR; we handed off 27.49 USD" in html
    assert "refund the difference" in html
    assert html.count('<th scope="row">cut</th>') == 1
    assert '<th scope="row">same</th>' not in html
    engine.dispose()
