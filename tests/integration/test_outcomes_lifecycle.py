"""The outcomes issue end to end: 23 logical nights on the sandbox clock with webhooks through the real
service, then every hand-off, subscription, order, fulfillment and change checked against the table.

The book (SPEC section 1 outcome table, domain.md 3.4 and 8):

    hand-off            source   card  handed off  what FlexFactor does            how we learn it
    rescued             RECYCLE  3184  night 0     rescues it a day later          webhook (sent twice)
    declined            RECYCLE  0341  night 0     declines at once                the evaluate answer
    expired             RECYCLE  0259  night 0     still working at our window end we cancel, then EXPIRED
    late-applied        RECYCLE  0259  night 0     as expired, then a late rescue  late webhook: applied
    late-unapplied      RECYCLE  0259  night 0     as above, purchase revived      late webhook: flagged
    dropped             RECYCLE  3184  night 1     rescues it a day later          webhook dropped: poll
    cancelled           RECYCLE  0119  night 1     cancels it two days later       webhook (sent twice)
    rr-trial            RERUN    0341  night 0     declines at once                the evaluate answer
    rr-declined         RERUN    0341  night 0     declines at once                the evaluate answer
    rr-saved            RERUN    3184  night 0     approves at once                the evaluate answer

Time: our nights are logical (submit at 02:00 New York, reconcile at 03:30). FlexFactor's clock (the
sandbox) runs through its own day after each of our nights, to 14:00, and its webhooks arrive then;
it meets our clock only when we hand off (it checks expiryDateUtc against its own clock). So on
night 21 the 0259 orders are still Processing at FlexFactor when our 21-day window has closed, and
reconcile settles them itself: cancel at FlexFactor, then EXPIRED (source EXPIRY).

The scenario is played once per database (a few seconds); each test reads one aspect of it.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import Engine, func, insert, select, update

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.bootstrap import flexfactor_clients
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.domain.states import Source
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.sandbox.state import iso
from recycle_engine.services.export import ExportFormat, export_changes
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.services.outcomes.reconcile import run_reconcile
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import (
    Change,
    Fulfillment,
    Handoff,
    HandoffEvent,
    JobRun,
    Order,
    OutcomeQueue,
    Subscription,
    WebhookDelivery,
)
from recycle_engine.storage.webhook_inbox import backlog
from recycle_engine.web.webhook_app import create_app, serving
from tests.conftest import _fresh_pg, _fresh_sqlite
from tests.factories import a_decline, a_settings_file, insert_recycling, load_test_settings, outcome_applied
from tests.nights import submit_night

NEW_YORK = ZoneInfo("America/New_York")
NIGHT0 = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)  # 02:00 in New York: the first submit
RECONCILE_AFTER = timedelta(hours=1, minutes=30)  # 03:30 local, as the reconcile cron runs
FLEXFACTOR_DAY = timedelta(hours=12)  # FlexFactor works on, to 14:00 local, after each of our nights
NIGHTS = 23  # nights 0..22: past the 21-day window of the night-0 hand-offs
HAND_OFF_NIGHTS = (0, 1)
DROP_AFTER_NIGHT = 2  # the day the night-1 rescue happens; its webhook is dropped
REVIVED_ON = date(2026, 7, 5)  # the operator's new next bill date for the revived purchase


def night(n: int) -> datetime:
    return NIGHT0 + timedelta(days=n)


def local_day(at: datetime) -> date:
    return at.astimezone(NEW_YORK).date()


RECYCLE_BOOK: Mapping[str, tuple[str, int]] = {  # name -> (card last 4, night handed off)
    "rescued": ("3184", 0),
    "declined": ("0341", 0),
    "expired": ("0259", 0),
    "late-applied": ("0259", 0),
    "late-unapplied": ("0259", 0),
    "dropped": ("3184", 1),
    "cancelled": ("0119", 1),
}


@dataclass(frozen=True)
class Rerun:
    card_last4: str
    completes_trial: bool
    recurring_product: bool
    shippable: bool
    with_purchase: bool


RERUN_BOOK: Mapping[str, Rerun] = {
    "rr-trial": Rerun(
        "0341", completes_trial=True, recurring_product=True, shippable=False, with_purchase=False
    ),
    "rr-declined": Rerun(
        "0341", completes_trial=False, recurring_product=False, shippable=True, with_purchase=False
    ),
    "rr-saved": Rerun(
        "3184", completes_trial=False, recurring_product=True, shippable=True, with_purchase=True
    ),
}


# --- the scenario ------------------------------------------------------------------------------------


class SandboxTime:
    """The webhook service reads FlexFactor's clock, so the signed dates it checks are fresh."""

    def __init__(self, sandbox: RunningSandbox) -> None:
        self._clock = sandbox.state.clock

    def now(self) -> datetime:
        moment: datetime = self._clock.now()
        return moment


