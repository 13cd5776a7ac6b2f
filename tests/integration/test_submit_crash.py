"""A submit run killed (SIGKILL) at any point is finished by the next run: every attempt handed off once."""

from __future__ import annotations

import json
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
import requests
from sqlalchemy import func, select

from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff
from tests.factories import SANDBOX_ENV, a_settings_file, insert_recycling_many

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
HANDOFFS = 1200


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str], capture: bool = False) -> subprocess.Popen[bytes]:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "recycle_engine", *args], env=env, stdout=out, stderr=out)


def _set_clock(port: int, at: datetime) -> None:
    url = f"http://127.0.0.1:{port}/_sandbox/clock"
    requests.post(url, json={"now": at.isoformat(), "frozen": True}, timeout=5).raise_for_status()


@pytest.fixture
def sandbox_process() -> Iterator[int]:
    port = _free_port()
    proc = _cli("sandbox", "--port", str(port), "--latency-ms", "15", env=os.environ | SANDBOX_ENV)
    admin = f"http://127.0.0.1:{port}/_sandbox"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"{admin}/health", timeout=1).raise_for_status()
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    requests.post(
        f"{admin}/clock", json={"now": NIGHT.isoformat(), "frozen": True}, timeout=5
    ).raise_for_status()
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_given_a_run_killed_at_several_points_when_it_runs_again_then_every_attempt_is_handed_off_exactly_once(
    tmp_path: Path, db_url: str, sandbox_process: int
) -> None:
    # given: 1,200 attempts on a FlexFactor slot due tonight, and a sandbox answering in 15 ms
    port = sandbox_process
    settings_path = a_settings_file(
        tmp_path, db_url=db_url, base_url=f"http://127.0.0.1:{port}/v1", batch_size=100, concurrency=8
    )
    engine = make_engine(db_url)
    ids = insert_recycling_many(engine, HANDOFFS, due_on=date(2026, 6, 10))
    env = os.environ | SANDBOX_ENV | {"RECYCLE_ENGINE_CONFIG": str(settings_path)}
    # when: killed with SIGKILL three times at growing delays, each re-run a few minutes later (leases expired)
    at = NIGHT
    for delay in (0.6, 1.5, 2.5):
        proc = _cli("run", "submit", "--at", at.isoformat(), env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        at += timedelta(minutes=5)
        _set_clock(port, at)
    final = _cli("run", "submit", "--at", at.isoformat(), env=env, capture=True)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()[-2000:]
    # then: the sandbox saw exactly one accepted evaluate per hand-off, and we hold each answer
    log = requests.get(f"http://127.0.0.1:{port}/_sandbox/requests?path=/evaluate", timeout=10).json()[
        "items"
    ]
    accepted = Counter(item["order_id"] for item in log if item["status"] == 200)
    orders = requests.get(f"http://127.0.0.1:{port}/_sandbox/orders", timeout=10).json()["items"]
    with engine.connect() as conn:
        rows = conn.execute(
            select(Handoff.id, Handoff.purchase_id, Handoff.state, Handoff.flexfactor_order_id)
        ).all()
        per_purchase = conn.execute(select(func.count(func.distinct(Handoff.purchase_id)))).scalar_one()
    engine.dispose()
    assert len(rows) == HANDOFFS
    assert per_purchase == HANDOFFS
    assert sorted(r.purchase_id for r in rows) == sorted(ids)
    # A hand-off adopted by lookup after a kill reads FlexFactor's order status: "declined at once"
    # shows there as status 2 (Cancelled), which we read as CANCELLED inside the window (A8).
    assert {r.state for r in rows} <= {"SUBMITTED", "APPROVED", "DECLINED", "CANCELLED"}
    assert set(accepted) == {r.id for r in rows}
    assert max(accepted.values()) == 1
    assert len(orders) == HANDOFFS
    assert {o["id"] for o in orders} == {r.flexfactor_order_id for r in rows}


def test_given_a_night_when_run_from_the_command_line_then_postgresql_claims_in_a_process_of_its_own(
    tmp_path: Path, db_url: str, sandbox_process: int
) -> None:
    # given: 300 attempts due tonight on a FlexFactor slot
    port = sandbox_process
    settings_path = a_settings_file(
        tmp_path, db_url=db_url, base_url=f"http://127.0.0.1:{port}/v1", batch_size=50, concurrency=8
    )
    engine = make_engine(db_url)
    ids = insert_recycling_many(engine, 300, due_on=date(2026, 6, 10))
    env = os.environ | SANDBOX_ENV | {"RECYCLE_ENGINE_CONFIG": str(settings_path)}
    # when
    run = _cli("--log-level", "INFO", "run", "submit", "--at", NIGHT.isoformat(), env=env, capture=True)
    _out, err = run.communicate(timeout=120)
    # then: PostgreSQL claims in a forked process, SQLite in a thread; either way each attempt once
    assert run.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    where = {line["in"] for line in lines if line["msg"] == "claiming due attempts"}
    assert where == {"a process of its own" if db_url.startswith("postgresql") else "a thread"}
    log = requests.get(f"http://127.0.0.1:{port}/_sandbox/requests?path=/evaluate", timeout=10).json()[
        "items"
    ]
    with engine.connect() as conn:
        handed = conn.execute(select(Handoff.id, Handoff.purchase_id)).all()
    engine.dispose()
    assert sorted(h.purchase_id for h in handed) == sorted(ids)
    assert sorted(item["order_id"] for item in log if item["status"] == 200) == sorted(h.id for h in handed)


@pytest.mark.postgres
def test_given_a_claim_process_that_fails_when_its_result_is_read_then_the_error_names_it(
    tmp_path: Path, pg_url: str
) -> None:
    # given: a claim process on a database that does not exist
    from recycle_engine.config import load_settings
    from recycle_engine.domain.night import Night
    from recycle_engine.errors import DatabaseUnreachable
    from recycle_engine.services.nightly.claim_process import ClaimProcess
    from recycle_engine.services.nightly.claiming import NightClaim

    settings = load_settings(
        a_settings_file(tmp_path, db_url=pg_url, base_url="http://127.0.0.1:9/v1"), SANDBOX_ENV
    )
    missing = make_engine(pg_url.rsplit("/", 1)[0] + "/re_no_such_database")
    # when
    claim = ClaimProcess(NightClaim(settings, missing, {}, Night(NIGHT, date(2026, 6, 10), "r")))
    # then
    with pytest.raises(DatabaseUnreachable, match='database "re_no_such_database" does not exist'):
        claim.result()
    assert not claim.is_set()
    missing.dispose()
