"""`crm pull` against the CRM fake over real HTTP, on SQLite and PostgreSQL: the same book as a CSV
import of the same rows, resumption after kill -9, each fault ending in a recorded state, the lookback,
rows landing mid-paging, and card numbers never kept or logged."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, Row, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.crm_http import CrmClient
from recycle_engine.cli import main
from recycle_engine.config import Settings
from recycle_engine.crm_fake.book import load_feed_rows, records_of
from recycle_engine.crm_fake.server import RunningFakeCrm, start_fake_crm
from recycle_engine.crm_fake.state import FakeCrm, Fault, FaultKind
from recycle_engine.errors import CrmRefused, CrmUnavailable
from recycle_engine.services.crm.pull import DECLINE_TYPES, _prefetched, _Pull, pull_declines
from recycle_engine.services.intake.import_declines import import_declines
from recycle_engine.storage import crm_repo
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import JobRun
from tests.crm_helpers import (
    CRM_ENV,
    CRM_LOGIN,
    CRM_PASSWORD,
    TEST_PAN,
    Meeting,
    book,
    count,
    crm_settings,
    crm_settings_file,
    every_text,
    feed_rows,
    write_csv,
)

DAY = datetime(2026, 6, 1, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=2)
UNTIL = DAY + timedelta(days=1)


@pytest.fixture
def fake() -> Iterator[RunningFakeCrm]:
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD, hold_s=3.0))
    yield running
    running.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, fake: RunningFakeCrm) -> Settings:
    return crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=fake.url, per_page=50))


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def pull(settings: Settings, engine: Engine, **kwargs: object) -> dict[str, int]:
    assert settings.crm is not None
    client = CrmClient(settings.crm, sleep=lambda _s: None)
    try:
        result = pull_declines(settings, engine, client, now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    finally:
        client.close()
    return result.counts


def last_run(engine: Engine) -> Row[tuple[str, str | None]]:
    """Status and error of the latest pull run."""
    with engine.connect() as conn:
        row = conn.execute(
            select(JobRun.status, JobRun.error)
            .where(JobRun.job == "pull")
            .order_by(JobRun.started_at.desc(), JobRun.id.desc())
        ).first()
    assert row is not None
    return row


def cursor(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return crm_repo.read_cursor(conn)


# --- the same book as a CSV import ---------------------------------------------------------------


def test_given_thousands_of_declines_over_many_pages_when_pulled_then_the_book_equals_a_csv_import(
    fake: RunningFakeCrm, settings: Settings, engine: Engine, twin_db_url: str, tmp_path: Path
) -> None:
    # given
    rows = feed_rows(3000, DAY)
    load_feed_rows(fake.fake, rows)
    twin = make_engine(twin_db_url)
    csv_settings = Settings(**{**settings.__dict__, "database_url": twin_db_url})

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)
    import_declines(
        write_csv(tmp_path / "same.csv", rows), settings=csv_settings, engine=twin, clock=FixedClock(NOW)
    )

    # then
    assert counts["accepted"] == 3000
    assert counts["rejected"] == 0
    assert counts["pages"] >= 60  # 50 a page, two decline types
    assert book(engine) == book(twin)
    assert cursor(engine) == UNTIL
    twin.dispose()


# --- resumption ----------------------------------------------------------------------------------


def test_given_a_pull_killed_mid_window_when_run_again_then_no_row_is_missing_or_twice(
    fake: RunningFakeCrm, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # given: slow pages, so the kill lands while pages are still being read
    rows = feed_rows(1500, DAY, seed=11)
    load_feed_rows(fake.fake, rows)
    fake.fake.add_faults(*[Fault(FaultKind.SLOW, "/transactions/query/", seconds=0.3) for _ in range(40)])
    env = {**os.environ, **CRM_ENV}
    assert settings.source_path is not None
    child = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "recycle_engine", "--config", str(settings.source_path), "crm", "pull",
         "--since", DAY.isoformat(), "--until", UNTIL.isoformat()],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while count(engine, "SELECT COUNT(*) FROM declines") == 0:
            assert child.poll() is None, "the pull ended before it could be killed"
            assert time.monotonic() < deadline, "no decline written within 60 s"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    written_before = count(engine, "SELECT COUNT(*) FROM declines")
    fake.fake.clear_faults()  # the slow pages were there for the kill; the rerun need not wait

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert 0 < written_before < 1500
    assert cursor(engine) == UNTIL
    assert count(engine, "SELECT COUNT(*) FROM declines") == 1500
    assert count(engine, "SELECT COUNT(DISTINCT transaction_id) FROM declines") == 1500
    assert counts["accepted"] + counts["duplicates"] == 1500
    assert counts["accepted"] == 1500 - written_before


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ([Fault(FaultKind.SERVER_ERROR, "/transactions/query/")] * 3, (CrmUnavailable, "HTTP 500")),
        ([Fault(FaultKind.ERROR_ENVELOPE, "/order/query/", "Order service is down")], (CrmRefused, "down")),
    ],
    ids=["5xx-beyond-retries", "error-envelope"],
)
def test_given_a_fault_the_retries_cannot_cure_when_pulling_then_the_run_fails_with_the_reason_and_the_cursor_stays(
    fake: RunningFakeCrm,
    settings: Settings,
    engine: Engine,
    faults: list[Fault],
    expected: tuple[type[Exception], str],
) -> None:
    # given
    load_feed_rows(fake.fake, feed_rows(120, DAY, seed=3))
    fake.fake.add_faults(*faults)

    # when
    with pytest.raises(expected[0]) as caught:
        pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert expected[1] in str(caught.value)
    run = last_run(engine)
    assert (run.status, expected[1] in (run.error or "")) == ("FAILED", True)
    assert cursor(engine) is None
    # and the next pull completes the window
    pull(settings, engine, since=DAY, until=UNTIL)
    assert count(engine, "SELECT COUNT(*) FROM declines") == 120
    assert cursor(engine) == UNTIL


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.SERVER_ERROR, "/transactions/query/"),
        Fault(FaultKind.TIMEOUT, "/purchase/query/"),
        Fault(FaultKind.SLOW, "/transactions/query/", seconds=0.5),
    ],
    ids=["one-5xx", "one-timeout", "slow-page"],
)
def test_given_a_passing_fault_when_pulling_then_the_query_is_retried_and_the_window_completes(
    fake: RunningFakeCrm, tmp_path: Path, db_url: str, fault: Fault
) -> None:
    # given
    settings = crm_settings(
        crm_settings_file(tmp_path, db_url=db_url, crm_url=fake.url, per_page=50, read_timeout_s=1.0)
    )
    engine = make_engine(settings.database_url)
    load_feed_rows(fake.fake, feed_rows(120, DAY, seed=5))
    fake.fake.add_faults(fault)

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert counts["accepted"] == 120
    assert last_run(engine).status == "SUCCEEDED"
    assert any(e.get("fault") == fault.kind.value for e in fake.fake.log())
    engine.dispose()


@pytest.mark.parametrize(
    ("fake_crm", "message"),
    [
        (FakeCrm(CRM_LOGIN, "another-password"), "Invalid login credentials"),
        (FakeCrm(CRM_LOGIN, CRM_PASSWORD, allowed_ips=frozenset({"10.9.9.9"})), "is not allowed"),
    ],
    ids=["credentials", "ip-allow-list"],
)
def test_given_the_crm_refuses_the_api_user_when_pulling_then_its_message_is_recorded_and_no_secret(
    tmp_path: Path, db_url: str, fake_crm: FakeCrm, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    running = start_fake_crm(fake_crm)
    settings = crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=running.url))
    engine = make_engine(settings.database_url)
    runner = CliRunner()

    # when
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(main, ["--config", str(settings.source_path), "crm", "pull"], env=CRM_ENV)
    running.stop()

    # then
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    run = last_run(engine)
    assert run.status == "FAILED"
    assert message in (run.error or "")
    assert CRM_PASSWORD not in result.output + caplog.text + json.dumps(fake_crm.log())
    engine.dispose()


def test_given_no_declines_in_the_window_when_pulling_then_the_empty_message_is_zero_rows(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert counts["read"] == 0
    assert last_run(engine).status == "SUCCEEDED"
    assert cursor(engine) == UNTIL
    assert {e["result"] for e in fake.fake.log()} == {"ERROR"}  # the CRM's way of saying "none"


def test_given_a_proxy_in_the_environment_when_the_client_calls_then_it_goes_through_the_proxy(
    fake: RunningFakeCrm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the fake stands in for the proxy; the CRM's own host name does not resolve
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, fake.url)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    path = crm_settings_file(tmp_path, db_url=f"sqlite:///{tmp_path}/unused.db", crm_url="http://crm.invalid")
    crm = crm_settings(path).crm
    assert crm is not None
    client = CrmClient(crm, sleep=lambda _s: None)

    # when
    try:
        window = {"startDate": "06/01/2026", "endDate": "06/02/2026", "responseType": "SOFT_DECLINE"}
        page = client.query_page("/transactions/query/", window, 1)
    finally:
        client.close()

    # then: the fake answered its "nothing matched", so the call went through the proxy
    assert page.rows == []
    assert [e["result"] for e in fake.fake.log()] == ["ERROR"]


# --- late rows -----------------------------------------------------------------------------------


def test_given_rows_landing_inside_the_window_while_paging_when_pulled_then_none_is_skipped_or_doubled(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: after page 2, ten declines land at the window's start, shifting every later row
    rows = feed_rows(400, DAY + timedelta(hours=1), seed=21)
    late = feed_rows(10, DAY + timedelta(minutes=1), seed=22, span=timedelta(minutes=5))
    load_feed_rows(fake.fake, rows)
    late_soft = [r for r in late if r["response_type"] == "SOFT_DECLINE"] or late[:1]
    for row in late_soft:
        row["response_type"] = "SOFT_DECLINE"
    fake.fake.arrive_after_page(2, [records_of(r)[0] for r in late_soft])
    fake.fake.add(
        (), [records_of(r)[1] for r in late_soft], [p for r in late_soft if (p := records_of(r)[2])]
    )

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert count(engine, "SELECT COUNT(*) FROM declines") == 400 + len(late_soft)
    assert count(engine, "SELECT COUNT(DISTINCT transaction_id) FROM declines") == 400 + len(late_soft)
    assert counts["passes"] >= 3  # the soft declines were read again once the total moved


def test_given_a_row_written_late_into_a_window_already_read_when_the_next_pull_runs_then_the_lookback_catches_it(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: a first pull up to UNTIL, then a decline dated 20 minutes before UNTIL appears
    load_feed_rows(fake.fake, feed_rows(30, DAY, seed=31))
    pull(settings, engine, since=DAY, until=UNTIL)
    load_feed_rows(fake.fake, feed_rows(1, UNTIL - timedelta(minutes=20), seed=32, span=timedelta(0)))

    # when: the next pull starts at the cursor less the 60-minute lookback
    counts = pull(settings, engine, until=UNTIL + timedelta(hours=1), now=NOW + timedelta(hours=1))

    # then
    assert counts["accepted"] == 1
    assert count(engine, "SELECT COUNT(*) FROM declines") == 31
    assert cursor(engine) == UNTIL + timedelta(hours=1)


# --- card numbers --------------------------------------------------------------------------------


def test_given_a_card_number_in_crm_fields_when_pulled_then_the_rows_are_rejected_and_it_is_never_stored_or_logged(
    fake: RunningFakeCrm, settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # given: a card number in a mapped field, in a grouped form, and in a field no column takes
    rows = feed_rows(5, DAY, seed=41)
    load_feed_rows(fake.fake, rows)
    spaced = " ".join(TEST_PAN[i : i + 4] for i in range(0, 16, 4))
    fake.fake.transactions[0]["responseText"] = f"declined card {TEST_PAN}"
    fake.fake.transactions[1]["firstName"] = spaced
    fake.fake.transactions[2]["notes"] = TEST_PAN
    fake.fake.orders[rows[3]["order_id"]]["orderType"] = TEST_PAN
    runner = CliRunner()

    # when
    with caplog.at_level(logging.DEBUG):
        result = runner.invoke(
            main,
            ["--config", str(settings.source_path), "crm", "pull", "--since", DAY.isoformat(),
             "--until", UNTIL.isoformat()],
            env=CRM_ENV,
        )  # fmt: skip
        rejects = runner.invoke(main, ["--config", str(settings.source_path), "crm", "rejects", "--json"])

    # then
    assert result.exit_code == 0, result.output
    assert "accepted 2, rejected 3" in result.output
    by_id = {json.loads(line)["transaction_id"]: json.loads(line) for line in rejects.output.splitlines()}
    assert (
        by_id[rows[0]["transaction_id"]]["reason"] == "response_text: looks like a full card number (removed)"
    )
    assert by_id[rows[1]["transaction_id"]]["reason"] == "first_name: looks like a full card number (removed)"
    assert by_id[rows[3]["transaction_id"]]["reason"] == "order_type: looks like a full card number (removed)"
    stored = "\n".join(every_text(engine))
    for written in (TEST_PAN, spaced):
        assert written not in stored
        assert written not in caplog.text + result.output + rejects.output


def test_given_a_transaction_whose_order_the_crm_lacks_when_pulled_then_the_reject_says_so(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given
    rows = feed_rows(3, DAY, seed=51)
    load_feed_rows(fake.fake, rows)
    del fake.fake.orders[rows[1]["order_id"]]

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert (counts["accepted"], counts["rejected"]) == (2, 1)
    with engine.connect() as conn:
        (reject,) = crm_repo.recent_rejects(conn, 10)
    assert (reject.transaction_id, reject.reason) == (
        rows[1]["transaction_id"],
        "order_id: the CRM has no such order (/order/query/)",
    )


def test_given_a_crm_serving_smaller_pages_than_asked_when_pulled_then_every_page_is_read(
    tmp_path: Path, db_url: str
) -> None:
    # given: 200 asked, 100 served (and said so in resultsPerPage)
    running = start_fake_crm(FakeCrm(CRM_LOGIN, CRM_PASSWORD, page_cap=100))
    settings = crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=running.url, per_page=200))
    engine = make_engine(settings.database_url)
    load_feed_rows(running.fake, feed_rows(450, DAY, seed=81))

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)
    running.stop()

    # then
    assert counts["accepted"] == 450
    engine.dispose()


def test_given_a_rejected_row_fixed_in_the_crm_when_its_period_is_read_again_then_it_is_imported_and_no_longer_listed(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: a decline on a merchant the settings do not know
    rows = feed_rows(3, DAY, seed=91)
    load_feed_rows(fake.fake, rows)
    fake.fake.transactions[1]["merchantId"] = "99"
    pull(settings, engine, since=DAY, until=UNTIL)
    with engine.connect() as conn:
        assert [r.reason for r in crm_repo.recent_rejects(conn, 10)] == [
            "gateway_id: not a gateway in the settings"
        ]

    # when: fixed at the CRM, the period is read again
    fake.fake.transactions[1]["merchantId"] = "nmi"
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert (counts["accepted"], counts["duplicates"]) == (1, 2)
    with engine.connect() as conn:
        assert crm_repo.recent_rejects(conn, 10) == []


def test_given_pages_whose_orders_fill_a_page_when_pulled_then_each_lookup_is_one_call(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: 50 rows a page, so each page's 50 order ids are a full page of orders
    load_feed_rows(fake.fake, feed_rows(200, DAY, seed=97))

    # when
    pull(settings, engine, since=DAY, until=UNTIL)

    # then: no call asks for a page after the one that held every id
    log = fake.fake.log()
    pages = [e for e in log if e["endpoint"] == "/transactions/query/" and e.get("result") == "SUCCESS"]
    orders = [e for e in log if e["endpoint"] == "/order/query/"]
    assert len(orders) == len(pages)
    assert {e.get("result") for e in orders} == {"SUCCESS"}


# --- calls overlapped ----------------------------------------------------------------------------


def pages_of(fake: FakeCrm, per_page: int) -> dict[str, tuple[str, int]]:
    """Order and purchase id -> (decline type, page number) of the transactions page naming it."""
    found: dict[str, tuple[str, int]] = {}
    for decline_type in DECLINE_TYPES:
        records = [t for t in fake.transactions if t["responseType"] == decline_type]  # oldest first
        for n, record in enumerate(records):
            for key in ("orderId", "purchaseId"):
                if record.get(key):
                    found[str(record[key])] = (decline_type, n // per_page + 1)
    return found


def test_given_a_crm_far_away_when_pulled_then_a_pages_look_ups_and_the_next_page_are_in_flight_together(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: rows that each name an order and a purchase, 50 a page; the fake holds every call of a
    # group until the whole group has arrived: a page's order and purchase look-ups, and the next
    # transactions page (the first hard-decline page after the last soft one)
    rows = [r for r in feed_rows(500, DAY, seed=61) if r["purchase_id"]]
    load_feed_rows(fake.fake, rows)
    page_of = pages_of(fake.fake, 50)
    last = {t: max(n for kind, n in page_of.values() if kind == t) for t in DECLINE_TYPES}
    before_first_hard = ("SOFT_DECLINE", last["SOFT_DECLINE"])

    def group_of(endpoint: str, params: Mapping[str, str]) -> tuple[Hashable, int] | None:
        if endpoint == "/transactions/query/":
            page = (params["responseType"], int(params["page"]))
            before = before_first_hard if page == ("HARD_DECLINE", 1) else (page[0], page[1] - 1)
            return (before, 3) if before[1] >= 1 else None
        key = "orderId" if endpoint == "/order/query/" else "purchaseId"
        page = page_of[params[key].split(",")[0]]
        return (page, 2 if page == ("HARD_DECLINE", last["HARD_DECLINE"]) else 3)

    meeting = Meeting(group_of)
    fake.fake.on_arrival = meeting

    # when
    counts = pull(settings, engine, since=DAY, until=UNTIL)

    # then
    assert meeting.missed == []
    assert meeting.met == set(page_of.values())
    assert counts["accepted"] == len(rows)
    look_ups = [e for e in fake.fake.log() if e["endpoint"] in ("/order/query/", "/purchase/query/")]
    assert all(
        set(e["alongside"]) >= {"/order/query/", "/purchase/query/"} - {e["endpoint"]} for e in look_ups
    )
    assert cursor(engine) == UNTIL


def test_given_the_reader_stops_after_one_page_when_it_closes_the_pages_then_every_worker_has_stopped(
    fake: RunningFakeCrm, settings: Settings, engine: Engine
) -> None:
    # given: 40 pages to read, two held ahead
    load_feed_rows(fake.fake, feed_rows(2000, DAY, seed=71))
    assert settings.crm is not None
    client = CrmClient(settings.crm, sleep=lambda _s: None)
    puller = _Pull(settings, settings.crm, engine, client, "run-1", NOW, DAY, UNTIL)
    pages = _prefetched(puller._pages(DECLINE_TYPES), 2)

    # when
    next(pages)
    pages.close()

    # then: no thread of the pull is left, and it stopped paging a few pages ahead
    left = [t.name for t in threading.enumerate() if t.name.startswith(("crm-pages", "crm-details"))]
    assert left == []
    read = [e for e in fake.fake.log() if e["endpoint"] == "/transactions/query/"]
    assert len(read) < 10
    client.close()