@dataclass
class Played:
    """What the 23 nights left behind, for the tests to read."""

    settings: Settings
    engine: Engine
    handoff_ids: dict[str, str]  # book name -> hand-off id
    submits: dict[int, Counter[str]] = field(default_factory=dict)
    reconciles: dict[int, Counter[str]] = field(default_factory=dict)
    second_reconcile_diffs: dict[int, list[str]] = field(default_factory=dict)
    sandbox_webhooks: list[dict[str, Any]] = field(default_factory=list)
    on_accepted_calls: list[list[str]] = field(default_factory=list)
    on_accepted_errors: list[str] = field(default_factory=list)

    def handoff(self, name: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(Handoff).where(Handoff.id == self.handoff_ids[name])).one()

    def events(self, name: str) -> list[Any]:
        with self.engine.connect() as conn:
            stmt = (
                select(HandoffEvent)
                .where(HandoffEvent.handoff_id == self.handoff_ids[name])
                .order_by(HandoffEvent.id)
            )
            return list(conn.execute(stmt))

    def rows(self, model: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(model)))


def admin(sandbox: RunningSandbox, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        answer = requests.get(f"{sandbox.admin_url}/{path}", timeout=30)
    else:
        answer = requests.post(f"{sandbox.admin_url}/{path}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def insert_book(engine: Engine, settings: Settings) -> dict[str, str]:
    """The recycling purchases (attempt 4, slot 4-6 on FlexFactor) and the queued reruns; rerun ids."""
    for name, (last4, handed_on) in RECYCLE_BOOK.items():
        insert_recycling(
            engine,
            a_decline(
                transaction_id=f"txn-{name}",
                order_id=f"ord-{name}",
                purchase_id=f"sub-{name}",
                customer_id=f"cust-{name}",
                card_last4=last4,
            ),
            last_attempt=2,
            last_ran_on=date(2026, 6, 8),
            next_attempt=4,
            next_attempt_on=local_day(night(handed_on)),
        )
    with engine.begin() as conn:
        # The CRM bills a purchase handed to FlexFactor on the FlexFactor gateway; a save must send
        # its next rebill back to the gateway that declined (nmi), a failure leaves it where it is.
        conn.execute(update(Subscription).values(gateway_id="ff"))
    return {name: insert_rerun(engine, settings, name, rerun) for name, rerun in RERUN_BOOK.items()}


def insert_rerun(engine: Engine, settings: Settings, name: str, rerun: Rerun) -> str:
    """A declined new sale queued for a rerun on ff: a PENDING hand-off with its exact body."""
    handoff_id, key = str(uuid.uuid4()), str(uuid.uuid4())
    d = a_decline(
        transaction_id=f"txn-{name}",
        order_id=f"ord-{name}",
        order_type="NEW_SALE",
        purchase_id=f"sub-{name}" if rerun.with_purchase else None,
        billing_cycle=1,
        completes_trial=rerun.completes_trial,
        recurring_product=rerun.recurring_product,
        shippable=rerun.shippable,
        customer_id=f"cust-{name}",
        card_last4=rerun.card_last4,
        declined_at=NIGHT0 - timedelta(hours=5),
    )
    ff = settings.gateways["ff"].flexfactor
    assert ff is not None
    body = build_evaluate_body(
        HandoffRequest(
            source=Source.RERUN,
            submission_id=handoff_id,
            idempotency_key=key,
            mid=ff.mid,
            site_id=ff.site_id,
            expiry_at=NIGHT0 + timedelta(days=ff.expiry_days),
            amount_minor=d["amount_minor"],
            currency=d["currency"],
            transaction_id=d["transaction_id"],
            declined_at=d["declined_at"],
            response_code=d["response_code"],
            response_text=d["response_text"],
            processor_type=settings.gateways["nmi"].processor_type,
            card_token=d["card_token"],
            card_bin=d["card_bin"],
            card_last4=d["card_last4"],
            card_exp_month=d["card_exp_month"],
            card_exp_year=d["card_exp_year"],
            card_brand=d["card_brand"],
            card_type=d["card_type"],
            avs=d["avs_result"],
            email=d["email"],
            phone=d["phone"],
            customer_id=d["customer_id"],
            first_name=d["first_name"],
            last_name=d["last_name"],
            address1=d["address1"],
            city=d["city"],
            state=d["state"],
            zip=d["zip"],
            country=d["country"],
            ip_address=d["ip_address"],
        )
    )
    with engine.begin() as conn:
        conn.execute(
            insert(Order).values(
                id=d["order_id"],
                order_type="NEW_SALE",
                # While FlexFactor works on the rerun the CRM keeps the order pending, so each row of
                # the table (DECLINED, unchanged for a trial, COMPLETE) is a visible outcome.
                status="PENDING",
                customer_id=d["customer_id"],
                campaign_id="c1",
                product_id="p1",
                purchase_id=d["purchase_id"],
                billing_cycle=1,
                completes_trial=rerun.completes_trial,
                recurring_product=rerun.recurring_product,
                shippable=rerun.shippable,
                gateway_id="nmi",
                amount_minor=d["amount_minor"],
                currency="USD",
                ip_address=d["ip_address"],
                latest_transaction_id=d["transaction_id"],
                has_payment_token=True,
                updated_at=NIGHT0,
            )
        )
        if rerun.with_purchase:
            conn.execute(
                insert(Subscription).values(
                    id=d["purchase_id"],
                    customer_id=d["customer_id"],
                    order_id=d["order_id"],
                    campaign_id="c1",
                    product_id="p1",
                    status="ACTIVE",
                    billing_cycle=1,
                    billing_interval_days=30,
                    shippable=rerun.shippable,
                    price_minor=d["amount_minor"],
                    currency="USD",
                    gateway_id="nmi",
                    has_payment_token=True,
                    updated_at=NIGHT0,
                )
            )
        conn.execute(
            insert(Handoff).values(
                id=handoff_id,
                source=Source.RERUN.value,
                order_id=d["order_id"],
                purchase_id=d["purchase_id"],
                transaction_id=d["transaction_id"],
                gateway_id="ff",
                declining_gateway_id="nmi",
                billing_cycle=1,
                amount_minor=d["amount_minor"],
                currency="USD",
                idempotency_key=key,
                request_body=json.dumps(body),
                dedupe_key=f"RERUN:{d['order_id']}:{d['transaction_id']}",
                state="PENDING",
                created_at=NIGHT0,
                expires_at=NIGHT0 + timedelta(days=ff.expiry_days),
                poll_count=0,
                resend_count=0,
                late_outcome=False,
                updated_at=NIGHT0,
            )
        )
        conn.execute(
            insert(HandoffEvent).values(
                handoff_id=handoff_id,
                kind="CREATED",
                source="RESPONSE",
                state_after="PENDING",
                amount_minor=d["amount_minor"],
                idempotency_key=key,
                occurred_at=NIGHT0,
            )
        )
    return handoff_id


def world_snapshot(engine: Engine) -> dict[str, Any]:
    """Every row reconcile may touch, for an exact before/after comparison."""
    with engine.connect() as conn:
        return {
            "handoffs": sorted(tuple(r) for r in conn.execute(select(Handoff))),
            "subscriptions": sorted(tuple(r) for r in conn.execute(select(Subscription))),
            "orders": sorted(tuple(r) for r in conn.execute(select(Order))),
            "fulfillments": sorted(tuple(r) for r in conn.execute(select(Fulfillment))),
            "changes": conn.execute(select(func.count()).select_from(Change)).scalar_one(),
            "handoff_events": conn.execute(select(func.count()).select_from(HandoffEvent)).scalar_one(),
            "webhook_deliveries": conn.execute(
                select(func.count()).select_from(WebhookDelivery)
            ).scalar_one(),
        }


def wait_for_webhooks(sandbox: RunningSandbox, engine: Engine, played: Played) -> None:
    """Until every webhook the sandbox sent is journaled and every outcome it brought is applied."""
    deadline = time.monotonic() + 15
    while True:
        hooks = admin(sandbox, "webhooks")["items"]
        pending = [h for h in hooks if h["state"] == "pending"]
        posted = sum(1 + int(h["duplicated"]) for h in hooks if h["state"] == "delivered")
        with engine.connect() as conn:
            journaled = conn.execute(
                select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.accepted.is_(True))
            ).scalar_one()
            unapplied = conn.execute(
                select(func.count())
                .select_from(OutcomeQueue)
                .join(Handoff, Handoff.id == OutcomeQueue.handoff_id)
                .where(Handoff.outcome_source == "WEBHOOK")
            ).scalar_one()
            waiting = backlog(conn).waiting  # acknowledged, not yet applied by the service's writer
        if not pending and journaled == posted and waiting == 0 and unapplied == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"webhooks not settled: {len(pending)} pending, {journaled}/{posted} journaled, "
                f"{waiting} in the inbox, {unapplied} outcomes unapplied; on_accepted errors: {played.on_accepted_errors}"
            )
        time.sleep(0.02)


