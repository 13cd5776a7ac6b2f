"""A submit run on an NMI gateway killed (SIGKILL) three times mid-charging, then run again: the fake's
log shows every due attempt charged exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from recycle_engine.nmi_fake import FakeNmi, RunningFakeNmi, start_fake_nmi
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, ProcessorCharge
from tests.factories import NMI_TEST_KEY, SANDBOX_ENV, a_settings_file, insert_recycling_many

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
ATTEMPTS = 60
AFTER_LEASE = timedelta(seconds=2 * (5 + 2) + 61)  # a dead run's charges are free again after this


@pytest.fixture
def nmi() -> Iterator[RunningFakeNmi]:
    # Every sale soft-declines (the next attempt falls tomorrow) and its answer takes 0.2 s, so a kill
    # lands while charges are in flight.
    running = start_fake_nmi(FakeNmi(NMI_TEST_KEY, answer_delay_s=0.2, default_code="202"))
    yield running
    running.stop()


def _wait_for_sales(nmi: RunningFakeNmi, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len(nmi.fake.log()) < n:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run charged too slowly"
        time.sleep(0.01)


def test_given_a_run_killed_three_times_while_charging_when_it_runs_again_then_each_attempt_is_charged_once(
    tmp_path: Path, db_url: str, nmi: RunningFakeNmi
) -> None:
    # given: 60 attempts due tonight on the NMI gateway, claimed 10 at a time, 4 calls at once
    settings_path = a_settings_file(tmp_path, db_url=db_url, nmi_url=nmi.url, batch_size=10, concurrency=4)
    engine = make_engine(db_url)
    ids = insert_recycling_many(engine, ATTEMPTS, due_on=date(2026, 6, 10), attempt=1)
    env = os.environ | SANDBOX_ENV | {"RECYCLE_ENGINE_CONFIG": str(settings_path)}
    command = [sys.executable, "-m", "recycle_engine", "run", "submit", "--at"]
    # when: killed after 5, 25 and 45 sales have reached the fake, each rerun after the lease
    at = NIGHT
    for sales in (5, 25, 45):
        proc = subprocess.Popen(
            [*command, at.isoformat()],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_sales(nmi, sales, proc)
        # The whole group: on PostgreSQL the claim (and so the charging) runs in a forked child.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        at += AFTER_LEASE
    final = subprocess.run([*command, at.isoformat()], env=env, capture_output=True, timeout=120, check=False)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    # then: one sale per order id, one order id per due attempt, every answer recorded
    per_order = Counter(e["orderid"] for e in nmi.fake.log())
    with engine.connect() as conn:
        charges = conn.execute(
            select(
                ProcessorCharge.id,
                ProcessorCharge.subscription_id,
                ProcessorCharge.state,
                ProcessorCharge.lookups,
            )
        ).all()
        attempts = conn.execute(select(Attempt.subscription_id)).scalars().all()
    engine.dispose()
    assert max(per_order.values()) == 1
    assert set(per_order) == {c.id for c in charges}
    assert sorted(c.subscription_id for c in charges) == sorted(ids)
    assert {c.state for c in charges} == {"ANSWERED"}
    assert sorted(attempts) == sorted(ids)
    # the charges in flight at each kill were looked up by order id, not sent blind
    assert sum(1 for c in charges if c.lookups) >= 3
