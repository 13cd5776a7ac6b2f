"""HOLD fulfillment records: one per shippable item and cycle, each with one change row, never twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Change, Fulfillment
from recycle_engine.storage.subscription_repo import create_fulfillments
from tests.factories import a_settings_file, load_test_settings
from tests.integration.test_outcome_queue import SENT, World, hand_off, settle


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    engine = make_engine(db_url)
    yield World(engine, load_test_settings(a_settings_file(tmp_path, db_url=db_url)))
    engine.dispose()


def hold_changes(world: World) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(Change).where(Change.reason == "FULFILLMENT_CREATED")
            ).scalar_one()
        )


def test_given_an_item_held_when_it_is_handed_in_again_then_no_record_and_no_change_row_is_added(
    world: World,
) -> None:
    # given
    item = ("ord-1", "sub-1", 3, "p1", "ho-1")
    with world.engine.begin() as conn:
        first = create_fulfillments(conn, [item, item], now=SENT, run_id="r1", source="WEBHOOK")
    # when
    with world.engine.begin() as conn:
        again = create_fulfillments(conn, [item], now=SENT + timedelta(hours=1), run_id="r2", source="POLL")
    # then
    assert (first, again) == (1, 0)
    assert (world.count(Fulfillment), hold_changes(world)) == (1, 1)


def test_given_a_held_item_when_an_approval_of_it_is_applied_then_it_writes_no_second_hold_change(
    world: World,
) -> None:
    # given: the HOLD record of sub-1's cycle 3 is already there (another path created it)
    handoff_id = hand_off(world)
    with world.engine.begin() as conn:
        conn.execute(
            insert(Fulfillment).values(
                order_id="ord-1",
                purchase_id="sub-1",
                billing_cycle=3,
                product_id="p1",
                status="HOLD",
                created_at=SENT,
            )
        )
    hand_off(world, 2)
    # when: both purchases are rescued
    for ho in (handoff_id, "ho-2"):
        settle(world, ho, "APPROVED", SENT + timedelta(days=1))
    world.apply(SENT + timedelta(days=1, hours=1))
    # then: sub-2 gets its record and its change row; sub-1 neither twice
    assert (world.count(Fulfillment), hold_changes(world)) == (2, 1)
    assert [world.subscription(n).status for n in (1, 2)] == ["ACTIVE", "ACTIVE"]