def play(
    tmp_path: Path, db_url: str, engine: Engine, after_night: Callable[[int], None] | None = None
) -> Played:
    """Hand off the book, then live 23 nights: FlexFactor's day, submit, reconcile (twice); then
    `after_night(n)`, if given, once FlexFactor's day after night n is over."""
    with ExitStack() as stack:
        sandbox = stack.enter_context(run_sandbox())
        admin(sandbox, "clock", {"now": iso(NIGHT0), "frozen": True})
        settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url))
        clock = SandboxTime(sandbox)
        played = Played(settings, engine, insert_book(engine, settings))

        def on_accepted(ids: list[str]) -> None:
            # As bootstrap wires it: a webhook's final news reaches orders and subscriptions at once.
            try:
                apply_outcomes(settings, engine, now=clock.now(), handoff_ids=ids)
            except Exception as exc:
                played.on_accepted_errors.append(f"{type(exc).__name__}: {exc}")
                raise
            played.on_accepted_calls.append(ids)

        url = stack.enter_context(serving(create_app(settings, engine, clock, on_accepted=on_accepted)))
        admin(sandbox, "config", {"webhook_url": f"{url}/webhooks/flexfactor/ff"})
        # Every webhook FlexFactor sends in this book arrives twice (the second marked IsResent).
        admin(sandbox, "faults", {"duplicate_webhook_rate": 1})

        def flexfactor_until(at: datetime) -> None:
            admin(sandbox, "clock", {"now": iso(at)})
            wait_for_webhooks(sandbox, engine, played)

        for n in range(NIGHTS):
            submit_at, reconcile_at = night(n), night(n) + RECONCILE_AFTER
            if n in HAND_OFF_NIGHTS:
                flexfactor_until(submit_at)
            submitted = submit_night(settings, engine, submit_at)
            played.submits[n] = submitted.counts
            if n in HAND_OFF_NIGHTS:
                played.handoff_ids |= _recycle_handoffs(engine)
            clients = flexfactor_clients(settings, FixedClock(reconcile_at))
            reconciling = Night.of(reconcile_at, settings.timezone)
            send_clock = FixedClock(reconcile_at)
            played.reconciles[n] = run_reconcile(
                settings, engine, clients, night=reconciling, send_clock=send_clock
            ).counts
            wait_for_webhooks(sandbox, engine, played)  # our cancels at the window's end echo back
            before = world_snapshot(engine)
            run_reconcile(settings, engine, clients, night=reconciling, send_clock=send_clock)
            wait_for_webhooks(sandbox, engine, played)
            after = world_snapshot(engine)
            played.second_reconcile_diffs[n] = [k for k in before if before[k] != after[k]]
            if n == DROP_AFTER_NIGHT:
                # Only the night-1 rescue falls in this day: FlexFactor loses its webhook.
                admin(sandbox, "faults", {"drop_webhook_rate": 1})
            flexfactor_until(night(n) + FLEXFACTOR_DAY)
            if n == DROP_AFTER_NIGHT:
                admin(sandbox, "faults", {"drop_webhook_rate": 0})
            if n == 21:
                _late_news(sandbox, engine, played)
            if after_night is not None:
                after_night(n)
        played.sandbox_webhooks = admin(sandbox, "webhooks")["items"]
        return played


