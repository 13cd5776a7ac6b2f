"""The daily report end to end on SQLite and PostgreSQL: numbers, escaping, no URLs, CSV, index, CLI, indexes."""

from __future__ import annotations

import csv
import gc
import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert, select

from recycle_engine.cli import main
from recycle_engine.config import Settings, load_settings
from recycle_engine.domain.night import Night
from recycle_engine.errors import RecycleEngineError
from recycle_engine.reports import queries, rollup_queries, trend_queries
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Decline, Handoff, HandoffEvent, JobRun, WebhookDelivery

DAY = date(2026, 6, 12)  # local day in America/New_York; it starts at 04:00 UTC
NIGHT = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)  # 02:00 local: the nightly submit run
NOW = datetime(2026, 6, 13, 10, 0, tzinfo=UTC)  # 06:00 local the next morning
SCRIPT = "<script>alert(1)</script>"
ENV = {
    "FLEXFACTOR_APP_KEY": "app-key",
    "FLEXFACTOR_APP_SECRET": "app-secret",
    "FLEXFACTOR_MID": "mid-1",
    "FLEXFACTOR_SITE_ID": "site-1",
    "FLEXFACTOR_ENVIRONMENT_KEY": "env-1",
    "FLEXFACTOR_HMAC_SIGNING_KEY": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
}
SETTINGS_YAML = """\
timezone: America/New_York
database:
  url: {url}
gateways:
  - id: nmi-main
    type: simulated
  - id: flexfactor-main
    type: flexfactor
    base_url: https://api-sandbox.flexfactor.io/v1
    app_key: ${{FLEXFACTOR_APP_KEY}}
    app_secret: ${{FLEXFACTOR_APP_SECRET}}
    mid: ${{FLEXFACTOR_MID}}
    site_id: ${{FLEXFACTOR_SITE_ID}}
    environment_key: ${{FLEXFACTOR_ENVIRONMENT_KEY}}
    hmac_signing_key: ${{FLEXFACTOR_HMAC_SIGNING_KEY}}
campaigns:
  - id: c1
    products: [{{id: p1, gateway: nmi-main}}]
recycle_profiles:
  - id: default
    gateways: [nmi-main]
    reduction_type: percent
    minimum_price: "5.00"
    attempts:
      - {{attempt: 1, days: 2, reduction: "0"}}
      - {{attempt: 4, days: 4, reduction: "0"}}
    slots: {{"4-6": flexfactor-main}}
reports: {{output_dir: {out}, fee_percent: 2.5}}
"""


def a_settings(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS_YAML.format(url=db_url, out=tmp_path / "out"), encoding="utf-8")
    return path


def a_handoff(id: str, *, created: datetime, state: str, amount: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": id,
        "source": "RECYCLE",
        "order_id": f"ord-{id}",
        "purchase_id": f"sub-{id}",
        "transaction_id": f"txn-{id}",
        "gateway_id": "flexfactor-main",
        "declining_gateway_id": "nmi-main",
        "slot": "4-6",
        "attempt": 4,
        "billing_cycle": 2,
        "amount_minor": amount,
        "currency": "USD",
        "idempotency_key": str(uuid.uuid4()),
        "request_body": "{}",
        "dedupe_key": f"RECYCLE:{id}",
        "state": state,
        "created_at": created,
        "send_started_at": created,
        "submitted_at": created if state != "FAILED" else None,
        "expires_at": created + timedelta(days=21),
        "outcome_at": None,
        "outcome_source": None,
        "late_outcome": False,
        "last_error": None,
        "attention": None,
        "poll_count": 0,
        "resend_count": 0,
        "updated_at": created,
    }
    return row | overrides


def a_decline(txn: str, text: str, code: str, brand: str, card_bin: str) -> dict[str, Any]:
    return {
        "transaction_id": txn,
        "declined_at": NIGHT - timedelta(days=12),
        "utc_offset_minutes": -240,
        "order_id": "ord",
        "order_type": "REBILL",
        "billing_cycle": 2,
        "completes_trial": False,
        "recurring_product": True,
        "shippable": False,
        "gateway_id": "nmi-main",
        "amount_minor": 4000,
        "currency": "USD",
        "response_type": "SOFT_DECLINE",
        "decline_type": "SOFT",
        "response_code": code,
        "response_text": text,
        "card_brand": brand,
        "card_bin": card_bin,
        "imported_at": NIGHT - timedelta(days=12),
    }


