"""The report's daily rollups on SQLite and PostgreSQL: after any mix of runs, webhooks, late outcomes
and hand writes, the rollup tables equal a recomputation from scratch, and the report's figures read
from them equal the direct aggregation over hand-offs the report used before."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, delete, insert, select, update

from recycle_engine.adapters.flexfactor_webhooks import WebhookEvent
from recycle_engine.cli import main
from recycle_engine.domain.states import Event
from recycle_engine.reports import ladder_queries, rollup_queries
from recycle_engine.reports.queries import ReportBounds, fetch
from recycle_engine.services.outcomes.webhook_events import record_event
from recycle_engine.services.reporting.rollups import RollupRefresh, refresh_rollups
from recycle_engine.storage import rollup_repo
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.handoff_repo import HandoffUpdate, apply_updates
from recycle_engine.storage.models import (
    BreakdownRollup,
    CohortRollup,
    Decline,
    Handoff,
    RecoveryRollup,
    RollupChange,
)
from tests import report_reference as direct
from tests.conftest import _fresh_pg, _fresh_sqlite
from tests.integration import test_outcomes_lifecycle as lifecycle
from tests.integration.test_report import a_decline, a_handoff

NEW_YORK = ZoneInfo("America/New_York")


# --- comparing -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def rows_of(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """A frame's rows as plain tuples (NaN and None alike, integral floats as ints), sorted."""
    return sorted((tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)), key=repr)


def rollup_tables(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The rollup tables' rows without their ids, sorted, as rollup_rows_from_scratch returns them."""
    tables = {"cohorts": CohortRollup, "breakdowns": BreakdownRollup, "recoveries": RecoveryRollup}
    return {
        name: sorted((tuple(r)[1:] for r in conn.execute(select(model))), key=repr)
        for name, model in tables.items()
    }


def differences(conn: Connection, tz: ZoneInfo, bounds: ReportBounds) -> list[str]:
    """What differs: the rollup tables vs a recomputation, and each report figure vs the direct one."""
    found = []
    scratch = rollup_repo.rollup_rows_from_scratch(conn, tz)
    found += [f"{name} rollups" for name, rows in rollup_tables(conn).items() if rows != scratch[name]]
    pairs = {
        "cohort facts": (
            rollup_queries.fetch_cohorts(conn, rollup_queries.cohort_facts_stmt(bounds)),
            direct.cohort_facts(conn, bounds),
        ),
        "decline cohorts": (
            rollup_queries.fetch_cohorts(conn, rollup_queries.decline_cohort_stmt(bounds)),
            direct.decline_cohort_facts(conn, bounds),
        ),
        "recoveries": (
            fetch(conn, ladder_queries.recoveries_stmt(bounds, conn.dialect.name)),
            direct.recoveries(conn, bounds),
        ),
    }
    by_key = fetch(conn, rollup_queries.breakdowns_stmt(bounds))
    for name in [*rollup_queries.BREAKDOWNS, rollup_queries.SAVES]:
        ours = by_key[by_key["breakdown"] == name].drop(columns="breakdown").reset_index(drop=True)
        pairs[name] = (ours, direct.breakdown(conn, bounds, name))
    found += [name for name, (ours, theirs) in pairs.items() if rows_of(ours) != rows_of(theirs)]
    return found


# --- the outcomes book, night after night ----------------------------------------------------------


@dataclass
class Checked:
    """What each night left: the differences after its refresh, the refreshes, the engine."""

    engine: Engine
    diffs: dict[int, list[str]] = field(default_factory=dict)
    refreshes: list[RollupRefresh] = field(default_factory=list)
    facts: dict[int, pd.DataFrame] = field(default_factory=dict)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def checked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checked]:
    """The outcomes book played over 23 nights (submits, webhooks, polls, expiries, late rescues,
    reruns), the rollups refreshed and compared after each night's FlexFactor day."""
    tmp_path = tmp_path_factory.mktemp(f"rollups-{request.param}")
    with ExitStack() as stack:
        if request.param == "sqlite":
            db_url = _fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
        else:
            db_url = stack.enter_context(contextmanager(_fresh_pg)(request.getfixturevalue("pg_template")))
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        result = Checked(engine)

        def after_night(n: int) -> None:
            at = lifecycle.night(n) + lifecycle.FLEXFACTOR_DAY
            result.refreshes.append(refresh_rollups(engine, NEW_YORK, now=at))
            bounds = ReportBounds.for_day(lifecycle.local_day(lifecycle.night(n)), NEW_YORK, at)
            with engine.connect() as conn:
                result.diffs[n] = differences(conn, NEW_YORK, bounds)
                result.facts[n] = rollup_queries.fetch_cohorts(conn, rollup_queries.cohort_facts_stmt(bounds))

        lifecycle.play(tmp_path, db_url, engine, after_night=after_night)
        yield result


