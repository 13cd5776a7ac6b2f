"""`crm push` against the CRM fake over real HTTP, on SQLite and PostgreSQL: each change of the outbox
applied once (the fake's request log is the witness), lost answers read back before any resend, kill -9
mid-push, refusals recorded and shown, an unreachable CRM leaving the rest for the next push."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from recycle_engine.adapters.crm_http import CrmClient
from recycle_engine.cli import main
from recycle_engine.config import Settings
from recycle_engine.crm_fake.book import load_feed_rows
from recycle_engine.crm_fake.server import RunningFakeCrm, start_fake_crm
from recycle_engine.crm_fake.state import FakeCrm, Fault, FaultKind
from recycle_engine.domain.night import Night
from recycle_engine.errors import CrmRefused
from recycle_engine.services.crm.pull import pull_declines
from recycle_engine.services.crm.push import PushResult, push_changes
from recycle_engine.services.reporting.report import run_report
from recycle_engine.storage.db import make_engine
from tests.crm_helpers import (
    CRM_ENV,
    CRM_LOGIN,
    CRM_PASSWORD,
    count,
    crm_settings,
    crm_settings_file,
    feed_rows,
)

DAY = datetime(2026, 6, 1, tzinfo=UTC)
PULLED_AT = DAY + timedelta(days=1, hours=1)
PUSH_AT = PULLED_AT + timedelta(hours=4)
UPDATES = ("/purchase/update/", "/purchase/cancel/")


@pytest.fixture
def fake() -> Iterator[RunningFakeCrm]:
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD, hold_s=3.0))
    yield running
    running.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, fake: RunningFakeCrm) -> Settings:
    return crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=fake.url, read_timeout_s=1.0))


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def client(settings: Settings) -> CrmClient:
    assert settings.crm is not None
    return CrmClient(settings.crm, sleep=lambda _s: None)


def a_pulled_book(
    fake: RunningFakeCrm, settings: Settings, engine: Engine, n: int = 60
) -> set[tuple[str, str]]:
    """Declines pulled from the fake; returns the (purchaseId, status) changes the CRM should receive."""
    load_feed_rows(fake.fake, feed_rows(n, DAY, seed=61))
    crm = client(settings)
    pull_declines(settings, engine, crm, now=PULLED_AT, since=DAY, until=DAY + timedelta(days=1))
    crm.close()
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT entity_id, new_value FROM changes WHERE entity = 'SUBSCRIPTION' AND field = 'status'"
            )
        ).all()
    return {(str(r[0]), str(r[1])) for r in rows}


def push(settings: Settings, engine: Engine, now: datetime = PUSH_AT) -> PushResult:
    crm = client(settings)
    try:
        return push_changes(settings, engine, crm, now=now, sleep=lambda _s: None)
    finally:
        crm.close()


def applied(fake: RunningFakeCrm) -> Counter[tuple[str, str]]:
    return Counter(
        (e["applied"]["purchaseId"], e["applied"]["status"])
        for e in fake.fake.applied()
        if "status" in e["applied"]
    )


def test_given_a_book_with_changes_when_pushed_twice_then_each_reaches_the_crm_once(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given
    expected = a_pulled_book(fake, settings, engine)

    # when
    first = push(settings, engine)
    second = push(settings, engine, PUSH_AT + timedelta(hours=1))

    # then
    assert expected
    assert applied(fake) == Counter(expected)
    assert first.counts["delivered"] == len(expected)
    assert second.counts["delivered"] == 0
    assert {fake.fake.purchases[p]["status"] for p, _ in expected} <= {"RECYCLE_BILLING", "RECYCLE_FAILED"}
    assert count(engine, "SELECT COUNT(*) FROM crm_deliveries WHERE state = 'DELIVERED'") == len(expected)
    # the rest of the outbox has no CRM endpoint and says so
    assert count(engine, "SELECT COUNT(*) FROM crm_deliveries WHERE state = 'UNSUPPORTED'") > 0


@pytest.mark.parametrize("fault", [FaultKind.APPLIED_THEN_SERVER_ERROR, FaultKind.APPLIED_THEN_TIMEOUT])
def test_given_an_answer_lost_after_the_crm_applied_a_change_when_pushing_then_it_is_read_back_not_resent(
    fake: RunningFakeCrm, settings: Settings, engine: Engine, fault: FaultKind
) -> None:
    # given
    expected = a_pulled_book(fake, settings, engine, n=10)
    fake.fake.add_faults(Fault(fault, "/purchase/update/"))

    # when
    result = push(settings, engine)

    # then
    assert applied(fake) == Counter(expected)
    assert result.counts["read_back"] == 1
    assert result.counts["delivered"] == len(expected) - 1


def test_given_an_error_envelope_for_one_change_when_pushing_then_it_is_refused_with_the_message_and_the_rest_go(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given
    expected = a_pulled_book(fake, settings, engine, n=10)
    fake.fake.add_faults(
        Fault(FaultKind.ERROR_ENVELOPE, "/purchase/update/", "Purchase is locked by a chargeback")
    )
    runner = CliRunner()

    # when
    result = push(settings, engine)
    status = runner.invoke(main, ["--config", str(settings.source_path), "status"], env=CRM_ENV)
    listed = runner.invoke(
        main, ["--config", str(settings.source_path), "crm", "deliveries", "--state", "REFUSED"]
    )

    # then
    assert result.counts["refused"] == 1
    assert sum(applied(fake).values()) == len(expected) - 1
    assert "refused 1" in status.output
    assert "Purchase is locked by a chargeback" in listed.output


def test_given_the_crm_unreachable_when_pushing_then_the_rest_waits_and_a_later_push_delivers_each_once(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: the third update and every retry of it fail
    expected = a_pulled_book(fake, settings, engine, n=10)
    fake.fake.add_faults(
        Fault(
            FaultKind.ERROR_ENVELOPE, "/transactions/query/"
        ),  # never used by push: proves endpoint scoping
    )
    for _ in range(2):
        fake.fake.add_faults(Fault(FaultKind.SLOW, "/purchase/update/", seconds=0))
    fake.fake.add_faults(*[Fault(FaultKind.SERVER_ERROR, "/purchase/update/")] * 3)

    # when
    first = push(settings, engine)
    too_soon = push(settings, engine, PUSH_AT + timedelta(minutes=1))
    later = push(settings, engine, PUSH_AT + timedelta(hours=1))

    # then
    assert first.stopped is not None
    assert "HTTP 500" in first.stopped
    assert first.counts["delivered"] == 2
    assert too_soon.counts["delivered"] == 0
    assert later.stopped is None
    assert applied(fake) == Counter(expected)
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status FROM job_runs WHERE job = 'push' ORDER BY started_at")).all()
    assert [r[0] for r in runs] == ["FAILED", "INCOMPLETE", "SUCCEEDED"]


def test_given_the_api_user_refused_when_pushing_then_nothing_is_marked_refused_and_the_changes_wait(
    tmp_path: Path, db_url: str
) -> None:
    # given: a book pulled with the right password, then the CRM's password changes
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD))
    settings = crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=running.url))
    engine = make_engine(settings.database_url)
    a_pulled_book(running, settings, engine, n=5)
    running.fake.password = "rotated-password"

    # when
    with pytest.raises(CrmRefused) as caught:
        push(settings, engine)
    running.stop()

    # then
    assert "Invalid login credentials" in str(caught.value)
    assert count(engine, "SELECT COUNT(*) FROM crm_deliveries WHERE state IN ('REFUSED', 'SENDING')") == 0
    assert count(engine, "SELECT COUNT(*) FROM crm_deliveries WHERE state = 'PENDING'") > 0
    engine.dispose()


def test_given_a_push_killed_mid_delivery_when_run_again_then_no_change_is_applied_twice_or_missed(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: slow updates, so the kill lands between deliveries or inside one
    expected = a_pulled_book(fake, settings, engine, n=80)
    fake.fake.add_faults(*[Fault(FaultKind.SLOW, "/purchase/update/", seconds=0.15) for _ in range(200)])
    assert settings.source_path is not None
    child = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "recycle_engine", "--config", str(settings.source_path), "crm", "push",
         "--since", DAY.isoformat()],
        env={**os.environ, **CRM_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while sum(applied(fake).values()) < 5:
            assert child.poll() is None, "the push ended before it could be killed"
            assert time.monotonic() < deadline, "no change applied within 60 s"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    before = sum(applied(fake).values())
    fake.fake.clear_faults()  # the slow pages were there for the kill; the rerun need not wait

    # when
    push(settings, engine)

    # then
    assert 5 <= before < len(expected)
    assert applied(fake) == Counter(expected)
    assert (
        count(engine, "SELECT COUNT(*) FROM crm_deliveries WHERE state IN ('PENDING', 'SENDING', 'RETRY')")
        == 0
    )


def test_given_a_change_the_crm_refused_when_the_days_report_is_written_then_its_exceptions_list_it(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given
    a_pulled_book(fake, settings, engine, n=10)
    fake.fake.add_faults(Fault(FaultKind.ERROR_ENVELOPE, "/purchase/update/", "Purchase is locked"))
    push(settings, engine)

    # when
    day = PUSH_AT.astimezone(settings.timezone).date()
    report = run_report(
        settings, engine, day=day, night=Night.of(PUSH_AT + timedelta(hours=2), settings.timezone)
    )

    # then
    html = report.html_path.read_text(encoding="utf-8")
    assert "Change refused by the CRM" in html
    assert "crm deliveries --state REFUSED" in html


def test_given_two_pushes_at_once_when_they_deliver_then_each_change_reaches_the_crm_once(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: slow updates, so the two pushes overlap
    expected = a_pulled_book(fake, settings, engine, n=60)
    fake.fake.add_faults(*[Fault(FaultKind.SLOW, "/purchase/update/", seconds=0.02) for _ in range(100)])

    # when
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _n: push(settings, engine), range(2)))
    push(settings, engine, PUSH_AT + timedelta(hours=1))  # whatever one left to the other is done here

    # then
    assert applied(fake) == Counter(expected)
    assert sum(r.counts["delivered"] + r.counts["read_back"] for r in results) <= len(expected)


def test_given_a_card_number_in_the_crms_error_message_when_a_change_is_refused_then_it_is_stored_masked(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given
    a_pulled_book(fake, settings, engine, n=5)
    fake.fake.add_faults(
        Fault(FaultKind.ERROR_ENVELOPE, "/purchase/update/", "card 4111111111111111 is blocked")
    )

    # when
    push(settings, engine)

    # then
    with engine.connect() as conn:
        answers = [
            r[0] for r in conn.execute(text("SELECT answer FROM crm_deliveries WHERE state = 'REFUSED'"))
        ]
    assert answers == ["card ************1111 is blocked"]