def seed(engine: Engine) -> None:
    """A small realistic book: the night's hand-offs of DAY, older ones of the month and of May."""
    h = a_handoff
    handoffs = [
        h("a-usd", created=NIGHT, state="APPROVED", amount=4000, outcome_at=NIGHT + timedelta(hours=12)),
        h("a-eur", created=NIGHT, state="APPROVED", amount=2500, currency="EUR", slot="final", attempt=10),
        h("d-usd", created=NIGHT, state="DECLINED", amount=1500, slot="7-9", attempt=7),
        h("p-usd", created=NIGHT, state="SUBMITTED", amount=2000),
        h("f-usd", created=NIGHT, state="FAILED", amount=999, last_error="billing zip is missing"),
        h("rerun", created=NIGHT, state="PENDING", amount=3000, source="RERUN", slot=None, attempt=None),
        h("casc", created=NIGHT, state="APPROVED", amount=1000, source="CASCADE", slot=None, attempt=None),
        h("jpy", created=datetime(2026, 6, 2, 6, tzinfo=UTC), state="APPROVED", amount=5000, currency="JPY"),
        h("flag", created=datetime(2026, 6, 5, 6, tzinfo=UTC), state="SUBMITTED", amount=1200),
        h(
            "late",
            created=datetime(2026, 5, 21, 6, tzinfo=UTC),
            state="APPROVED",
            amount=700,
            late_outcome=True,
        ),
        h("overdue", created=datetime(2026, 5, 15, 6, tzinfo=UTC), state="SUBMITTED", amount=800),
    ]
    outcomes = {
        "a-eur": NIGHT + timedelta(hours=1),
        "d-usd": NIGHT + timedelta(hours=2),
        "f-usd": NIGHT,
        "casc": NIGHT,
        "jpy": datetime(2026, 6, 4, 5, tzinfo=UTC),
        "late": NIGHT + timedelta(hours=6),
    }
    for row in handoffs:
        if row["id"] in outcomes:
            row["outcome_at"] = outcomes[row["id"]]
    handoffs[8]["attention"] = "capture_required"
    handoffs[7]["attention"] = "REFUNDED"  # a recovery refunded later: shown beside, never subtracted
    handoffs[8]["expires_at"] = NOW + timedelta(days=1)
    handoffs[10]["expires_at"] = datetime(2026, 6, 5, 6, tzinfo=UTC)
    declines = [
        a_decline("txn-a-usd", "Insufficient Funds", "51", "VISA", "411111"),
        a_decline("txn-a-eur", "INSUFFICIENT  FUNDS", "51", "MASTERCARD", "555555"),
        a_decline("txn-d-usd", SCRIPT, "05", "VISA", "411111"),
    ]
    event = {
        "handoff_id": "flag",
        "kind": "POLLED",
        "source": "POLL",
        "state_after": "SUBMITTED",
        "occurred_at": NIGHT + timedelta(hours=3),
    }
    hooks = [
        {"accepted": True, "reason": "unknown order", "handoff_id": None},
        {"accepted": True, "reason": "applied", "handoff_id": "a-usd"},
        {"accepted": False, "reason": "bad signature", "handoff_id": None},
        {"accepted": False, "reason": "bad signature", "handoff_id": None},
        {"accepted": True, "reason": "duplicate", "handoff_id": "a-usd", "is_duplicate": True},
    ]
    runs = [
        ("submit-1", "submit", NIGHT, NIGHT + timedelta(minutes=2), "SUCCEEDED", {"handed_off": 7}, None),
        ("reconcile-1", "reconcile", NIGHT + timedelta(hours=1), None, "FAILED", None, "FlexFactor timeout"),
    ]
    with engine.begin() as conn:
        conn.execute(insert(Handoff), handoffs)
        conn.execute(insert(Decline), declines)
        conn.execute(insert(HandoffEvent), [event])
        conn.execute(
            insert(WebhookDelivery),
            [
                {
                    "gateway_id": "flexfactor-main",
                    "received_at": NIGHT + timedelta(hours=i),
                    "http_status": 200,
                }
                | {"is_duplicate": False, "is_resent": False}
                | hook
                for i, hook in enumerate(hooks)
            ],
        )
        conn.execute(
            insert(JobRun),
            [
                {"id": i, "job": j, "logical_at": s, "started_at": s, "finished_at": f, "status": st}
                | {"counts": json.dumps(c) if c else None, "error": e}
                for i, j, s, f, st, c, e in runs
            ],
        )