def test_given_runs_webhooks_and_late_outcomes_when_each_night_is_refreshed_then_rollups_equal_a_recomputation(
    checked: Checked,
) -> None:
    # given / when: 23 nights, a refresh after each
    # then: nothing differs on any night, and every refresh was incremental
    assert checked.diffs == {n: [] for n in range(lifecycle.NIGHTS)}
    assert not any(r.rebuilt for r in checked.refreshes)
    assert any(r.days for r in checked.refreshes)


def test_given_a_late_rescue_after_expiry_when_refreshed_then_it_counts_in_its_original_cohort(
    checked: Checked,
) -> None:
    # given: the night-0 cohort: five recycle hand-offs and three reruns, two of them approved by night 20
    cohort = lifecycle.local_day(lifecycle.night(0)).isoformat()

    def approved(n: int) -> int:
        f = checked.facts[n]
        return int(f[(f["cohort"] == cohort) & (f["state"] == "APPROVED")]["n"].sum())

    # then: the two late rescues of night 21 (our window closed on night 21) count on night 0
    assert (approved(20), approved(21)) == (2, 4)


# --- any write path, across DST, then a change of timezone --------------------------------------------

SPRING = datetime(2026, 3, 8, 4, 30, tzinfo=UTC)  # 23:30 on 7 March in New York, before clocks go forward
AUTUMN = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT on 1 November, the hour that repeats
MONTH_END = datetime(2026, 6, 1, 3, 59, tzinfo=UTC)  # 23:59 on 31 May in New York


def _book(engine: Engine) -> None:
    """Hand-offs on both sides of each DST change and of a month end, with their declines."""
    handoffs, declines = [], []
    for k, base in enumerate([SPRING, AUTUMN, MONTH_END]):
        for i in range(6):
            hid = f"h{k}{i}"
            created = base + timedelta(minutes=45 * i)
            state = ("SUBMITTED", "APPROVED", "DECLINED", "FAILED", "PENDING", "EXPIRED")[i]
            outcome = (
                created + timedelta(days=i, hours=1) if state in ("APPROVED", "DECLINED", "EXPIRED") else None
            )
            handoffs.append(
                a_handoff(
                    hid,
                    created=created,
                    state=state,
                    amount=1000 + 10 * i,
                    currency=("USD", "EUR")[i % 2],
                    billing_cycle=2 + i % 3,
                    outcome_at=outcome,
                    flexfactor_order_id=f"ff-{hid}",
                )
            )
            row = a_decline(
                f"txn-{hid}", ("Do Not Honor", "Insufficient funds")[i % 2], "05", "VISA", "411111"
            )
            declines.append(row | {"declined_at": created - timedelta(days=12, hours=i)})
    with engine.begin() as conn:
        conn.execute(insert(Decline), declines)
        conn.execute(insert(Handoff), handoffs)


def _webhook(conn: Connection, handoff_id: str, event: str, at: datetime) -> None:
    news = WebhookEvent(event, at, f"ff-{handoff_id}", handoff_id, None, is_test_mode=True, is_resent=False)
    record_event(conn, gateway_id="flexfactor-main", event=news, now=at)


def _same_as_scratch(engine: Engine, tz: ZoneInfo) -> list[str]:
    with engine.connect() as conn:
        scratch = rollup_repo.rollup_rows_from_scratch(conn, tz)
        return [name for name, rows in rollup_tables(conn).items() if rows != scratch[name]]


def test_given_writes_by_every_path_when_refreshed_between_them_then_rollups_equal_a_recomputation(
    db_url: str,
) -> None:
    # given: hand-offs around both DST changes and a month end, rolled up
    engine = make_engine(db_url)
    _book(engine)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    first = refresh_rollups(engine, NEW_YORK, now=now)
    steps: dict[str, Any] = {
        # reconcile's answers: a poll settles one, another is approved (a recovery day moves)
        "polls": lambda conn: apply_updates(
            conn,
            [
                HandoffUpdate("h00", {"outcome_at": now}, Event.APPROVED, "POLL"),
                HandoffUpdate("h14", {"outcome_at": now}, Event.DECLINED, "POLL"),
            ],
            now=now,
        ),
        # webhooks: a late rescue after our expiry, and a refund on a recovery
        "late rescue": lambda conn: _webhook(conn, "h15", "order.completed", now),
        "refund": lambda conn: _webhook(conn, "h11", "order.refunded", now),
        # an operator's hand: a chargeback flag, a corrected amount, a hand-off deleted
        "operator": lambda conn: conn.execute(
            update(Handoff).where(Handoff.id == "h21").values(attention="chargeback", amount_minor=999)
        ),
        "delete": lambda conn: conn.execute(delete(Handoff).where(Handoff.id == "h22")),
        # the attempt of a recovery (the ladder's recoveries are rolled up by attempt)
        "attempt": lambda conn: conn.execute(update(Handoff).where(Handoff.id == "h00").values(attempt=7)),
        # a write that changes no rolled-up column is not noted
        "lease": lambda conn: conn.execute(update(Handoff).where(Handoff.id == "h01").values(poll_count=7)),
    }
    results = {}
    for name, step in steps.items():
        # when
        with engine.begin() as conn:
            step(conn)
        results[name] = (refresh_rollups(engine, NEW_YORK, now=now).days, _same_as_scratch(engine, NEW_YORK))
    # then: each step recomputed only its hand-off's day, and the rollups always equal a recomputation
    assert first.rebuilt
    assert results == {
        "polls": (2, []),
        "late rescue": (1, []),
        "refund": (1, []),
        "operator": (1, []),
        "delete": (1, []),
        "attempt": (1, []),
        "lease": (0, []),
    }
    # then: the report's figures read from rollups equal the direct aggregation, on DST and month-end days
    with engine.connect() as conn:
        for day in (
            date(2026, 3, 8),
            date(2026, 3, 9),
            date(2026, 11, 1),
            date(2026, 5, 31),
            date(2026, 6, 1),
        ):
            assert differences(conn, NEW_YORK, ReportBounds.for_day(day, NEW_YORK, now)) == [], day
    engine.dispose()


