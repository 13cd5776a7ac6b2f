"""The report opens with the ten-second summary and shows the whole ladder, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from recycle_engine.domain.night import Night
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt
from tests.integration.test_report import DAY, NIGHT, NOW, seed, settings_for


def a_retry(
    id: str, *, at: datetime, attempt: int, amount: int, result: str = "APPROVED", **kw: Any
) -> dict[str, Any]:
    row = {
        "id": id,
        "subscription_id": f"sub-{id}",
        "decline_transaction_id": f"txn-{id}",
        "attempt": attempt,
        "gateway_id": "nmi-main",
        "amount_minor": amount,
        "currency": "USD",
        "result": result,
        "response_text": None,
        "run_id": None,
        "occurred_at": at,
    }
    return row | kw


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    seed(eng)
    retries = [
        a_retry("r1", at=NIGHT, attempt=1, amount=1000),
        a_retry("r2", at=NIGHT + timedelta(hours=1), attempt=2, amount=250, currency="EUR"),
        a_retry("r3", at=NIGHT, attempt=1, amount=9999, result="SOFT_DECLINE"),  # not a recovery
        a_retry("r4", at=NIGHT - timedelta(days=1), attempt=1, amount=300),  # the day before
        a_retry("r5", at=NIGHT - timedelta(days=7), attempt=3, amount=200),  # a week before
        a_retry(
            "r6", at=datetime(2026, 5, 10, 16, tzinfo=UTC), attempt=1, amount=5000
        ),  # same days last month
        a_retry("r7", at=NOW + timedelta(hours=20), attempt=2, amount=7777),  # after the day: not yet
        # DAY begins at 04:00 UTC (EDT): 03:59:59 is the day before, 04:00 exactly is the day
        a_retry("r8", at=datetime(2026, 6, 12, 3, 59, 59, tzinfo=UTC), attempt=1, amount=100),
        a_retry("r9", at=datetime(2026, 6, 12, 4, 0, tzinfo=UTC), attempt=1, amount=50),
    ]
    with eng.begin() as conn:
        conn.execute(insert(Attempt), retries)
    yield eng
    eng.dispose()


def section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}"')
    return html[start : html.index("</section>", start)]


def text_of(fragment: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", fragment).split())


def test_given_a_book_when_the_report_runs_then_it_opens_with_the_summary_of_money_recovered_at_stake_and_exceptions(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # given
    settings = settings_for(tmp_path, db_url)
    # when
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    # then: the summary comes before every other section
    html = result.html_path.read_text(encoding="utf-8")
    first = html.index("<section", html.index("<main>"))
    assert html.index('<section id="summary"') == first
    summary = text_of(section(html, "summary"))
    # USD on the day: hand-offs a-usd 40.00 and late 7.00, cascade 10.00, retries r1 10.00 and r9 0.50;
    # the day before: r4 3.00 and r8 1.00; a week before: r5
    assert "USD 67.50 USD 5 payments 4.00 USD 2 payments 2.00 USD 1 payment" in summary
    # month to date: all of those; same days last month: r6 alone
    assert "73.50 USD 8 payments 50.00 USD 1 payment" in summary
    assert "EUR 27.50 EUR 2 payments" in summary
    assert "Still at stake: 70.00 USD in 4 open hand-offs" in summary
    assert re.search(r"\d+ exceptions need someone today: see what to do", summary)
    assert 'href="#exceptions"' in section(html, "summary")
    assert "77.77" not in summary  # recovered after the day: a re-rendered day reads as it did
    assert result.summary_text.startswith("Recovery report for 2026-06-12\n")
    assert "67.50 USD (5 payments)" in result.summary_text


def test_given_recoveries_by_every_method_when_the_report_runs_then_the_ladder_shows_each_rung(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # given
    settings = settings_for(tmp_path, db_url)
    # when
    result = run_report(settings, engine, day=DAY, night=Night.of(NOW, settings.timezone))
    # then
    by_method, by_attempt = section(result.html_path.read_text(encoding="utf-8"), "ladder").split("<table>")[
        1:
    ]
    assert [text_of(r) for r in by_method.split("<tr>")[2:]] == [
        "Ordinary retry on the declining gateway 3 2.50 EUR 10.50 USD 6 2.50 EUR 16.50 USD 54.5 %",
        "FlexFactor hand-off 3 25.00 EUR 47.00 USD 4 25.00 EUR 5,000 JPY 47.00 USD 36.4 %",
        "Cascade (real time) 1 10.00 USD 1 10.00 USD 9.1 %",
    ]
    rows = [text_of(r) for r in by_attempt.split("<tr>")[2:]]
    assert rows == [
        "Ordinary retry on the declining gateway 1 2 10.50 USD 4 14.50 USD 36.4 %",
        "Ordinary retry on the declining gateway 2 1 2.50 EUR 1 2.50 EUR 9.1 %",
        "Ordinary retry on the declining gateway 3 0 — 1 2.00 USD 9.1 %",
        "FlexFactor hand-off 4 2 47.00 USD 3 5,000 JPY 47.00 USD 27.3 %",
        "FlexFactor hand-off final 1 25.00 EUR 1 25.00 EUR 9.1 %",
        "Cascade (real time) — 1 10.00 USD 1 10.00 USD 9.1 %",
    ]