def _recycle_handoffs(engine: Engine) -> dict[str, str]:
    """Book name -> id of the RECYCLE hand-offs made so far."""
    with engine.connect() as conn:
        rows = conn.execute(select(Handoff.purchase_id, Handoff.id).where(Handoff.source == "RECYCLE"))
        return {str(purchase).removeprefix("sub-"): handoff_id for purchase, handoff_id in rows}


def _late_news(sandbox: RunningSandbox, engine: Engine, played: Played) -> None:
    """After we settled the 0259 windows as EXPIRED: an operator revives one purchase in the CRM,
    then FlexFactor reports a rescue for two of the three orders after all."""
    with engine.begin() as conn:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == "sub-late-unapplied")
            .values(status="ACTIVE", failure_cause=None, next_bill_on=REVIVED_ON)
        )
    for name in ("late-applied", "late-unapplied"):
        ff_id = played.handoff(name).flexfactor_order_id
        sent = admin(sandbox, "webhooks/send", {"flexfactor_order_id": ff_id, "event": "order.completed"})
        assert sent["delivered"], sent
    wait_for_webhooks(sandbox, engine, played)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def played(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    """The book played over 23 nights on a freshly migrated SQLite file, then on PostgreSQL."""
    tmp_path = tmp_path_factory.mktemp(f"lifecycle-{request.param}")
    with ExitStack() as stack:
        if request.param == "sqlite":
            db_url = _fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
        else:
            db_url = stack.enter_context(contextmanager(_fresh_pg)(request.getfixturevalue("pg_template")))
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        yield play(tmp_path, db_url, engine)


# --- what the nights left -----------------------------------------------------------------------------

WINDOW_END = night(21) + RECONCILE_AFTER  # the reconcile that finds the night-0 windows closed
LATE_NEWS = night(21) + FLEXFACTOR_DAY  # FlexFactor's late rescues reach us that afternoon

EXPECTED_FINAL: Mapping[str, tuple[str, str, datetime]] = {  # state, outcome source, outcome time
    "rescued": ("APPROVED", "WEBHOOK", night(1)),  # FlexFactor's clock reaches night 1 before our submit
    "declined": ("DECLINED", "RESPONSE", night(0)),
    "expired": ("EXPIRED", "EXPIRY", WINDOW_END),
    "late-applied": ("APPROVED", "WEBHOOK", LATE_NEWS),
    "late-unapplied": ("APPROVED", "WEBHOOK", LATE_NEWS),
    "dropped": ("APPROVED", "POLL", night(3) + RECONCILE_AFTER),  # the first poll after the rescue
    # FlexFactor cancelled it at night 3 (the event's TimeStamp); the delivery came that afternoon
    "cancelled": ("CANCELLED", "WEBHOOK", night(3)),
    "rr-trial": ("DECLINED", "RESPONSE", night(0)),
    "rr-declined": ("DECLINED", "RESPONSE", night(0)),
    "rr-saved": ("APPROVED", "RESPONSE", night(0)),
}
SAVED = ("rescued", "dropped", "late-applied")  # recurring successes the engine applied
LOST = ("declined", "expired", "cancelled")  # recurring failures


def test_given_the_book_when_22_nights_pass_then_each_handoff_ends_in_its_state_told_by_its_source(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    # then
    finals = {
        name: (h.state, h.outcome_source, h.outcome_at, outcome_applied(played.engine, h.id))
        for name in EXPECTED_FINAL
        for h in [played.handoff(name)]
    }
    assert finals == {name: (*final, True) for name, final in EXPECTED_FINAL.items()}
    assert {name: played.handoff(name).late_outcome for name in EXPECTED_FINAL} == {
        name: name.startswith("late-") for name in EXPECTED_FINAL
    }
    with played.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Handoff)).scalar_one() == len(EXPECTED_FINAL)