def test_given_rollups_built_in_one_timezone_when_refreshed_in_another_then_they_are_rebuilt(
    db_url: str,
) -> None:
    # given
    engine = make_engine(db_url)
    _book(engine)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    refresh_rollups(engine, NEW_YORK, now=now)
    tokyo = ZoneInfo("Asia/Tokyo")
    # when
    again = refresh_rollups(engine, tokyo, now=now)
    # then
    assert again.rebuilt
    assert _same_as_scratch(engine, tokyo) == []
    with engine.connect() as conn:
        assert conn.execute(select(RollupChange)).all() == []
    engine.dispose()


def test_given_a_book_when_db_rebuild_rollups_runs_then_it_rebuilds_every_day_and_says_so(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    from tests.integration.test_report import ENV, a_settings

    config = a_settings(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    _book(engine)
    # when
    result = CliRunner().invoke(main, ["db", "rebuild-rollups", "--config", str(config)], env=ENV)
    # then
    assert result.exit_code == 0, result.output
    assert "rebuilt the report rollups" in result.stdout
    assert _same_as_scratch(engine, NEW_YORK) == []
    with engine.connect() as conn:
        assert conn.execute(select(CohortRollup)).first() is not None
    engine.dispose()


def test_given_the_cli_when_asked_for_help_then_rebuild_rollups_explains_itself() -> None:
    result = CliRunner().invoke(main, ["db", "rebuild-rollups", "--help"])
    assert result.exit_code == 0
    assert "rollups" in result.stdout


# --- the day a hand-off counts on -----------------------------------------------------------------


def _day_counts(engine: Engine, day: date, now: datetime) -> tuple[int, int]:
    """(hand-offs of the cohort `day`, hand-offs of the month-to-date slot breakdown) read from rollups."""
    bounds = ReportBounds.for_day(day, NEW_YORK, now)
    with engine.connect() as conn:
        facts = rollup_queries.fetch_cohorts(conn, rollup_queries.cohort_facts_stmt(bounds))
        by_key = fetch(conn, rollup_queries.breakdowns_stmt(bounds))
    slots = by_key[by_key["breakdown"] == "slot"]
    return int(facts.loc[facts["cohort"] == day.isoformat(), "n"].sum()), int(slots["n"].sum())


def test_given_a_rerun_queued_one_day_and_sent_the_next_then_it_counts_on_the_day_it_was_sent(
    db_url: str,
) -> None:
    # given: a rerun queued at 22:00 on 30 June in New York, not yet sent, rolled up
    engine = make_engine(db_url)
    queued = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
    sent = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)  # 02:30 on 1 July in New York
    rerun = a_handoff(
        "rerun-1", created=queued, state="PENDING", amount=4_990, source="RERUN", slot=None, attempt=None
    )
    rerun |= {"send_started_at": None, "submitted_at": None, "dedupe_key": "RERUN:ord-rerun-1"}
    with engine.begin() as conn:
        conn.execute(insert(Handoff), [rerun])
    refresh_rollups(engine, NEW_YORK, now=queued)
    # when: the next night sends it and FlexFactor accepts it
    with engine.begin() as conn:
        conn.execute(
            update(Handoff)
            .where(Handoff.id == "rerun-1")
            .values(
                state="SUBMITTED",
                send_started_at=sent,
                first_sent_at=sent,
                submitted_at=sent,
                expires_at=sent + timedelta(days=21),
            )
        )
    refresh_rollups(engine, NEW_YORK, now=sent)
    # then: 1 July's report counts it (its cohort and its month), 30 June's does not
    assert _day_counts(engine, date(2026, 7, 1), sent) == (1, 1)
    assert _day_counts(engine, date(2026, 6, 30), sent) == (0, 0)
    assert _same_as_scratch(engine, NEW_YORK) == []
    engine.dispose()
