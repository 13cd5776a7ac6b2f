"""`crm pull` reading and checking in a forked child while this process writes: the CRM fake runs in a
process of its own (as `crm-fake` does for a merchant), so the pull's process is single-threaded and
may fork. The same book as a CSV import, and a CRM failure in the child reaching the run as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.crm_http import CrmClient
from recycle_engine.config import Settings
from recycle_engine.errors import CrmRefused
from recycle_engine.services.crm.pull import pull_declines
from recycle_engine.services.forked_stage import can_fork
from recycle_engine.services.intake.import_declines import import_declines
from recycle_engine.storage import crm_repo
from recycle_engine.storage.db import make_engine
from tests.crm_helpers import (
    CRM_LOGIN,
    CRM_PASSWORD,
    book,
    count,
    crm_settings,
    crm_settings_file,
    feed_rows,
    write_csv,
)

DAY = datetime(2026, 6, 1, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=2)
UNTIL = DAY + timedelta(days=1)
ROWS = feed_rows(1200, DAY, seed=29)


@pytest.fixture
def fake_url(tmp_path: Path) -> Iterator[str]:
    """`crm-fake` in its own process, holding ROWS; its root URL (printed once the records are loaded)."""
    env = os.environ | {"CRM_FAKE_LOGIN_ID": CRM_LOGIN, "CRM_FAKE_PASSWORD": CRM_PASSWORD}
    declines = write_csv(tmp_path / "crm-declines.csv", ROWS)
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "recycle_engine", "crm-fake", "--port", "0", "--declines", str(declines)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, fake_url: str) -> Settings:
    return crm_settings(crm_settings_file(tmp_path, db_url=db_url, crm_url=fake_url, per_page=50))


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def pull(settings: Settings, engine: Engine) -> dict[str, int]:
    assert settings.crm is not None
    assert can_fork(), "another thread is running: the pull would not read ahead in a child"
    client = CrmClient(settings.crm, sleep=lambda _s: None)
    try:
        return pull_declines(settings, engine, client, now=NOW, since=DAY, until=UNTIL).counts
    finally:
        client.close()


def test_given_a_single_threaded_process_when_pulled_ahead_in_a_child_then_the_book_equals_a_csv_import(
    settings: Settings, engine: Engine, twin_db_url: str, tmp_path: Path
) -> None:
    # given
    twin = make_engine(twin_db_url)
    csv_settings = Settings(**{**settings.__dict__, "database_url": twin_db_url})

    # when
    counts = pull(settings, engine)
    import_declines(
        write_csv(tmp_path / "same.csv", ROWS), settings=csv_settings, engine=twin, clock=FixedClock(NOW)
    )

    # then
    assert (counts["read"], counts["accepted"], counts["rejected"], counts["duplicates"]) == (
        1200,
        1200,
        0,
        0,
    )
    soft = sum(r["response_type"] == "SOFT_DECLINE" for r in ROWS)
    assert counts["pages"] == -(-soft // 50) + -(-(1200 - soft) // 50)  # 50 a page, each decline type
    assert book(engine) == book(twin)
    with engine.connect() as conn:
        assert crm_repo.read_cursor(conn) == UNTIL
    twin.dispose()


def test_given_the_crm_refuses_a_call_of_the_child_when_pulling_then_the_run_fails_with_its_message_and_resumes(
    settings: Settings, engine: Engine, fake_url: str
) -> None:
    # given: the CRM refuses the next order lookup
    fault = {"kind": "error_envelope", "endpoint": "/order/query/", "message": "Order service is down"}
    requests.post(f"{fake_url}/_fake/faults", json={"faults": [fault]}, timeout=5).raise_for_status()

    # when
    with pytest.raises(CrmRefused) as caught:
        pull(settings, engine)

    # then
    assert (caught.value.endpoint, caught.value.message) == ("/order/query/", "Order service is down")
    with engine.connect() as conn:
        assert crm_repo.read_cursor(conn) is None
    # and the next pull completes the window, without a row twice
    counts = pull(settings, engine)
    assert count(engine, "SELECT COUNT(DISTINCT transaction_id) FROM declines") == 1200
    assert count(engine, "SELECT COUNT(*) FROM declines") == 1200
    assert counts["accepted"] + counts["duplicates"] == 1200
