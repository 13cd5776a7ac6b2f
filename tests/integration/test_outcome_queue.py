"""The outcome queue: each final outcome reaches its order and purchase exactly once, whatever runs again,
crashes or arrives late (storage.outcome_queue, services.outcomes.applying)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select, text, update

from recycle_engine.adapters.flexfactor_webhooks import WebhookEvent
from recycle_engine.config import Settings
from recycle_engine.domain.states import Event, State, reported
from recycle_engine.services.outcomes.applying import _chunks, apply_outcomes
from recycle_engine.services.outcomes.webhook_events import store_delivery
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.handoff_repo import HandoffUpdate, apply_updates
from recycle_engine.storage.models import (
    Change,
    Fulfillment,
    Handoff,
    HandoffEvent,
    Order,
    OutcomeQueue,
    Subscription,
)
from recycle_engine.storage.outcome_queue import Pending, QueuedNews, enqueue
from recycle_engine.storage.profile_versions import record_profile_versions
from tests.factories import (
    a_decline,
    a_settings_file,
    insert_recycling,
    load_test_settings,
    outcome_applied,
)

SENT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
SETTLED = SENT + timedelta(days=21)  # our window closes: reconcile settles it EXPIRED
LATE = SETTLED + timedelta(hours=5)  # FlexFactor's rescue comes after all


@dataclass
class World:
    engine: Engine
    settings: Settings

    def subscription(self, n: int = 1) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(Subscription).where(Subscription.id == f"sub-{n}")).one()

    def count(self, model: Any) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model)).scalar_one())

    def queued(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            return [(r.handoff_id, r.state) for r in conn.execute(select(OutcomeQueue))]

    def apply(self, at: datetime, handoff_ids: list[str] | None = None, chunk: int = 20_000) -> Counter[str]:
        return apply_outcomes(
            self.settings, self.engine, now=at, run_id="test", handoff_ids=handoff_ids, chunk=chunk
        )


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    engine = make_engine(db_url)
    yield World(engine, load_test_settings(a_settings_file(tmp_path, db_url=db_url)))
    engine.dispose()


def hand_off(world: World, n: int = 1) -> str:
    """A RECYCLE_BILLING purchase waiting on its SUBMITTED hand-off, as submit leaves them."""
    decline = a_decline(transaction_id=f"txn-{n}", order_id=f"ord-{n}", purchase_id=f"sub-{n}")
    insert_recycling(world.engine, decline, last_attempt=4)
    handoff_id = f"ho-{n}"
    with world.engine.begin() as conn:
        conn.execute(
            insert(Handoff).values(
                id=handoff_id,
                source="RECYCLE",
                order_id=decline["order_id"],
                purchase_id=decline["purchase_id"],
                transaction_id=decline["transaction_id"],
                gateway_id="ff",
                declining_gateway_id="nmi",
                slot="4-6",
                attempt=4,
                billing_cycle=decline["billing_cycle"],
                amount_minor=4749,
                currency="USD",
                idempotency_key=f"key-{n}",
                request_body="{}",
                dedupe_key=f"RECYCLE:{handoff_id}",
                state="SUBMITTED",
                created_at=SENT,
                submitted_at=SENT,
                expires_at=SETTLED,
                flexfactor_order_id=f"ffo-{n}",
                updated_at=SENT,
            )
        )
        conn.execute(
            update(Subscription)
            .where(Subscription.id == decline["purchase_id"])
            .values(open_handoff_id=handoff_id)
        )
    return handoff_id


def settle(world: World, handoff_id: str, state: str, at: datetime, source: str = "POLL") -> None:
    """Record a final state as reconcile does (poll, lookup, evaluate answer and settlement alike)."""
    values = {"outcome_at": at, "outcome_source": source, "next_poll_at": None}
    with world.engine.begin() as conn:
        apply_updates(conn, [HandoffUpdate(handoff_id, values, reported(State(state)), source)], now=at)


def webhook(world: World, n: int, name: str, at: datetime) -> list[str]:
    news = WebhookEvent(name, at, f"ffo-{n}", f"ho-{n}", "C0NF", True, False)
    stored = store_delivery(
        world.engine, gateway_id="ff", event=news, nonce=f"n-{n}-{name}", body="{}", now=at
    )
    return stored.handoff_ids


# --- exactly once ----------------------------------------------------------------------------------


def test_given_a_recorded_outcome_then_it_is_queued_with_the_write_and_applying_it_dequeues_it(
    world: World,
) -> None:
    # given
    handoff_id = hand_off(world)
    # when
    settle(world, handoff_id, "APPROVED", SENT + timedelta(days=1))
    # then
    assert world.queued() == [(handoff_id, "APPROVED")]
    assert not outcome_applied(world.engine, handoff_id)
    # and when
    counts = world.apply(SENT + timedelta(days=1, hours=1))
    # then
    assert counts["approved"] == 1
    assert world.queued() == []
    assert outcome_applied(world.engine, handoff_id)
    assert (world.subscription().status, world.subscription().billing_cycle) == ("ACTIVE", 4)


def test_given_applied_outcomes_when_apply_runs_again_then_nothing_is_written_twice(world: World) -> None:
    # given: three outcomes applied
    ids = [hand_off(world, n) for n in (1, 2, 3)]
    for handoff_id, state in zip(ids, ("APPROVED", "DECLINED", "CANCELLED"), strict=True):
        settle(world, handoff_id, state, SENT + timedelta(days=2))
    first = world.apply(SENT + timedelta(days=2, hours=1), handoff_ids=None)
    written = (world.count(Change), world.count(Fulfillment))
    # when: applied again, all of them and each by id (as a webhook's hook would)
    again = world.apply(SENT + timedelta(days=3))
    by_id = world.apply(SENT + timedelta(days=3), handoff_ids=ids)
    # then
    assert (first["approved"], first["failed_outcome"]) == (1, 2)
    assert (again, by_id) == ({}, {})
    # the approval's 6 rows, and a status and a failure_cause row per failure
    assert (world.count(Change), world.count(Fulfillment)) == written == (6 + 2 * 2, 1)


def test_given_the_same_news_recorded_twice_then_it_is_queued_and_applied_once(world: World) -> None:
    # given: an approval applied
    handoff_id = hand_off(world)
    settle(world, handoff_id, "APPROVED", SENT + timedelta(days=1))
    world.apply(SENT + timedelta(days=1, hours=1))
    changes = world.count(Change)
    # when: a late poll writes the same final state again
    settle(world, handoff_id, "APPROVED", SENT + timedelta(days=2))
    # then: nothing is queued, and the purchase is not flagged as a late approval it could not take
    assert world.queued() == []
    assert world.apply(SENT + timedelta(days=2, hours=1)) == {}
    assert world.count(Change) == changes


def test_given_a_webhook_recorded_the_rescue_when_a_poll_read_before_it_is_written_then_the_rescue_stands(
    world: World,
) -> None:
    # given: a hand-off a webhook settled as APPROVED while a poll of it was in flight
    handoff_id = hand_off(world)
    rescued_at = SENT + timedelta(days=2)
    webhook(world, 1, "order.completed", rescued_at)
    # when: the poll, which read FlexFactor still processing, records what it read
    read = {
        "vendor_status": "Processing",
        "next_poll_at": SENT + timedelta(days=3),
        "last_error": None,
    }
    with world.engine.begin() as conn:
        update_ = HandoffUpdate(handoff_id, read, Event.ACCEPTED, "POLL", "polled")
        apply_updates(conn, [update_], now=rescued_at + timedelta(minutes=1))
    # then: the rescue stands, queued once; the poll's event records what it read and that it was not written
    with world.engine.connect() as conn:
        row = conn.execute(select(Handoff).where(Handoff.id == handoff_id)).one()
        last = conn.execute(select(HandoffEvent).order_by(HandoffEvent.id.desc()).limit(1)).one()
    assert (row.state, row.outcome_source, row.next_poll_at) == ("APPROVED", "WEBHOOK", None)
    assert world.queued() == [(handoff_id, "APPROVED")]
    assert (last.kind, last.source, last.state_after) == ("ACCEPTED", "POLL", "APPROVED")
    assert last.detail == "polled; ACCEPTED not applied over APPROVED, recorded first"
    # and the rescue is applied once
    assert world.apply(rescued_at + timedelta(hours=1))["approved"] == 1
    assert world.subscription().status == "ACTIVE"


def test_given_a_webhook_recorded_the_rescue_when_the_lost_send_answer_is_recorded_then_nothing_moves_back(
    world: World,
) -> None:
    # given: a hand-off a webhook settled as APPROVED while its /evaluate call was timing out
    handoff_id = hand_off(world)
    rescued_at = SENT + timedelta(days=2)
    webhook(world, 1, "order.completed", rescued_at)
    # when: the sender records the lost answer (UNKNOWN: look it up before anything else)
    lost = {"claimed_until": None, "last_error": "read timeout", "next_poll_at": rescued_at}
    with world.engine.begin() as conn:
        update_ = HandoffUpdate(handoff_id, lost, Event.UNKNOWN, "RESPONSE", "read timeout")
        apply_updates(conn, [update_], now=rescued_at + timedelta(minutes=1))
    # then: the rescue stands with no look booked, and the event says where the hand-off stands
    with world.engine.connect() as conn:
        row = conn.execute(select(Handoff).where(Handoff.id == handoff_id)).one()
        last = conn.execute(select(HandoffEvent).order_by(HandoffEvent.id.desc()).limit(1)).one()
    assert (row.state, row.next_poll_at, row.last_error) == ("APPROVED", None, "read timeout")
    assert (last.kind, last.state_after) == ("UNKNOWN", "APPROVED")
    assert last.detail == "read timeout; UNKNOWN not applied over APPROVED, recorded first"


@pytest.mark.parametrize(
    "fail_at", ["UPDATE orders", "INSERT INTO fulfillments", "DELETE FROM outcome_queue"]
)
def test_given_a_crash_between_the_statements_of_a_chunk_then_nothing_is_half_applied_and_the_next_run_completes_it(
    world: World, fail_at: str
) -> None:
    # given: two approvals and a decline queued
    ids = [hand_off(world, n) for n in (1, 2, 3)]
    for handoff_id, state in zip(ids, ("APPROVED", "APPROVED", "DECLINED"), strict=True):
        settle(world, handoff_id, state, SENT + timedelta(days=1))

    def crash(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(fail_at):
            raise RuntimeError("power cut")

    # when: the process dies inside the chunk's transaction
    event.listen(world.engine, "before_cursor_execute", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        world.apply(SENT + timedelta(days=1, hours=1))
    event.remove(world.engine, "before_cursor_execute", crash)
    # then: not a row of it stays
    assert sorted(world.queued()) == sorted(zip(ids, ("APPROVED", "APPROVED", "DECLINED"), strict=True))
    assert [world.subscription(n).status for n in (1, 2, 3)] == ["RECYCLE_BILLING"] * 3
    assert (world.count(Change), world.count(Fulfillment)) == (0, 0)
    # and when the next run comes
    counts = world.apply(SENT + timedelta(days=1, hours=2))
    # then it applies each outcome once
    assert (counts["approved"], counts["failed_outcome"]) == (2, 1)
    assert [world.subscription(n).status for n in (1, 2, 3)] == ["ACTIVE", "ACTIVE", "RECYCLE_FAILED"]
    assert (world.count(Change), world.count(Fulfillment)) == (
        2 * 6 + 1 * 2,
        2,
    )  # a failure: status and cause
    assert world.queued() == []


# --- late news ---------------------------------------------------------------------------------------


def test_given_an_expiry_already_applied_when_a_late_rescue_arrives_then_it_is_queued_again_and_revives_the_purchase_once(
    world: World,
) -> None:
    # given: the window closed, EXPIRED applied, the purchase RECYCLE_FAILED
    handoff_id = hand_off(world)
    settle(world, handoff_id, "EXPIRED", SETTLED, source="EXPIRY")
    world.apply(SETTLED)
    assert world.subscription().status == "RECYCLE_FAILED"
    # when: FlexFactor's rescue comes by webhook, twice
    ids = webhook(world, 1, "order.completed", LATE)
    repeat = webhook(world, 1, "order.completed", LATE + timedelta(minutes=1))
    # then: queued once as the new news
    assert (ids, repeat) == ([handoff_id], [])
    assert world.queued() == [(handoff_id, "APPROVED")]
    # and when applied (by the webhook's hook, then by reconcile)
    counts = world.apply(LATE, handoff_ids=ids)
    again = world.apply(LATE + timedelta(hours=2))
    # then: the purchase moves on once
    assert (counts["late_approvals_applied"], again) == (1, {})
    assert (world.subscription().status, world.subscription().billing_cycle) == ("ACTIVE", 4)
    assert world.count(Fulfillment) == 1


def test_given_an_expiry_not_yet_applied_when_a_late_rescue_arrives_then_only_the_rescue_is_applied(
    world: World,
) -> None:
    # given: settled EXPIRED, not applied yet
    handoff_id = hand_off(world)
    settle(world, handoff_id, "EXPIRED", SETTLED, source="EXPIRY")
    # when: the rescue replaces the queued expiry
    webhook(world, 1, "order.completed", LATE)
    counts = world.apply(LATE)
    # then
    assert world.queued() == []
    assert (counts["approved"], counts["failed_outcome"]) == (1, 0)
    assert world.subscription().status == "ACTIVE"
    with world.engine.connect() as conn:
        failed = conn.execute(
            select(func.count()).select_from(Change).where(Change.new_value.like("RECYCLE_FAILED%"))
        ).scalar_one()
    assert failed == 0


def test_given_a_queued_outcome_then_a_new_sale_order_is_settled_by_it_once(world: World) -> None:
    # given: a rerun hand-off of a declined initial sale, approved by its evaluate answer
    hand_off(world)
    with world.engine.begin() as conn:
        conn.execute(update(Handoff).values(source="RERUN", purchase_id=None))
        conn.execute(update(Order).values(order_type="NEW_SALE", recurring_product=False))
    settle(world, "ho-1", "APPROVED", SENT, source="RESPONSE")
    # when
    world.apply(SENT)
    world.apply(SENT + timedelta(hours=1))
    # then
    with world.engine.connect() as conn:
        assert conn.execute(select(Order.status)).scalar_one() == "COMPLETE"
    assert (world.count(Change), world.count(Fulfillment), world.queued()) == (2, 1, [])


# --- concurrency (PostgreSQL) -------------------------------------------------------------------------


@pytest.mark.postgres
def test_given_an_applier_holding_a_queued_expiry_when_a_rescue_is_recorded_then_it_waits_and_is_queued_after(
    pg_url: str, tmp_path: Path
) -> None:
    # given: an applier has read (locked) the queued EXPIRED and dequeued it, not yet committed
    engine = make_engine(pg_url)
    world = World(engine, load_test_settings(a_settings_file(tmp_path, db_url=pg_url)))
    handoff_id = hand_off(world)
    settle(world, handoff_id, "EXPIRED", SETTLED, source="EXPIRY")
    applier = engine.connect()
    tx = applier.begin()
    applier.execute(select(OutcomeQueue).with_for_update(skip_locked=True)).all()
    applier.execute(text("DELETE FROM outcome_queue"))
    # when: the rescue is recorded meanwhile (webhook), from another connection
    recorded = threading.Event()

    def rescue() -> None:
        with engine.begin() as conn:  # as storage.handoff_repo.write_handoff writes it
            enqueue(conn, [QueuedNews(handoff_id, "APPROVED", LATE, "WEBHOOK")])
            conn.execute(update(Handoff).values(state="APPROVED", outcome_at=LATE, updated_at=LATE))
        recorded.set()

    writer = threading.Thread(target=rescue)
    writer.start()
    time.sleep(0.5)
    waited = not recorded.is_set()
    tx.commit()
    applier.close()
    writer.join(10)
    # then: the rescue waited for the applier, and is queued for the next look
    assert waited
    assert recorded.is_set()
    assert world.queued() == [(handoff_id, "APPROVED")]
    engine.dispose()


# --- the ladder version a purchase entered with ------------------------------------------------------


def test_given_purchases_on_different_ladder_versions_when_approved_then_each_price_follows_the_version_it_entered_with(
    world: World,
) -> None:
    # given: settings.yaml no longer holds the recycle price, but sub-1 entered when it did
    current = world.settings.recycle_profiles["default"]
    with world.engine.begin() as conn:
        versions = record_profile_versions(
            conn, [replace(current, hold_recycle_price=True)], now=SENT - timedelta(days=30)
        )
        versions_now = record_profile_versions(conn, [current], now=SENT)
    ids = [hand_off(world, n) for n in (1, 2, 3)]
    with world.engine.begin() as conn:
        for n, version in ((1, versions["default"]), (2, versions_now["default"]), (3, None)):
            conn.execute(
                update(Subscription)
                .where(Subscription.id == f"sub-{n}")
                .values(recycle_profile_version=version)
            )
    # when: each is rescued at 47.49, its regular price being 49.99
    for handoff_id in ids:
        settle(world, handoff_id, "APPROVED", SENT + timedelta(days=1))
    world.apply(SENT + timedelta(days=1, hours=1))
    # then: the held price only where the recorded version holds it; no version: settings.yaml
    assert [world.subscription(n).price_minor for n in (1, 2, 3)] == [4749, 4999, 4999]


# --- chunks --------------------------------------------------------------------------------------------


def test_given_outcomes_of_one_purchase_apart_in_the_queue_then_they_share_a_chunk() -> None:
    pending = [
        Pending("a", "P1", "o1"),
        Pending("b", "P2", "o2"),
        Pending("c", "P3", "o3"),
        Pending("d", "P1", "o4"),  # P1 again: with a, though a's chunk is full
        Pending("e", None, "o5"),  # new sales without a purchase go by order
        Pending("f", None, "o5"),
    ]
    assert _chunks(pending, 2) == [["a", "b", "d"], ["c", "e", "f"]]


def test_given_more_outcomes_than_a_chunk_holds_then_every_one_is_applied_once(world: World) -> None:
    # given: seven outcomes, applied two (or so) a transaction
    ids = [hand_off(world, n) for n in range(1, 8)]
    for n, handoff_id in enumerate(ids):
        settle(world, handoff_id, "APPROVED" if n % 2 == 0 else "DECLINED", SENT + timedelta(hours=n))
    # when
    counts = world.apply(SENT + timedelta(days=1), chunk=2)
    again = world.apply(SENT + timedelta(days=1, hours=1), chunk=2)
    # then
    assert (counts["approved"], counts["failed_outcome"], again) == (4, 3, Counter())
    assert [world.subscription(n).status for n in range(1, 8)] == ["ACTIVE", "RECYCLE_FAILED"] * 3 + [
        "ACTIVE"
    ]
    # 6 rows per approval, a status and a failure_cause row per failure
    assert (world.count(Change), world.count(Fulfillment), world.queued()) == (4 * 6 + 3 * 2, 4, [])


def test_given_a_crash_in_a_later_chunk_then_earlier_chunks_stay_applied_and_the_next_run_applies_the_rest_once(
    world: World,
) -> None:
    # given: seven approvals queued, two a chunk
    ids = [hand_off(world, n) for n in range(1, 8)]
    for n, handoff_id in enumerate(ids):
        settle(world, handoff_id, "APPROVED", SENT + timedelta(hours=n))
    deletes = []

    def crash(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE FROM outcome_queue"):
            deletes.append(statement)
            if len(deletes) == 2:
                raise RuntimeError("power cut")

    # when: the process dies while writing the second chunk (the third may be read already)
    event.listen(world.engine, "before_cursor_execute", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        world.apply(SENT + timedelta(days=1), chunk=2)
    event.remove(world.engine, "before_cursor_execute", crash)
    # then: the first chunk is applied, nothing else is
    assert [world.subscription(n).status for n in range(1, 8)] == ["ACTIVE"] * 2 + ["RECYCLE_BILLING"] * 5
    assert (world.count(Change), len(world.queued())) == (2 * 6, 5)
    # and when the next run comes, it applies the rest once
    counts = world.apply(SENT + timedelta(days=1, hours=1), chunk=2)
    assert counts["approved"] == 5
    assert [world.subscription(n).status for n in range(1, 8)] == ["ACTIVE"] * 7
    assert (world.count(Change), world.count(Fulfillment), world.queued()) == (7 * 6, 7, [])
