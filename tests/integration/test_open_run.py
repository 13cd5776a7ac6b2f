"""bootstrap.open_run: one read of the clock makes the run's Night, and everything it opened closes with it."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.flexfactor_http import FlexFactorClient
from recycle_engine.bootstrap import open_run
from recycle_engine.config import Need, Settings
from recycle_engine.domain.night import Night
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from tests.factories import a_settings_file, load_test_settings
from tests.integration.test_flexfactor_client import a_body

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)


class CountingClock(FixedClock):
    """A fixed clock that counts how often it is read."""

    reads = 0

    def now(self) -> datetime:
        self.reads += 1
        return super().now()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        answer = requests.post(
            f"{sb.admin_url}/clock", json={"now": NIGHT.isoformat(), "frozen": True}, timeout=30
        )
        answer.raise_for_status()
        yield sb


@pytest.fixture
def settings(tmp_path: Path, db_url: str, sandbox: RunningSandbox) -> Settings:
    return load_test_settings(a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url))


def test_given_no_at_when_a_run_opens_then_its_night_is_the_clock_read_once(settings: Settings) -> None:
    # given
    clock = CountingClock(NIGHT)
    # when
    with open_run(settings, clock=clock) as run:
        clock.advance(hours=3)  # the run goes on past midnight UTC...
        night = run.night
    # then: ...and still sees the night it opened on, read once
    assert clock.reads == 1
    assert night == Night(NIGHT, NIGHT.astimezone(settings.timezone).date(), None)


def test_given_at_when_a_run_opens_then_its_night_is_at_and_the_clock_is_not_read(settings: Settings) -> None:
    # given
    clock = CountingClock(NIGHT)
    at = NIGHT - timedelta(days=30)
    # when
    with open_run(settings, at=at, clock=clock) as run:
        night = run.night
    # then: the wall clock is left for the job run's records
    assert clock.reads == 0
    assert (night.at, night.today) == (at, at.astimezone(settings.timezone).date())


def test_given_a_run_whose_clients_called_flexfactor_when_it_closes_then_no_connection_stays_open(
    settings: Settings,
) -> None:
    # given: a run that read the book, and its FlexFactor client, which read and wrote the shared token
    with open_run(settings, Need.FLEXFACTOR, at=NIGHT, clock=FixedClock(NIGHT)) as run:
        client = run.flexfactor_clients()["ff"]
        answer = client.evaluate(
            a_body(expiry_at=NIGHT + timedelta(days=20), declined_at=NIGHT - timedelta(hours=2))
        )
        assert isinstance(client, FlexFactorClient)
        with run.engine.connect() as conn:  # and the run read the book
            conn.execute(text("SELECT 1"))
        pools = [run.engine.pool, client._token_cache._engine.pool]  # type: ignore[union-attr]
        held = [pool.checkedin() for pool in pools]
    # when: the run has closed and everything it built is collected
    del run, client
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    # then: the call went through, and neither the engine nor the token cache keeps a connection
    assert answer is not None
    assert held == [1, 1]
    assert [pool.checkedin() + pool.checkedout() for pool in pools] == [0, 0]
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
