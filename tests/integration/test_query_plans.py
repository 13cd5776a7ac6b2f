"""Query plans of a real night on a 200,000-subscription PostgreSQL book: indexes, never a scan of the book.

Every SELECT and UPDATE that submit, reconcile and the day's report send is EXPLAINed at the moment it
runs, with its own parameters, in its own transaction (a listener on the engine), so the plans are
those the night gets on a book whose statistics are fresh (the builder ends with VACUUM ANALYZE). No
planner setting is changed: at this size a sequential scan of subscriptions, declines or handoffs costs
visibly more than an index, so the planner takes one only when no index serves the statement, which is
the fault to catch. One index walk is a fault too: the report's open hand-offs past expiry read through
the creation index over the whole history.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlalchemy import Engine, event, text

from bench.book import NIGHT, Book, BookShape, build_book, write_settings
from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import flexfactor_clients
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.reports.lift_queries import lift_facts_direct_stmt, lift_facts_stmt
from recycle_engine.reports.queries import ReportBounds, fetch
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.services.nightly.submit import due_rows
from recycle_engine.services.outcomes.reconcile import run_reconcile
from recycle_engine.services.reporting.report import run_report
from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.storage.db import make_engine
from tests.conftest import PG_ADMIN_DSN, PG_HOST_URL
from tests.factories import load_test_settings
from tests.nights import submit_night

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BIG_TABLES = ("subscriptions", "declines", "orders", "handoffs")
STATE_INDEXES = {"ix_handoffs_state_next_poll_at", "ix_handoffs_state_expires_at_cover"}
OUTCOMES_TO_APPLY = "FROM outcome_queue LEFT OUTER JOIN subscriptions"
ROLLUP_REFRESH = "INSERT INTO report_breakdown_rollups"
# 1,500 due (about 900 hand-offs): the index paths cost about the same at any book size, while a scan
# costs in proportion to the book, so a small night on a small book is the hard case for the planner.
SHAPE = BookShape(subscriptions=200_000, due=1_500, waiting_share=0.005, seed=11)


@dataclass(frozen=True)
class Plan:
    statement: str
    root: dict[str, Any]
    params: Any = None

    def nodes(self) -> Iterator[dict[str, Any]]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.get("Plans", []))

    def seq_scans(self) -> set[str]:
        return {n["Relation Name"] for n in self.nodes() if n["Node Type"] == "Seq Scan"}

    def index_names(self) -> set[str]:
        return {n["Index Name"] for n in self.nodes() if "Index Name" in n}


def _explaining(engine: Engine) -> list[Plan]:
    """Record the plan of every SELECT and UPDATE the engine runs, just before it runs."""
    plans: list[Plan] = []

    @event.listens_for(engine, "before_cursor_execute")
    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb not in ("SELECT", "UPDATE", "WITH") or not any(t in statement for t in BIG_TABLES):
            return
        params = parameters[0] if many and parameters else parameters
        # EXPLAIN without ANALYZE plans and runs nothing: no row is locked or changed by it.
        row = cursor.connection.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
        document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
        plans.append(Plan(statement, document[0]["Plan"], params))

    return plans


@pytest.fixture(scope="module")
def book_url(pg_template: str) -> Iterator[tuple[str, Book]]:
    import psycopg

    name = f"re_plans_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    url = f"{PG_HOST_URL}/{name}"
    try:
        yield url, build_book(url, SHAPE, migrate=False)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        requests.post(
            f"{sb.admin_url}/clock", json={"now": NIGHT.isoformat(), "frozen": True}, timeout=10
        ).raise_for_status()
        yield sb


def _settings(tmp_path: Path, url: str, sandbox: RunningSandbox) -> Settings:
    path = write_settings(tmp_path / "settings.yaml", db_url=url, base_url=sandbox.base_url, concurrency=16)
    return load_test_settings(path)


def _must_not_scan(plan: Plan) -> set[str]:
    if OUTCOMES_TO_APPLY in plan.statement:
        # Applying outcomes left-joins subscriptions to up to 1,000 queued outcomes; on a book this small
        # a hash join over that table is the planner's fair choice (nested loops at 1,000,000,
        # bench/submit_benchmark.py --explain). The queue holds only the work; no hand-off is read.
        return {"handoffs"}
    if ROLLUP_REFRESH in plan.statement:
        # The report rollups' refresh after the night joins its ~900 hand-offs to their declines: at
        # 56,000 declines one hash over them costs the planner less than 900 index probes (with 50
        # hand-offs it probes pk_declines). The night's hand-offs must come from the index.
        return {"handoffs"}
    return set(BIG_TABLES)


def _report(plans: list[Plan]) -> str:
    return "\n\n".join(f"{p.seq_scans()} in:\n{p.statement}" for p in plans)


def test_given_a_big_book_when_a_night_its_reconcile_and_its_report_run_then_no_statement_scans_a_big_table(
    tmp_path: Path, book_url: tuple[str, Book], sandbox: RunningSandbox
) -> None:
    # given: 200,000 subscriptions, 1,500 due tonight (about 900 on a FlexFactor slot)
    url, book = book_url
    settings = _settings(tmp_path, url, sandbox)
    engine = make_engine(url)
    plans = _explaining(engine)
    # when: the night runs, then reconcile a day later (polls, outcome application)
    result = submit_night(settings, engine, NIGHT)
    later = NIGHT + timedelta(days=1, hours=1)
    requests.post(f"{sandbox.admin_url}/clock", json={"now": later.isoformat(), "frozen": True}, timeout=30)
    run_reconcile(
        settings,
        engine,
        flexfactor_clients(settings, FixedClock(later)),
        night=Night.of(later, settings.timezone),
        send_clock=FixedClock(later),
    )
    # and the report of the night's day, after it
    reported_from = len(plans)
    run_report(settings, engine, day=book.today, night=Night.of(later, settings.timezone))
    engine.dispose()
    # then: the night did its work, and nothing it ran read a big table from end to end
    assert result.counts["handoffs_created"] == book.due_flexfactor
    assert result.counts["charged"] == book.due_processor
    scanning = [p for p in plans if p.seq_scans() & _must_not_scan(p)]
    assert scanning == [], _report(scanning)
    # the open hand-offs past their expiry are found by state (the full history once walked the creation
    # index to spare a sort of a few hundred rows)
    past_expiry = [p for p in plans[reported_from:] if "PAST_EXPIRY" in dict(p.params or {}).values()]
    assert len(past_expiry) == 1
    indexes = past_expiry[0].index_names()
    assert indexes & STATE_INDEXES, json.dumps(past_expiry[0].root, indent=1)
    assert "ix_handoffs_created_at" not in indexes, json.dumps(past_expiry[0].root, indent=1)
    used = set().union(*(p.index_names() for p in plans))
    assert {
        "ix_subscriptions_status_next_attempt_on_id",  # the due page
        "pk_handoffs",  # recording each answer
        "pk_subscriptions",  # the claim's updates
    } <= used, used


def test_given_a_big_book_when_a_page_of_due_attempts_is_claimed_then_it_is_read_in_index_order(
    book_url: tuple[str, Book],
) -> None:
    # given: the book, with attempts due over the coming fortnight
    url, book = book_url
    engine = make_engine(url)
    plans = _explaining(engine)
    # when: a claim page for a night whose due rows are many, then the dry run's keyset pages
    with engine.connect() as conn:  # closed without a commit: the locks go, nothing is claimed
        page = due_rows(conn, today=book.today + timedelta(days=7), limit=500, lock=True)
    with engine.connect() as conn:
        walked, after = 0, None
        while rows := due_rows(conn, today=book.today + timedelta(days=7), limit=500, after=after):
            walked += len(rows)
            after = (rows[-1].next_attempt_on, rows[-1].id)
    engine.dispose()
    # then: the locked page walks the index in (due date, id) order and stops at 500 rows, with no sort
    # of every due row beneath the lock; the keyset pages walk every due row exactly once
    assert len(page) == 500
    claim = plans[0]
    lock = next(n for n in claim.nodes() if n["Node Type"] == "LockRows")
    assert [child["Node Type"] for child in lock["Plans"]] == ["Index Scan"], json.dumps(claim.root, indent=1)
    assert lock["Plans"][0]["Index Name"] == "ix_subscriptions_status_next_attempt_on_id"
    assert walked == _due_by(url, book.today + timedelta(days=7))


def _due_by(url: str, day: date) -> int:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM subscriptions WHERE status = 'RECYCLE_BILLING' "
            "AND next_attempt_on <= %s AND open_handoff_id IS NULL",
            (day,),
        ).fetchone()
    assert row is not None
    return int(row[0])


# --- the holdout section on a book with holdout on ---------------------------------------------------------

HOLDOUT_ROWS = 120_000
HOLDOUT_BOOK_SQL = (
    # a recycle hand-off per assignment of the FlexFactor group, a third approved, a tenth still open
    f"""INSERT INTO handoffs (id, source, order_id, purchase_id, transaction_id, gateway_id,
        declining_gateway_id, slot, attempt, billing_cycle, amount_minor, currency, idempotency_key,
        request_body, dedupe_key, state, created_at, send_started_at, submitted_at, expires_at, outcome_at,
        late_outcome, poll_count, resend_count, updated_at)
    SELECT 'H' || i, 'RECYCLE', 'O' || i, 'P' || i, 'T' || i, 'ff', 'nmi', '4-6', 4, 3, 1000 + i % 5000, 'USD',
        md5(i::text), '{{}}', 'RECYCLE:H' || i,
        CASE WHEN i % 3 = 0 THEN 'APPROVED' WHEN i % 10 = 1 THEN 'SUBMITTED' ELSE 'EXPIRED' END,
        at, at, at, at + interval '21 days',
        CASE WHEN i % 10 = 1 THEN NULL ELSE at + interval '3 days' END, false, 0, 0, at
    FROM (SELECT i, timestamptz '2026-01-01 07:00+00' + (i % 150) * interval '1 day' AS at
          FROM generate_series(1, {HOLDOUT_ROWS}) AS i) AS s""",
    f"""INSERT INTO holdout_assignments (subscription_id, decline_transaction_id, billing_cycle, profile_id,
        arm, attempt, slot, gateway_id, amount_minor, currency, assigned_at)
    SELECT 'P' || i, 'T' || i, 3, 'default', CASE WHEN i % 10 = 5 THEN 'HOLDOUT' ELSE 'FLEXFACTOR' END, 4,
        '4-6', 'ff', 1000 + i % 5000, 'USD', timestamptz '2026-01-01 07:00+00' + (i % 150) * interval '1 day'
    FROM generate_series(1, {HOLDOUT_ROWS}) AS i""",
    # the holdout group's retries on the declining gateway, a quarter approved; every subscription on file
    f"""INSERT INTO transactions (id, subscription_id, decline_transaction_id, attempt, gateway_id, amount_minor,
        currency, result, occurred_at)
    SELECT 'R' || i || '-' || k, 'P' || i, 'T' || i, 4 + k, 'nmi', 1000, 'USD',
        CASE WHEN k = 1 AND i % 4 = 1 THEN 'APPROVED' ELSE 'DECLINED' END,
        timestamptz '2026-01-02 07:00+00' + (i % 150) * interval '1 day' + k * interval '1 day'
    FROM generate_series(1, {HOLDOUT_ROWS}) AS i, generate_series(0, 1) AS k WHERE i % 10 IN (1, 5)""",
    f"""INSERT INTO subscriptions (id, status, billing_cycle, shippable, price_minor, currency, gateway_id,
        has_payment_token, recycle_transaction_id, recycle_last_attempt, updated_at)
    SELECT 'P' || i, CASE WHEN i % 10 = 1 THEN 'RECYCLE_BILLING' ELSE 'ACTIVE' END, 3, false, 1000, 'USD', 'nmi',
        true, 'T' || i, 4, timestamptz '2026-01-01 07:00+00'
    FROM generate_series(1, {HOLDOUT_ROWS}) AS i""",
)
# Subscriptions are left out: the report's assignments settled on its day (about 1,700 here) join them,
# and on a book this small one hash over them costs the planner less than as many index probes.
HOLDOUT_TABLES = {"holdout_assignments", "handoffs", "transactions"}


@pytest.fixture(scope="module")
def holdout_book_url(pg_template: str) -> Iterator[str]:
    import psycopg

    name = f"re_plans_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    url = f"{PG_HOST_URL}/{name}"
    try:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            for statement in HOLDOUT_BOOK_SQL:
                conn.execute(statement)
            conn.execute("VACUUM ANALYZE")
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_given_a_book_with_holdout_when_the_rollups_settle_it_and_the_report_reads_it_then_approvals_are_found_by_their_decline(
    holdout_book_url: str,
) -> None:
    # given: 120,000 assignments, each noted when written; their hand-offs and the holdout group's retries
    engine = make_engine(holdout_book_url)
    tz = ZoneInfo("America/New_York")
    refresh_rollups(engine, tz, now=datetime(2026, 6, 1, tzinfo=UTC))  # settles the notes of the load
    with engine.connect() as conn:  # what autovacuum does after so many changed rows
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    with engine.begin() as conn:  # a night's approvals, then the next refresh and the report's holdout read
        conn.execute(
            text("UPDATE handoffs SET state = 'APPROVED', outcome_at = updated_at WHERE id LIKE 'H%01'")
        )
    plans = _explaining(engine)
    # when
    refresh_rollups(engine, tz, now=datetime(2026, 6, 2, tzinfo=UTC))
    day = date(2026, 5, 29)
    bounds = ReportBounds.for_day(day, tz, datetime(2026, 5, 30, 10, tzinfo=UTC))
    with engine.connect() as conn:
        rolled = fetch(conn, lift_facts_stmt(bounds)).to_dict("records")
        direct = fetch(conn, lift_facts_direct_stmt(bounds)).to_dict("records")
    engine.dispose()
    # then: the rollup reads as every assignment does; no statement read a table from end to end but the
    # direct read itself (kept for this comparison), and each assignment's approvals came from its
    # decline's own keys (approvals after the day may be read once, by the ladder's index on their instant)
    assert rolled == direct
    holdout = [p for p in plans if "holdout_assignments" in p.statement]
    assert len(holdout) >= 3
    direct_plan = holdout[-1]
    scanning = [p for p in holdout[:-1] if p.seq_scans() & HOLDOUT_TABLES]
    assert scanning == [], "\n".join(json.dumps(p.root, indent=1) for p in scanning)
    used = set().union(*(p.index_names() for p in holdout[:-1]))
    assert {
        "ix_handoffs_purchase_id",
        "uq_transactions_subscription_id_decline_transaction_id_attempt",
        "uq_holdout_assignments_subscription_id_decline_transaction_id",
        "ix_holdout_assignments_final_at",
    } <= used, used
    assert direct_plan.seq_scans() <= {"holdout_assignments", "subscriptions"}, _report([direct_plan])
