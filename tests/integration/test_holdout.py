"""Holdout end to end: submit keeps holdout subscriptions on the declining gateway (sandbox over HTTP), and
the report compares the groups side by side with the lift, its interval and the sample sizes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, insert, select, update

from recycle_engine.config import Settings
from recycle_engine.domain.holdout import in_holdout
from recycle_engine.domain.night import Night
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, Handoff, HoldoutAssignment, Subscription
from tests.factories import a_settings_file, insert_recycling_many, load_test_settings
from tests.integration.test_report import a_handoff
from tests.nights import submit_night

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)  # 02:00 in New York: attempt 4 (slot 4-6, FlexFactor) is due
FINAL_NIGHT = datetime(2026, 6, 13, 6, 0, tzinfo=UTC)  # the final attempt (FlexFactor) of the kept ones


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        body = {"now": NIGHT.isoformat(), "frozen": True}
        requests.post(f"{sb.admin_url}/clock", json=body, timeout=10).raise_for_status()
        yield sb


def with_holdout(tmp_path: Path, db_url: str, base_url: str, percent: str) -> Settings:
    path = a_settings_file(tmp_path, db_url=db_url, base_url=base_url)
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            "    hold_recycle_price: false\n",
            f'    hold_recycle_price: false\n    holdout_percent: "{percent}"\n',
        ),
        encoding="utf-8",
    )
    return load_test_settings(path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def evaluated_orders(sb: RunningSandbox) -> set[str]:
    resp = requests.get(f"{sb.admin_url}/requests?path=/evaluate", timeout=10)
    resp.raise_for_status()
    return {item["order_id"] for item in resp.json()["items"]}


def test_given_a_50_percent_holdout_when_submit_reaches_a_flexfactor_slot_then_holdout_subscriptions_stay_on_the_declining_gateway(
    tmp_path: Path, db_url: str, engine: Engine, sandbox: RunningSandbox
) -> None:
    # given: 40 subscriptions whose attempt 4 (slot 4-6: FlexFactor) is due tonight; half held out
    settings = with_holdout(tmp_path, db_url, sandbox.base_url, "50")
    ids = insert_recycling_many(engine, 40, due_on=date(2026, 6, 10))
    held = {i for i in ids if in_holdout(i, 50)}
    assert 0 < len(held) < 40
    # when
    result = submit_night(settings, engine, NIGHT)
    # then: the FlexFactor group is handed off (and only it reaches FlexFactor) ...
    with engine.connect() as conn:
        handed = {h.purchase_id: h for h in conn.execute(select(Handoff))}
        attempts = {a.subscription_id: a for a in conn.execute(select(Attempt))}
        groups = {g.subscription_id: g for g in conn.execute(select(HoldoutAssignment))}
        subs = {s.id: s for s in conn.execute(select(Subscription))}
    assert set(handed) == set(ids) - held
    assert evaluated_orders(sandbox) == {h.id for h in handed.values()}
    # ... the holdout group ran attempt 4 on the declining gateway at the ladder's price, and goes on
    assert set(attempts) == held
    assert {(a.attempt, a.gateway_id, a.amount_minor) for a in attempts.values()} == {(4, "nmi", 4499)}
    assert {(subs[i].next_attempt, subs[i].next_attempt_on) for i in held} == {(10, date(2026, 6, 13))}
    # ... and each subscription's group is recorded once, for the report
    assert {i: g.arm for i, g in groups.items()} == {i: "HOLDOUT" if i in held else "FLEXFACTOR" for i in ids}
    assert {(g.attempt, g.slot, g.gateway_id, g.amount_minor) for g in groups.values()} == {
        (4, "4-6", "ff", 4499)
    }
    assert result.counts["group_holdout"] == len(held)
    assert result.counts["handoffs_created"] == 40 - len(held)

    # when: the final attempt (also FlexFactor) of the held-out ones falls due
    submit_night(settings, engine, FINAL_NIGHT)
    # then: they stay on the declining gateway, and their group is not recorded twice
    with engine.connect() as conn:
        finals = conn.execute(
            select(Attempt.subscription_id, Attempt.gateway_id).where(Attempt.attempt == 10)
        ).all()
        assert len(conn.execute(select(HoldoutAssignment.id)).all()) == 40
    assert {(s, g) for s, g in finals} == {(i, "nmi") for i in held}
    assert evaluated_orders(sandbox) == {h.id for h in handed.values()}


def test_given_no_holdout_when_submit_runs_then_everyone_is_handed_off_in_the_flexfactor_group(
    tmp_path: Path, db_url: str, engine: Engine, sandbox: RunningSandbox
) -> None:
    settings = with_holdout(tmp_path, db_url, sandbox.base_url, "0")
    ids = insert_recycling_many(engine, 5, due_on=date(2026, 6, 10))
    submit_night(settings, engine, NIGHT)
    with engine.connect() as conn:
        arms = dict(conn.execute(select(HoldoutAssignment.subscription_id, HoldoutAssignment.arm)).all())
        assert len(conn.execute(select(Handoff.id)).all()) == 5
    assert arms == dict.fromkeys(ids, "FLEXFACTOR")


# --- the report --------------------------------------------------------------------------------


def seed_groups(engine: Engine) -> None:
    """FlexFactor group: 2 recovered, 1 lost, 1 pending. Holdout: 1 recovered, 3 lost (one because a newer
    decline took over), 1 pending."""
    groups = {
        "ff-won-1": "FLEXFACTOR",
        "ff-won-2": "FLEXFACTOR",
        "ff-lost": "FLEXFACTOR",
        "ff-open": "FLEXFACTOR",
        "ho-won": "HOLDOUT",
        "ho-lost-1": "HOLDOUT",
        "ho-lost-2": "HOLDOUT",
        "ho-newer": "HOLDOUT",
        "ho-open": "HOLDOUT",
    }
    ids = insert_recycling_many(engine, len(groups), due_on=date(2026, 6, 10), prefix="x")
    names = dict(zip(groups, ids, strict=True))
    status = {
        "ff-won-1": "ACTIVE",
        "ff-won-2": "ACTIVE",
        "ff-lost": "RECYCLE_FAILED",
        "ho-won": "ACTIVE",
        "ho-lost-1": "RECYCLE_FAILED",
        "ho-lost-2": "RECYCLE_FAILED",
    }
    with engine.begin() as conn:
        conn.execute(
            insert(HoldoutAssignment),
            [
                {
                    "subscription_id": names[name],
                    "decline_transaction_id": names[name].replace("sub", "txn"),
                    "billing_cycle": 3,
                    "profile_id": "default",
                    "arm": arm,
                    "attempt": 4,
                    "slot": "4-6",
                    "gateway_id": "ff",
                    "amount_minor": 4000,
                    "currency": "USD",
                    "run_id": "submit-1",
                    "assigned_at": NIGHT,
                }
                for name, arm in groups.items()
            ],
        )
        for name, value in status.items():
            conn.execute(update(Subscription).where(Subscription.id == names[name]).values(status=value))
        conn.execute(
            update(Subscription)
            .where(Subscription.id == names["ho-newer"])
            .values(recycle_transaction_id="txn-later")
        )
        states = {
            "ff-won-1": "APPROVED",
            "ff-won-2": "APPROVED",
            "ff-lost": "DECLINED",
            "ff-open": "SUBMITTED",
        }
        conn.execute(
            insert(Handoff),
            [
                a_handoff(
                    f"h-{name}",
                    created=NIGHT,
                    state=state,
                    amount=4000 if name != "ff-won-2" else 3600,
                    purchase_id=names[name],
                    transaction_id=names[name].replace("sub", "txn"),
                    gateway_id="ff",
                    # a final state is reached at a time: the report reads states as of its day
                    outcome_at=NIGHT + timedelta(days=1) if state != "SUBMITTED" else None,
                )
                for name, state in states.items()
            ],
        )
        conn.execute(
            insert(Attempt).values(
                id="att-ho-won",
                subscription_id=names["ho-won"],
                decline_transaction_id=names["ho-won"].replace("sub", "txn"),
                attempt=7,
                gateway_id="nmi",
                amount_minor=3500,
                currency="USD",
                result="APPROVED",
                occurred_at=NIGHT + timedelta(days=3),
            )
        )


def test_given_both_groups_when_the_report_renders_then_it_shows_them_side_by_side_with_the_lift(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    seed_groups(engine)
    # when
    result = run_report(
        settings,
        engine,
        day=date(2026, 6, 14),
        night=Night.of(datetime(2026, 6, 15, 10, 0, tzinfo=UTC), settings.timezone),
    )
    # then: settled rates 2/3 and 1/4; lift +41.7 points, se = sqrt(2/3*1/3/3 + 1/4*3/4/4) = 0.34778
    html = result.html_path.read_text(encoding="utf-8")
    section = html[
        html.index('<section id="lift"') : html.index("</section>", html.index('<section id="lift"'))
    ]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", section))
    assert "Settled: the sample size 3 4" in text
    assert "Reached a FlexFactor slot 4 5" in text
    assert "Recovered 2 1" in text
    assert "Lost 1 3" in text
    assert "Pending (left out of the rates) 1 1" in text
    assert "Recovery rate settled: recovered ÷ settled 66.7 % 25.0 %" in text
    assert "+41.7 points" in text
    assert "95 % confidence interval -26.5 points to +109.8 points" in text
    assert "sample sizes 3 (FlexFactor) and 4 (holdout)" in text
    assert "normal approximation for a difference of two proportions" in text
    assert "It includes 0" in text
    # amounts, rate by amount as everywhere (pending included): FlexFactor recovered 40.00 + 36.00 of
    # 160.00 submitted; holdout 35.00 of 200.00
    assert "USD 160.00 USD 76.00 USD 47.5 % 200.00 USD 35.00 USD 17.5 % +30.0 points" in text