def test_given_the_book_when_22_nights_pass_then_each_saved_purchase_bills_its_next_cycle_on_the_declining_gateway(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    with played.engine.connect() as conn:
        subs = {s.id: s for s in conn.execute(select(Subscription))}
    # then: ACTIVE at cycle 4, next bill = local approval date + 30 days, back on nmi, regular price
    for name in SAVED:
        approved_on = local_day(EXPECTED_FINAL[name][2])
        sub = subs[f"sub-{name}"]
        assert (
            sub.status,
            sub.billing_cycle,
            sub.next_bill_on,
            sub.gateway_id,
            sub.price_minor,
            sub.failure_cause,
            sub.open_handoff_id,
            sub.next_attempt_on,
        ) == ("ACTIVE", 4, approved_on + timedelta(days=30), "nmi", 4999, None, None, None), name
    assert [subs[f"sub-{n}"].next_bill_on for n in SAVED] == [
        date(2026, 7, 11),
        date(2026, 7, 13),
        date(2026, 7, 31),
    ]


def test_given_the_book_when_22_nights_pass_then_each_lost_purchase_ends_recycle_failed_by_flexfactor(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    with played.engine.connect() as conn:
        subs = {s.id: s for s in conn.execute(select(Subscription))}
    # then: declined at once, cancelled by FlexFactor, or our window closed: all FLEXFACTOR_FAILED
    for name in LOST:
        sub = subs[f"sub-{name}"]
        assert (
            sub.status,
            sub.failure_cause,
            sub.billing_cycle,
            sub.gateway_id,
            sub.open_handoff_id,
            sub.next_attempt_on,
            sub.next_bill_on,
        ) == ("RECYCLE_FAILED", "FLEXFACTOR_FAILED", 3, "ff", None, None, None), name


def test_given_the_book_when_22_nights_pass_then_each_order_follows_the_outcome_table_with_the_trial_exception(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    with played.engine.connect() as conn:
        orders = {o.id: (o.status, o.has_payment_token) for o in conn.execute(select(Order))}
        rr_purchase = conn.execute(select(Subscription).where(Subscription.id == "sub-rr-saved")).one()
    # then
    assert orders == {
        # recurring: a saved rebill order is paid after all; a lost one stays declined
        "ord-rescued": ("COMPLETE", True),
        "ord-dropped": ("COMPLETE", True),
        "ord-late-applied": ("COMPLETE", True),
        "ord-late-unapplied": ("DECLINED", True),  # the money came in, but the purchase had moved on
        "ord-declined": ("DECLINED", True),
        "ord-expired": ("DECLINED", True),
        "ord-cancelled": ("DECLINED", True),
        # new sales: failure DECLINED, except the charge that completes a trial (unchanged); a saved
        # sale with a recurring product leaves FlexFactor holding the card: no token for rebills
        "ord-rr-trial": ("PENDING", True),
        "ord-rr-declined": ("DECLINED", True),
        "ord-rr-saved": ("COMPLETE", False),
    }
    assert (rr_purchase.status, rr_purchase.billing_cycle, rr_purchase.has_payment_token) == (
        "ACTIVE",
        1,
        False,
    )


def test_given_the_book_when_22_nights_pass_then_each_shippable_item_and_cycle_is_held_once(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights, every webhook sent twice, reconcile run twice a night
    fulfillments = played.rows(Fulfillment)
    # then: one HOLD record per saved shippable order, cycle and product, pointing at its hand-off
    assert sorted(
        (f.order_id, f.product_id, f.billing_cycle, f.status, f.handoff_id) for f in fulfillments
    ) == sorted(
        [
            ("ord-rescued", "p1", 3, "HOLD", played.handoff_ids["rescued"]),
            ("ord-dropped", "p1", 3, "HOLD", played.handoff_ids["dropped"]),
            ("ord-late-applied", "p1", 3, "HOLD", played.handoff_ids["late-applied"]),
            ("ord-rr-saved", "p1", 1, "HOLD", played.handoff_ids["rr-saved"]),
        ]
    )


def test_given_a_dropped_webhook_and_duplicated_ones_when_the_nights_pass_then_the_poll_finds_the_one_and_the_others_count_once(
    played: Played,
) -> None:
    # given: FlexFactor sent every webhook twice, and lost the one of the night-1 rescue
    hooks = {(h["external_order_id"], h["event"]): h for h in played.sandbox_webhooks}
    dropped = hooks[(played.handoff_ids["dropped"], "order.completed")]
    assert (dropped["state"], dropped["attempts"]) == ("dropped", 0)
    # when / then: nothing of it reached us; the poll settled it (see the states above)
    with played.engine.connect() as conn:
        deliveries = list(conn.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)))
    assert played.handoff("dropped").flexfactor_order_id not in {d.flexfactor_order_id for d in deliveries}
    # then: each delivered event was journaled twice, the second as a resent duplicate without effect
    by_key = Counter((d.external_order_id, d.event, d.is_duplicate) for d in deliveries)
    for h in played.sandbox_webhooks:
        if h["state"] == "delivered" and h["duplicated"]:
            key = (h["external_order_id"], h["event"])
            assert (by_key[(*key, False)], by_key[(*key, True)]) == (1, 1), key
    assert {d.reason for d in deliveries if d.is_duplicate} == {"duplicate"}
    assert all(d.accepted and d.http_status == 200 for d in deliveries)
    # and the outcomes webhooks brought were applied at once, by the service, without an error
    assert played.on_accepted_errors == []
    # (a busy writer may apply two deliveries in one batch, so the calls are compared by the ids they bore)
    assert sorted(i for ids in played.on_accepted_calls for i in ids) == sorted(
        played.handoff_ids[n] for n in ("rescued", "cancelled", "late-applied", "late-unapplied")
    )


def test_given_a_window_we_settled_as_expired_when_flexfactor_reports_a_late_rescue_then_a_purchase_still_failed_by_it_is_saved(
    played: Played,
) -> None:
    # given: night 21 settled the window EXPIRED and failed the purchase (FLEXFACTOR_FAILED)
    # when: FlexFactor's order.completed arrives that afternoon
    handoff = played.handoff("late-applied")
    # then: the money is not lost: applied as a save, and marked late
    assert (handoff.state, handoff.late_outcome, handoff.attention) == ("APPROVED", True, None)
    with played.engine.connect() as conn:
        sub = conn.execute(select(Subscription).where(Subscription.id == "sub-late-applied")).one()
        status_changes = [
            (c.old_value, c.new_value)
            for c in conn.execute(
                select(Change)
                .where(Change.entity_id == "sub-late-applied", Change.field == "status")
                .order_by(Change.id)
            )
        ]
    assert (sub.status, sub.billing_cycle, sub.next_bill_on, sub.gateway_id) == (
        "ACTIVE",
        4,
        date(2026, 7, 31),
        "nmi",
    )
    assert status_changes == [
        ("RECYCLE_BILLING", "RECYCLE_FAILED"),
        ("RECYCLE_FAILED", "ACTIVE"),
    ]


def test_given_a_purchase_failed_then_saved_late_when_changes_are_exported_then_the_crm_clears_its_cause_once(
    played: Played,
) -> None:
    # given: night 21 failed two purchases (FLEXFACTOR_FAILED); a late rescue saved one of them, while
    # the night-1 rescue saved a purchase that never failed
    # when: the CRM reads the outbox
    out = io.StringIO()
    export_changes(played.engine, out, since=NIGHT0, fmt=ExportFormat.CSV)
    causes = [
        (r["entity_id"], r["old_value"], r["new_value"], r["source"])
        for r in csv.DictReader(io.StringIO(out.getvalue()))
        if r["field"] == "failure_cause" and r["entity_id"] in ("sub-late-applied", "sub-rescued")
    ]
    # then: the cause is set by the settlement and cleared (empty) by the rescue, once each; the
    # purchase saved at its first outcome never had a cause to clear
    assert causes == [
        ("sub-late-applied", "", "FLEXFACTOR_FAILED", "EXPIRY"),
        ("sub-late-applied", "FLEXFACTOR_FAILED", "", "WEBHOOK"),
    ]


def test_given_a_window_we_settled_as_expired_when_a_late_rescue_finds_the_purchase_revived_then_it_is_a_reconciliation_exception(
    played: Played,
) -> None:
    # given: night 21 failed the purchase; an operator then revived it in the CRM (ACTIVE, new bill date)
    # when: FlexFactor's late order.completed arrives
    handoff = played.handoff("late-unapplied")
    # then: recorded as APPROVED, but the purchase is not moved again: the billing team must act
    assert (handoff.state, handoff.late_outcome, handoff.attention) == (
        "APPROVED",
        True,
        "LATE_APPROVAL_UNAPPLIED",
    )
    with played.engine.connect() as conn:
        sub = conn.execute(select(Subscription).where(Subscription.id == "sub-late-unapplied")).one()
        touched = conn.execute(
            select(func.count())
            .select_from(Change)
            .where(Change.handoff_id == handoff.id, Change.occurred_at >= LATE_NEWS)
        ).scalar_one()
    assert (sub.status, sub.billing_cycle, sub.next_bill_on, sub.gateway_id) == (
        "ACTIVE",
        3,
        REVIVED_ON,
        "ff",
    )
    assert touched == 0


def test_given_windows_we_closed_with_a_cancel_when_flexfactor_reports_that_cancel_then_they_stay_expired_without_a_conflict(
    played: Played,
) -> None:
    # given: night 21 cancelled the three 0259 orders at FlexFactor and settled them EXPIRED
    names = ("expired", "late-applied", "late-unapplied")
    ff_ids = {played.handoff(n).flexfactor_order_id: n for n in names}
    # when: FlexFactor answered each of our cancels with order.cancelled (sent twice)
    with played.engine.connect() as conn:
        echoes = [
            (ff_ids[d.flexfactor_order_id], d.reason, d.is_duplicate)
            for d in conn.execute(select(WebhookDelivery).where(WebhookDelivery.event == "order.cancelled"))
            if d.flexfactor_order_id in ff_ids
        ]
        conflicts = conn.execute(
            select(func.count()).select_from(HandoffEvent).where(HandoffEvent.kind == "CONFLICT")
        ).scalar_one()
    # then: our own news, recorded once each and moving nothing: no CANCELLED state, no conflict
    assert sorted(echoes) == sorted(
        [(n, "no change", False) for n in names] + [(n, "duplicate", True) for n in names]
    )
    assert conflicts == 0
    for name in names:
        after_window = [
            (e.kind, e.source, e.state_after) for e in played.events(name) if e.occurred_at >= night(20)
        ]
        assert ("CANCELLED", "WEBHOOK", "EXPIRED") in after_window, name
        assert "CANCELLED" not in {e.state_after for e in played.events(name)}, name
    assert [played.handoff(n).attention for n in names] == [None, None, "LATE_APPROVAL_UNAPPLIED"]


def test_given_the_book_when_22_nights_pass_then_every_state_change_is_a_history_event_with_its_source(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    def moves(name: str) -> list[tuple[str, str, str]]:
        """The events that moved the hand-off (polls that found it still working are left out)."""
        out: list[tuple[str, str, str]] = []
        for e in played.events(name):
            if e.kind == "POLLED" or (out and e.state_after == out[-1][2]):
                continue
            out.append((e.kind, e.source, e.state_after))
        return out

    created, accepted = ("CREATED", "RESPONSE", "PENDING"), ("ACCEPTED", "RESPONSE", "SUBMITTED")
    # then
    assert {name: moves(name) for name in EXPECTED_FINAL} == {
        "rescued": [created, accepted, ("APPROVED", "WEBHOOK", "APPROVED")],
        "declined": [created, ("DECLINED", "RESPONSE", "DECLINED")],
        "expired": [created, accepted, ("WINDOW_ENDED", "EXPIRY", "EXPIRED")],
        "late-applied": [
            created,
            accepted,
            ("WINDOW_ENDED", "EXPIRY", "EXPIRED"),
            ("APPROVED", "WEBHOOK", "APPROVED"),
        ],
        "late-unapplied": [
            created,
            accepted,
            ("WINDOW_ENDED", "EXPIRY", "EXPIRED"),
            ("APPROVED", "WEBHOOK", "APPROVED"),
        ],
        "dropped": [created, accepted, ("APPROVED", "POLL", "APPROVED")],
        "cancelled": [created, accepted, ("CANCELLED", "WEBHOOK", "CANCELLED")],
        "rr-trial": [created, ("DECLINED", "RESPONSE", "DECLINED")],
        "rr-declined": [created, ("DECLINED", "RESPONSE", "DECLINED")],
        "rr-saved": [created, ("APPROVED", "RESPONSE", "APPROVED")],
    }
    with played.engine.connect() as conn:
        sources = set(conn.execute(select(HandoffEvent.source).distinct()).scalars())
        polls = Counter(
            conn.execute(select(HandoffEvent.kind).where(HandoffEvent.source == "POLL")).scalars()
        )
    assert sources == {"RESPONSE", "WEBHOOK", "POLL", "EXPIRY"}
    # Polls that found FlexFactor still working: the 0259 orders on nights 1 to 20 (on night 21 the
    # window is closed and the settlement speaks), the night-1 orders on night 2, the 0119 one on 3.
    assert polls == {"POLLED": 3 * 20 + 2 + 1, "APPROVED": 1}


def test_given_the_book_when_22_nights_pass_then_every_order_and_subscription_change_names_its_handoff_and_source(
    played: Played,
) -> None:
    # given / when: the book played over 23 nights
    with played.engine.connect() as conn:
        changes = list(conn.execute(select(Change).order_by(Change.id)))

    def ordered(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return sorted(rows, key=lambda row: tuple("" if v is None else v for v in row))  # None sorts first

    by_handoff = {
        name: ordered(
            (c.entity, c.entity_id, c.field, c.old_value, c.new_value, c.source)
            for c in changes
            if c.handoff_id == handoff_id
        )
        for name, handoff_id in played.handoff_ids.items()
    }

    def saved(name: str, source: str, next_bill_on: str, old_status: str = "RECYCLE_BILLING") -> list[Any]:
        sub, order = f"sub-{name}", f"ord-{name}"
        return [
            ("FULFILLMENT", order, "status", None, "HOLD", source),
            ("ORDER", order, "status", "DECLINED", "COMPLETE", source),
            ("SUBSCRIPTION", sub, "billing_cycle", "3", "4", source),
            ("SUBSCRIPTION", sub, "gateway_id", None, "nmi", source),
            ("SUBSCRIPTION", sub, "next_bill_on", None, next_bill_on, source),
            ("SUBSCRIPTION", sub, "status", old_status, "ACTIVE", source),
        ]

    def failed(name: str, source: str) -> list[Any]:
        return [
            ("SUBSCRIPTION", f"sub-{name}", "failure_cause", None, "FLEXFACTOR_FAILED", source),
            ("SUBSCRIPTION", f"sub-{name}", "status", "RECYCLE_BILLING", "RECYCLE_FAILED", source),
        ]

    # then: each change row points at the hand-off whose outcome made it, and says how that outcome came
    assert by_handoff == {
        "rescued": saved("rescued", "WEBHOOK", "2026-07-11"),
        "dropped": saved("dropped", "POLL", "2026-07-13"),
        "declined": failed("declined", "RESPONSE"),
        "cancelled": failed("cancelled", "WEBHOOK"),
        "expired": failed("expired", "EXPIRY"),
        "late-applied": ordered(
            failed("late-applied", "EXPIRY")
            + saved("late-applied", "WEBHOOK", "2026-07-31", "RECYCLE_FAILED")
            # The revival clears the cause it had: the CRM must not keep it.
            + [("SUBSCRIPTION", "sub-late-applied", "failure_cause", "FLEXFACTOR_FAILED", None, "WEBHOOK")]
        ),
        "late-unapplied": failed("late-unapplied", "EXPIRY"),
        "rr-trial": [],
        "rr-declined": [("ORDER", "ord-rr-declined", "status", "PENDING", "DECLINED", "RESPONSE")],
        "rr-saved": [
            ("FULFILLMENT", "ord-rr-saved", "status", None, "HOLD", "RESPONSE"),
            ("ORDER", "ord-rr-saved", "has_payment_token", None, "False", "RESPONSE"),
            ("ORDER", "ord-rr-saved", "status", "PENDING", "COMPLETE", "RESPONSE"),
            ("SUBSCRIPTION", "sub-rr-saved", "has_payment_token", None, "False", "RESPONSE"),
        ],
    }
    assert len(changes) == sum(len(rows) for rows in by_handoff.values())  # none without its hand-off


def test_given_any_night_when_reconcile_runs_again_at_the_same_time_then_nothing_changes(
    played: Played,
) -> None:
    # given: each night reconcile ran once
    # when: it ran a second time at the same logical time
    # then: no hand-off, purchase, order, fulfillment, change, event or delivery differs
    assert played.second_reconcile_diffs == {n: [] for n in range(NIGHTS)}
    assert {n: c["applied_approved"] + c["applied_failed_outcome"] for n, c in played.reconciles.items()} == {
        n: {0: 4, 3: 1, 21: 3}.get(n, 0) for n in range(NIGHTS)
    }
    with played.engine.connect() as conn:
        runs = Counter(conn.execute(select(JobRun.job, JobRun.status)).all())
    assert runs == {("submit", "SUCCEEDED"): NIGHTS, ("reconcile", "SUCCEEDED"): 2 * NIGHTS}