def settings_for(tmp_path: Path, db_url: str) -> Settings:
    return load_settings(a_settings(tmp_path, db_url), ENV)


def test_given_a_book_when_the_report_runs_then_the_html_csv_and_index_hold_the_days_numbers(
    db_url: str, tmp_path: Path
) -> None:
    # given
    settings = settings_for(tmp_path, db_url)
    engine = make_engine(db_url)
    seed(engine)
    # when
    earlier = run_report(
        settings, engine, day=DAY - timedelta(days=1), night=Night.of(NOW, settings.timezone)
    )
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    engine.dispose()
    # then: the headline, by count and by amount per currency, and the fee
    html = result.html_path.read_text(encoding="utf-8")
    assert result.html_path.name == "recovery-2026-06-12.html"
    # in progress on the day 3 ÷ (3 + 1 + 2) and the month 4 ÷ (4 + 1 + 3); final over the closed cohorts
    # (submitted 2026-05-15 to 2026-05-21): the late approval and the overdue one, 1 ÷ 2
    rates = (
        r"Recovery rate: recovered ÷ \(recovered \+ lost \+ pending\)</th>\s*"
        + 3 * r'<td class="num">50.0 %</td>'
    )
    assert re.search(rates, html)
    assert "Recovery rate settled" not in html
    assert "How the rates are defined" in html
    refunded = (
        r"later refunded \(shown, not subtracted\)</th>\s*<td class=\"num\">0</td><td class=\"num\">1</td>"
    )
    assert re.search(refunded, html)  # day: none; month: the JPY recovery, still counted as recovered
    assert "115.00 USD" in html
    assert "50.00 USD" in html
    assert "25.00 EUR" in html
    assert "5,000 JPY" in html
    assert "1.25 USD" in html
    assert "48.75 USD" in html
    assert "insufficient funds" in html
    assert "Insufficient Funds" not in html
    # then: recycle saves per cycle (the rerun and the cascade are initial sales, left out)
    saves = r'<th scope="row">2</th><td class="num">7</td><td class="num">3</td>\s*<td class="num">1</td><td class="num">2</td><td class="num">50.0 %</td>'
    assert re.search(saves, html)
    # then: the three hand-offs with a decline on record, in the cohort of their decline day
    declined = r'<th scope="row">2026-05-31</th><td class="num">3</td><td class="num">2</td>\s*<td class="num">1</td><td class="num">0</td>'
    assert re.search(declined, html)
    # then: exceptions with what to do, webhooks and job runs
    for text in (
        "Pending past expiry",
        "CAPTURE_REQUIRED",
        "REFUNDED",
        "billing zip is missing",
        "Late approval",
    ):
        assert text in html
    assert "Sent, no answer for over an hour" in html
    assert "bad signature" in html
    assert "Webhook for an unknown order" in html
    assert "hmac_signing_key" in html
    assert "FlexFactor timeout" in html
    assert "handed_off 7" in html
    # then: user text is escaped, nothing is fetched from anywhere
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    assert "http://" not in html
    assert "https://" not in html
    assert 'href="recovery-2026-06-11.html"' in html
    # then: the CSV lists the hand-offs touched on the day, amounts as decimal text
    with result.csv_path.open(encoding="utf-8", newline="") as fh:
        rows = {r["submission_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"a-usd", "a-eur", "d-usd", "p-usd", "f-usd", "rerun", "casc", "late", "flag"}
    assert rows["a-usd"]["amount"] == "40.00"
    assert rows["a-usd"]["decline_reason"] == "Insufficient Funds"
    assert rows["a-usd"]["created_at"] == "2026-06-12T02:00:00-04:00"
    # then: the index links both reports, newest first, and the run is recorded
    index = result.index_path.read_text(encoding="utf-8")
    assert index.index("recovery-2026-06-12.html") < index.index("recovery-2026-06-11.html")
    assert result.counts["handoffs"] == 7
    assert result.counts["recovered"] == 3
    assert result.run_id != earlier.run_id


def test_given_settings_when_run_report_is_called_from_the_cli_then_it_prints_the_html_path(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given
    config = a_settings(tmp_path, sqlite_url)
    # when
    result = CliRunner().invoke(
        main, ["run", "report", "--date", DAY.isoformat(), "--config", str(config)], env=ENV
    )
    # then
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == tmp_path / "out" / "recovery-2026-06-12.html"
    assert path.is_file()
    assert (tmp_path / "out" / "recovery-2026-06-12.csv").is_file()


def test_given_a_report_when_it_runs_then_the_garbage_collector_is_left_as_it_was(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: objects the report keeps out of the collector while it runs
    settings = settings_for(tmp_path, sqlite_url)
    engine = make_engine(sqlite_url)
    seed(engine)
    # when
    run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    engine.dispose()
    # then
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


def test_given_a_bad_date_when_run_report_is_called_then_it_exits_with_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "report", "--date", "12/06/2026", "--config", "x.yaml"])
    assert result.exit_code == 2


def test_given_an_unwritable_output_folder_when_the_report_runs_then_it_fails_and_records_why(
    sqlite_url: str, tmp_path: Path
) -> None:
    # given: the output folder's path is taken by a file
    settings = settings_for(tmp_path, sqlite_url)
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    engine = make_engine(sqlite_url)
    # when
    with pytest.raises(RecycleEngineError, match="cannot write the report"):
        run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    # then
    with engine.connect() as conn:
        status, error = conn.execute(select(JobRun.status, JobRun.error).where(JobRun.job == "report")).one()
    engine.dispose()
    assert status == "FAILED"
    assert error


@pytest.mark.postgres
def test_given_postgresql_then_the_report_queries_filter_through_indexes(pg_url: str) -> None:
    # given
    engine = make_engine(pg_url)
    seed(engine)
    bounds = queries.ReportBounds.for_day(DAY, load_tz(), NOW)
    statements = [
        rollup_queries.cohort_facts_stmt(bounds),
        rollup_queries.decline_cohort_stmt(bounds),
        rollup_queries.breakdowns_stmt(bounds),
        queries.activity_stmt(bounds),
        queries.open_by_age_stmt(bounds, "postgresql"),
        queries.nearing_expiry_stmt(bounds),
        queries.webhooks_stmt(bounds),
        queries.job_runs_stmt(bounds),
        queries.detail_stmt(bounds, "postgresql"),
        *(queries.exception_stmt(bounds, k) for k in queries.EXCEPTION_KINDS),
        trend_queries.outcomes_per_day_stmt(DAY - timedelta(days=59), DAY),
    ]
    # when: sequential scans are priced out, a usable index is always taken
    plans = []
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        for stmt in statements:
            compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).fetchall()
            plans.append("\n".join(r[0] for r in rows))
    engine.dispose()
    # then
    tables = ("handoffs", "handoff_events", "webhook_deliveries", "job_runs")
    for table in (*tables, "report_cohort_rollups", "report_breakdown_rollups"):
        assert not [p for p in plans if f"Seq Scan on {table}" in p], table
    # then: the dashboard's outcomes per day are found by outcome day, not by reading every submission day
    assert "ix_report_cohort_rollups_outcome_cover" in plans[-1], plans[-1]


def load_tz() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


def _sqlite_plan(sqlite_url: str, stmt: Any) -> list[str]:
    """The steps of SQLite's EXPLAIN QUERY PLAN for `stmt` on a migrated, empty book."""
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = [str(r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled))]
    engine.dispose()
    return plan


