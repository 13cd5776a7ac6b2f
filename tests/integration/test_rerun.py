"""Reruns of declined initial sales against the sandbox over HTTP: eligibility, queueing, --now, outcomes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, update

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.cli import main
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.sandbox.state import iso
from recycle_engine.services.initial_sales.rerun import RerunReport, rerun_orders
from recycle_engine.services.nightly.submit import run_submit
from recycle_engine.services.outcomes.reconcile import run_reconcile
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Fulfillment, Handoff, Order, Subscription
from tests.factories import outcome_applied
from tests.factories_sales import (
    NIGHT,
    SALES_ENV,
    a_declined_sale,
    a_sales_settings_file,
    admin,
    evaluates,
    handoff_count,
    insert_declined_sale,
    load_sales_settings,
    one,
    reset_sandbox,
    sandbox_orders,
)

QUEUED_AT = NIGHT - timedelta(hours=6)  # an operator's afternoon, before the night's run


@dataclass
class World:
    settings: Settings
    engine: Engine
    sandbox: RunningSandbox

    def rerun(self, *order_ids: str, gateway: str = "ff", now: bool = False) -> RerunReport:
        clients = flexfactor_clients(self.settings, FixedClock(QUEUED_AT)) if now else {}
        return rerun_orders(
            self.settings,
            self.engine,
            clients,
            list(order_ids),
            gateway_id=gateway,
            now=QUEUED_AT,
            send_now=now,
        )

    def night(self) -> None:
        """The nightly submit, then reconcile, at NIGHT."""
        clients = flexfactor_clients(self.settings, FixedClock(NIGHT))
        run_submit(
            self.settings,
            self.engine,
            clients,
            processors(self.settings),
            night=Night.of(NIGHT, self.settings.timezone),
            send_clock=FixedClock(NIGHT),
        )
        run_reconcile(
            self.settings,
            self.engine,
            clients,
            night=Night.of(NIGHT, self.settings.timezone),
            send_clock=FixedClock(NIGHT),
        )


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        yield sb


@pytest.fixture
def make_world(tmp_path: Path, db_url: str, sandbox_server: RunningSandbox) -> Iterator[Callable[..., World]]:
    engine = make_engine(db_url)
    sandbox = reset_sandbox(sandbox_server)

    def make(**settings: Any) -> World:
        path = a_sales_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url, **settings)
        return World(load_sales_settings(path), engine, sandbox)

    yield make
    engine.dispose()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def _refusal(report: RerunReport) -> str | None:
    refusal = report.results[0].refusal
    return None if refusal is None else refusal.code


@pytest.mark.parametrize(
    ("decline", "status", "gateway", "code"),
    [
        pytest.param({"order_type": "UPSALE"}, "DECLINED", "ff", "NOT_NEW_SALE", id="upsale"),
        pytest.param(
            {"order_type": "REBILL", "billing_cycle": 3}, "DECLINED", "ff", "NOT_NEW_SALE", id="rebill"
        ),
        pytest.param({}, "PENDING", "ff", "NOT_DECLINED", id="not-declined"),
        pytest.param({}, "COMPLETE", "ff", "ORDER_COMPLETE", id="complete"),
        pytest.param(
            {"response_type": "HARD_DECLINE", "decline_type": "HARD", "response_text": "Stolen card"},
            "DECLINED",
            "ff",
            "HARD_DECLINE",
            id="hard-decline",
        ),
        pytest.param({}, "DECLINED", "nmi", "NOT_FLEXFACTOR", id="non-flexfactor-gateway"),
        pytest.param({}, "DECLINED", "atri-1", "VIA_ATRI", id="atri-profile-id"),
        pytest.param({}, "DECLINED", "no-such-gateway", "NOT_FLEXFACTOR", id="unknown-gateway"),
    ],
)
def test_given_an_ineligible_order_when_it_is_rerun_then_it_is_refused_with_its_reason_and_nothing_changes(
    world: World, decline: dict[str, Any], status: str, gateway: str, code: str
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale(**decline), status=status)
    # when
    report = world.rerun("ord-s1", gateway=gateway)
    # then
    assert _refusal(report) == code
    assert report.results[0].refusal is not None
    assert report.results[0].refusal.reason
    assert (report.queued, report.sent, report.refused) == (0, 0, 1)
    assert handoff_count(world.engine) == 0
    assert one(world.engine, select(Order.status)).status == status


def test_given_an_unknown_order_when_it_is_rerun_then_it_is_refused(world: World) -> None:
    # when
    report = world.rerun("ord-missing")
    # then
    assert _refusal(report) == "UNKNOWN_ORDER"


def test_given_a_queued_rerun_when_the_order_is_rerun_again_then_it_is_refused_as_already_handed_off(
    world: World,
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale())
    first = world.rerun("ord-s1")
    # when
    second = world.rerun("ord-s1")
    # then
    assert first.queued == 1
    assert _refusal(second) == "OPEN_HANDOFF"
    assert handoff_count(world.engine) == 1


def test_given_a_decline_whose_rerun_already_failed_when_it_is_rerun_again_then_it_is_refused(
    world: World,
) -> None:
    # given: the first rerun of this decline ended DECLINED (card 0341)
    insert_declined_sale(world.engine, a_declined_sale(card_last4="0341"))
    first = world.rerun("ord-s1", now=True)
    # when
    second = world.rerun("ord-s1")
    # then
    assert first.results[0].view is not None
    assert first.results[0].view.state == "DECLINED"
    assert _refusal(second) == "ALREADY_HANDED_OFF"
    assert handoff_count(world.engine) == 1


def test_given_a_hard_decline_that_a_mapping_rule_makes_soft_when_it_is_rerun_then_it_is_queued(
    make_world: Callable[..., World],
) -> None:
    # given: the CRM said hard; a New Sales rule for this MID says soft
    world = make_world(
        decline_mapping='[{gateway: nmi, order_type: NEW_SALE, contains: "pick up card", map_to: SOFT}]'
    )
    insert_declined_sale(
        world.engine,
        a_declined_sale(
            response_type="HARD_DECLINE", decline_type="HARD", response_text="Pick up card (no fraud)"
        ),
    )
    # when
    report = world.rerun("ord-s1")
    # then
    assert (report.queued, report.refused) == (1, 0)


def test_given_a_queued_rerun_when_the_night_runs_then_submit_sends_it_as_a_cit_with_an_expiry(
    world: World,
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale())
    report = world.rerun("ord-s1")
    handoff_id = report.results[0].handoff_id
    assert evaluates(world.sandbox) == []  # queueing sends nothing
    # when
    world.night()
    # then: exactly one /evaluate, for this hand-off, a CIT with a window counted from the send at
    # NIGHT, not from the queueing six hours before (the window is not short by the queue delay)
    assert [call["order_id"] for call in evaluates(world.sandbox)] == [handoff_id]
    (ff_order,) = sandbox_orders(world.sandbox)
    assert ff_order["is_mit"] is False
    assert ff_order["expiry_date"] == iso(NIGHT + timedelta(days=21))
    h = one(world.engine, select(Handoff))
    body = json.loads(h.request_body)
    assert (body["isMIT"], body["isRecurring"], "subscription" in body) == (False, False, False)
    assert body["expiryDateUtc"] == iso(NIGHT + timedelta(days=21))
    assert (h.created_at, h.first_sent_at, h.expires_at) == (QUEUED_AT, NIGHT, NIGHT + timedelta(days=21))
    assert (h.source, h.slot, h.attempt, h.dedupe_key) == ("RERUN", None, None, "RERUN:ord-s1:txn-s1")
    assert (h.state, h.outcome_source, h.declining_gateway_id) == ("APPROVED", "RESPONSE", "nmi")
    assert one(world.engine, select(Order.status)).status == "COMPLETE"  # applied by reconcile


@pytest.mark.parametrize(("recurring", "token_after"), [(True, False), (False, True)])
def test_given_a_card_flexfactor_approves_when_rerun_now_then_the_order_is_complete_with_a_fulfillment(
    world: World, recurring: bool, token_after: bool
) -> None:
    # given
    insert_declined_sale(world.engine, a_declined_sale(recurring_product=recurring))
    # when
    report = world.rerun("ord-s1", now=True)
    # then
    view = report.results[0].view
    assert view is not None
    assert (view.state, view.order_status, view.has_payment_token) == ("APPROVED", "COMPLETE", token_after)
    assert (report.queued, report.sent, report.refused) == (0, 1, 0)
    order = one(world.engine, select(Order))
    assert (order.status, order.has_payment_token) == ("COMPLETE", token_after)
    fulfillment = one(world.engine, select(Fulfillment))
    assert (fulfillment.order_id, fulfillment.billing_cycle, fulfillment.status) == ("ord-s1", 1, "HOLD")
    if recurring:
        # The next rebill runs without a stored token: FlexFactor kept the card (domain.md 8).
        assert one(world.engine, select(Subscription.has_payment_token)).has_payment_token is False
    h = one(world.engine, select(Handoff))
    assert outcome_applied(world.engine, h.id)


@pytest.mark.parametrize(("completes_trial", "status_after"), [(True, "PENDING"), (False, "DECLINED")])
def test_given_a_rerun_that_flexfactor_declines_then_a_trial_completing_order_keeps_its_status_and_others_are_declined(
    world: World, completes_trial: bool, status_after: str
) -> None:
    # given: a queued rerun (card 0341 declines); meanwhile the CRM held the order for review, so
    # the two rows of the outcome table show apart (a DECLINED order stays DECLINED either way)
    insert_declined_sale(world.engine, a_declined_sale(card_last4="0341", completes_trial=completes_trial))
    world.rerun("ord-s1")
    with world.engine.begin() as conn:
        conn.execute(update(Order).values(status="PENDING"))
    # when
    world.night()
    # then
    assert one(world.engine, select(Handoff.state)).state == "DECLINED"
    assert one(world.engine, select(Order.status)).status == status_after
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Fulfillment)).scalar_one() == 0


def test_given_order_ids_on_the_command_line_and_in_a_file_when_rerun_now_runs_then_it_reports_each_and_exits_non_zero_on_a_refusal(
    tmp_path: Path, db_url: str, sandbox_server: RunningSandbox
) -> None:
    # given: the command reads the wall clock, so the sandbox runs on real time here
    admin(sandbox_server, "reset", {})
    path = a_sales_settings_file(tmp_path, db_url=db_url, base_url=sandbox_server.base_url)
    engine = make_engine(db_url)
    insert_declined_sale(engine, a_declined_sale())
    engine.dispose()
    ids = tmp_path / "orders.txt"
    ids.write_text("# reruns asked for by support\nord-s1\n\nord-missing\n", encoding="utf-8")
    # when
    result = CliRunner().invoke(
        main,
        ["rerun", "ord-s1", "--gateway", "ff", "--now", "--from-file", str(ids), "--config", str(path)],
        env=SALES_ENV,
    )
    # then
    assert result.exit_code == 1
    assert "order COMPLETE, has_payment_token false" in result.stdout
    assert "rerun: queued 0, sent 1, refused 1" in result.stdout
    assert "refused ord-missing: UNKNOWN_ORDER" in result.stderr
