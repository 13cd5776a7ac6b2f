"""The Alembic history builds the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pickle
import random
import sys
import warnings
from datetime import UTC, datetime
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, delete, func, insert, inspect, select, text, update
from sqlalchemy.exc import SAWarning

from recycle_engine.jobs.triggers import LocalCronTrigger
from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.services.reporting.status import JOBSTORE_TABLE
from recycle_engine.storage.db import alembic_config, make_engine
from recycle_engine.storage.models import Base, Handoff, HoldoutAssignment, HoldoutChange, RollupChange
from tests.integration.test_holdout_rollup import DAYS, assert_rolled_up_equals_direct, seed_book
from tests.integration.test_report import a_handoff


def test_given_a_migrated_database_then_it_matches_the_models_exactly(db_url: str) -> None:
    # given
    engine = make_engine(db_url)
    # when
    with engine.connect() as conn, warnings.catch_warnings():
        # SQLite's reflection cannot read an index on an expression: that one is compared below.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression", SAWarning)
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression", UserWarning)
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
        submission_index = _index_expression(conn, "ix_handoffs_submitted_or_created")
    engine.dispose()
    # then
    assert diff == []
    assert {"handoffs", "handoff_events", "subscriptions", "declines", "changes"} <= tables
    assert submission_index.lower() == "coalesce(submitted_at, created_at)"


def _index_expression(conn: Connection, name: str) -> str:
    """The expression an index of handoffs is on, as the database keeps it ("" when missing)."""
    if conn.dialect.name == "postgresql":
        stmt = "SELECT pg_get_expr(indexprs, indrelid) FROM pg_index WHERE indexrelid = to_regclass(%s)"
        found = conn.exec_driver_sql(stmt, (name,)).scalar()
    else:
        stmt = "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'handoffs' AND name = ?"
        sql = conn.exec_driver_sql(stmt, (name,)).scalar()
        found = sql[sql.index("(") + 1 : sql.rindex(")")] if sql else None
    return str(found or "")


def test_given_a_sqlite_database_then_it_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert mode == "wal"


def _triggers(db_url: str, table: str) -> set[str]:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            stmt = f"SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = '{table}'::regclass"
        else:
            stmt = f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{table}'"
        names = set(conn.exec_driver_sql(stmt).scalars())
    engine.dispose()
    return names


HOLDOUT_WATCHED = ("holdout_assignments", "transactions", "handoffs", "subscriptions")


def test_given_a_migrated_database_then_the_rollup_triggers_watch_handoffs(db_url: str) -> None:
    # given: a later migration that recreates `handoffs` (SQLite batch mode) would drop them silently
    # when
    names = _triggers(db_url, "handoffs")
    # then
    rollups = {"trg_handoffs_rollup_insert", "trg_handoffs_rollup_update", "trg_handoffs_rollup_delete"}
    assert names == rollups | {f"trg_handoffs_holdout_{kind}" for kind in ("insert", "update", "delete")}


@pytest.mark.parametrize("table", HOLDOUT_WATCHED)
def test_given_a_migrated_database_then_the_holdout_triggers_watch_each_table_it_reads(
    db_url: str, table: str
) -> None:
    # given: the holdout rollup settles an assignment from these tables (migration 0018)
    # when
    names = _triggers(db_url, table)
    # then
    assert {f"trg_{table}_holdout_{kind}" for kind in ("insert", "update", "delete")} <= names


def test_given_outcomes_recorded_before_the_queue_when_migrated_then_the_unapplied_ones_are_queued_and_a_downgrade_restores_applied_at(
    db_url: str,
) -> None:
    # given: the schema before the outcome queue, with an applied, an unapplied and an open hand-off
    command.downgrade(alembic_config(db_url), "0004")
    engine = make_engine(db_url)
    columns = (
        "id, source, order_id, purchase_id, transaction_id, gateway_id, declining_gateway_id, billing_cycle, "
        "amount_minor, currency, idempotency_key, request_body, dedupe_key, state, created_at, outcome_at, "
        "outcome_source, applied_at, late_outcome, poll_count, resend_count, updated_at"
    )
    rows = [
        ("ho-applied", "APPROVED", "2026-06-11 06:00:00", "2026-06-11 07:00:00"),
        ("ho-waiting", "EXPIRED", "2026-06-12 06:00:00", None),
        ("ho-open", "SUBMITTED", None, None),
    ]
    with engine.begin() as conn:
        for n, (handoff_id, state, outcome_at, applied_at) in enumerate(rows):
            conn.execute(
                text(
                    f"INSERT INTO handoffs ({columns}) VALUES (:id, 'RECYCLE', :o, :p, :t, 'ff', 'nmi', 3, 4749, "
                    "'USD', :key, '{}', :dedupe, :state, '2026-06-10 06:00:00', :outcome_at, 'POLL', :applied_at, "
                    "false, 0, 0, '2026-06-12 06:00:00')"
                ),
                {
                    "id": handoff_id,
                    "o": f"ord-{n}",
                    "p": f"sub-{n}",
                    "t": f"txn-{n}",
                    "key": f"key-{n}",
                    "dedupe": f"RECYCLE:{handoff_id}",
                    "state": state,
                    "outcome_at": outcome_at,
                    "applied_at": applied_at,
                },
            )
    # when
    command.upgrade(alembic_config(db_url), "head")
    with engine.connect() as conn:
        queued = conn.execute(
            text("SELECT handoff_id, state, order_id, amount_minor FROM outcome_queue")
        ).all()
    command.downgrade(alembic_config(db_url), "0004")
    with engine.connect() as conn:
        applied = dict(conn.execute(text("SELECT id, applied_at IS NOT NULL FROM handoffs")).all())
    engine.dispose()
    # then
    assert [tuple(r) for r in queued] == [("ho-waiting", "EXPIRED", "ord-1", 4749)]
    assert {k: bool(v) for k, v in applied.items()} == {
        "ho-applied": True,
        "ho-waiting": False,
        "ho-open": False,
    }


def test_given_0013_then_triggers_note_the_submission_instant_and_a_downgrade_notes_the_creation_instant(
    db_url: str,
) -> None:
    # given: a hand-off queued at one instant and sent at another
    queued, sent = datetime(2026, 7, 1, 2, tzinfo=UTC), datetime(2026, 7, 1, 6, 30, tzinfo=UTC)
    engine = make_engine(db_url)

    def noted_when_sent(handoff_id: str) -> set[datetime]:
        row = a_handoff(handoff_id, created=queued, state="PENDING", amount=100) | {"submitted_at": None}
        with engine.begin() as conn:
            conn.execute(insert(Handoff), [row])
            conn.execute(delete(RollupChange))
            conn.execute(update(Handoff).where(Handoff.id == handoff_id).values(submitted_at=sent))
            return set(conn.execute(select(RollupChange.created_at)).scalars())

    # when / then: at head, the day it left and the day it joined; before 0013, its creation only
    assert noted_when_sent("h-head") == {queued, sent}
    command.downgrade(alembic_config(db_url), "0012")
    assert noted_when_sent("h-0009") == {queued}
    command.upgrade(alembic_config(db_url), "head")
    assert noted_when_sent("h-again") == {queued, sent}
    engine.dispose()


def test_given_jobs_stored_under_the_old_package_when_migrated_then_they_keep_their_next_run_and_load(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a scheduler's store as an install before 0016 wrote it: target and trigger class under `jobs`
    command.downgrade(alembic_config(db_url), "0015")
    engine = make_engine(db_url)
    store = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)
    store.start(BackgroundScheduler(timezone=UTC), "default")  # creates the table, as a scheduler does
    trigger = LocalCronTrigger.from_settings("0 2 * * *", ZoneInfo("America/New_York"))
    due = datetime(2026, 6, 10, 6, tzinfo=UTC)  # 02:00 in New York, owed while the scheduler was down
    job_fields: dict[str, Any] = {
        "id": "submit",
        "name": "submit",
        "func": "recycle_engine.jobs.nightly_submit:run",
        "args": ("/etc/s.yaml",),
        "kwargs": {},
        "trigger": trigger,
        "executor": "default",
        "misfire_grace_time": 14400,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": due,
    }
    store.add_job(Job(BackgroundScheduler(timezone=UTC), **job_fields))
    with engine.begin() as conn:
        state = pickle.loads(conn.execute(text(f"SELECT job_state FROM {JOBSTORE_TABLE}")).scalar_one())
        state["func"] = "jobs.nightly_submit:run"
        with monkeypatch.context() as old_layout:
            old_layout.setitem(sys.modules, "jobs", ModuleType("jobs"))
            old_layout.setitem(sys.modules, "jobs.triggers", sys.modules[LocalCronTrigger.__module__])
            old_layout.setattr(LocalCronTrigger, "__module__", "jobs.triggers")
            written = pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
        conn.execute(text(f"UPDATE {JOBSTORE_TABLE} SET job_state = :s"), {"s": written})
    assert b"jobs.triggers" in written
    assert b"recycle_engine" not in written

    # when
    command.upgrade(alembic_config(db_url), "head")
    (job,) = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE).get_all_jobs()

    # then
    assert job.func_ref == "recycle_engine.jobs.nightly_submit:run"
    assert type(job.trigger) is LocalCronTrigger
    assert str(job.trigger) == str(trigger)
    assert job.next_run_time == due
    assert job.args == ("/etc/s.yaml",)

    # and when: downgraded, the store reads as the old layout again
    command.downgrade(alembic_config(db_url), "0015")
    with engine.connect() as conn:
        raw = conn.execute(text(f"SELECT job_state FROM {JOBSTORE_TABLE}")).scalar_one()
    engine.dispose()
    assert b"jobs.nightly_submit:run" in raw
    assert b"recycle_engine" not in raw
    with monkeypatch.context() as old_layout:
        old_layout.setitem(sys.modules, "jobs", ModuleType("jobs"))
        old_layout.setitem(sys.modules, "jobs.triggers", sys.modules[LocalCronTrigger.__module__])
        assert type(pickle.loads(raw)["trigger"]) is LocalCronTrigger


def test_given_holdout_assignments_before_0018_when_migrated_then_they_are_settled_and_the_report_reads_them_as_before(
    db_url: str,
) -> None:
    # given: a randomized book of holdout assignments written before the holdout rollup existed
    command.downgrade(alembic_config(db_url), "0017")
    engine = make_engine(db_url)
    rnd = random.Random(17)
    seed_book(engine, rnd, 60)
    # when
    command.upgrade(alembic_config(db_url), "head")
    with engine.connect() as conn:
        settled = conn.execute(
            select(HoldoutAssignment.final_outcome, func.count()).group_by(HoldoutAssignment.final_outcome)
        ).all()
        notes = conn.execute(select(func.count()).select_from(HoldoutChange)).scalar_one()
    refresh = refresh_rollups(engine, ZoneInfo("America/New_York"), now=datetime(2026, 6, 20, tzinfo=UTC))
    # then: settled by the migration (no note needed), its days built by the first refresh
    assert {outcome for outcome, _ in settled} == {"recovered", "lost", None}
    assert notes == 0
    assert refresh.holdout_days >= DAYS
    assert_rolled_up_equals_direct(engine, rnd)
    # and a downgrade removes the rollup, its notes and its triggers; upgrading again settles anew
    command.downgrade(alembic_config(db_url), "0017")
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        columns = {c["name"] for c in inspect(conn).get_columns("holdout_assignments")}
    assert not {"report_holdout_rollups", "report_holdout_changes"} & tables
    assert "final_at" not in columns
    assert not any("holdout" in name for table in HOLDOUT_WATCHED for name in _triggers(db_url, table))
    command.upgrade(alembic_config(db_url), "head")
    refresh_rollups(engine, ZoneInfo("America/New_York"), now=datetime(2026, 6, 21, tzinfo=UTC))
    assert_rolled_up_equals_direct(engine, rnd)
    engine.dispose()