def test_given_sqlite_then_the_holdout_query_finds_each_assignments_handoffs_by_purchase(
    sqlite_url: str,
) -> None:
    # given: SQLite plans without statistics; "state = 'APPROVED'" once looked as selective as the
    # purchase, and the query walked every approved hand-off for each assignment
    from recycle_engine.reports import lift_queries

    bounds = queries.ReportBounds.for_day(DAY, load_tz(), NOW)
    # when
    plan = _sqlite_plan(sqlite_url, lift_queries.lift_facts_stmt(bounds))
    # then
    searches = [step for step in plan if "SEARCH handoffs" in step]
    assert searches
    assert all("ix_handoffs_purchase_id" in step for step in searches), searches


def test_given_pending_and_submitted_handoffs_when_a_past_day_is_reported_then_only_those_pending_then_are_stuck(
    db_url: str,
) -> None:
    # given: as_of is the end of DAY (04:00 UTC on the 13th); every send started the night before
    as_of = queries.ReportBounds.for_day(DAY, load_tz(), NOW).as_of
    sent = NIGHT - timedelta(hours=2)
    h = a_handoff
    handoffs = [
        h("pending-now", created=sent, state="PENDING", amount=100, submitted_at=None),
        h("submitted-now", created=sent, state="SUBMITTED", amount=100),
        # queued then, approved after the day: PENDING as of the day
        h("pending-then", created=sent, state="APPROVED", amount=100, submitted_at=None)
        | {"outcome_at": as_of + timedelta(hours=1)},
        # accepted before the day's end and settled after: SUBMITTED as of the day
        h("accepted-then", created=sent, state="APPROVED", amount=100)
        | {"outcome_at": as_of + timedelta(hours=1)},
        # final before the day's end: no longer open
        h("final-before", created=sent, state="FAILED", amount=100)
        | {"outcome_at": as_of - timedelta(hours=1)},
        # its send started less than an hour before the day's end
        h("recent", created=sent, state="PENDING", amount=100, submitted_at=None)
        | {"send_started_at": as_of - timedelta(minutes=30)},
    ]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(Handoff), handoffs)
    # when
    with engine.connect() as conn:
        stmt = queries.exception_stmt(queries.ReportBounds.for_day(DAY, load_tz(), NOW), "STUCK_PENDING")
        rows = conn.execute(stmt).mappings().all()
    engine.dispose()
    # then
    assert sorted(r["handoff_id"] for r in rows) == ["pending-now", "pending-then"]
    assert {r["state"] for r in rows} == {"PENDING"}
    assert {r["total"] for r in rows} == {2}


def test_given_sqlite_then_the_open_handoffs_by_age_are_read_from_an_index_alone(sqlite_url: str) -> None:
    # given: the open hand-offs are found by state; each one read from the table cost 0.3 s of the
    # report at 5,000,000 hand-offs
    bounds = queries.ReportBounds.for_day(DAY, load_tz(), NOW)
    # when
    plan = _sqlite_plan(sqlite_url, queries.open_by_age_stmt(bounds, "sqlite"))
    # then
    by_state = [step for step in plan if "SEARCH handoffs" in step and "(state=?)" in step]
    assert by_state, plan
    assert all("COVERING INDEX ix_handoffs_recovered_cover" in step for step in by_state), by_state


@pytest.mark.parametrize(
    ("build", "index"),
    [
        (rollup_queries.cohort_facts_stmt, "ix_report_cohort_rollups_day_cover"),
        (rollup_queries.breakdowns_stmt, "ix_report_breakdown_rollups_breakdown_day_cover"),
    ],
)
def test_given_sqlite_then_the_cohorts_and_breakdowns_read_their_rollups_index_alone(
    sqlite_url: str, build: Any, index: str
) -> None:
    # given: a range of days of a rollup as large as the hand-offs, its rows scattered by refresh
    bounds = queries.ReportBounds.for_day(DAY, load_tz(), NOW)
    # when
    plan = _sqlite_plan(sqlite_url, build(bounds))
    # then
    assert any(f"COVERING INDEX {index}" in step for step in plan), plan


def test_given_sqlite_then_the_attention_flags_are_counted_from_an_index_alone(sqlite_url: str) -> None:
    # given: refunds and chargebacks stay flagged for good, so the flags grow with the history
    bounds = queries.ReportBounds.for_day(DAY, load_tz(), NOW)
    # when
    plan = _sqlite_plan(sqlite_url, queries.exception_stmt(bounds, "ATTENTION"))
    # then
    assert any("COVERING INDEX ix_handoffs_attention_created_at" in step for step in plan), plan
