"""FlexFactor's 429 answers are back-pressure: the night slows down and still sends every hand-off once.

Over real HTTP against the sandbox's fault injection, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from recycle_engine.config import Settings
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, HandoffEvent, JobRun, NightAnomaly
from tests.factories import SANDBOX_ENV, a_settings_file, insert_recycling_many, load_test_settings
from tests.nights import reconcile_night, submit_night

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)  # 02:00 in New York
HANDOFFS = 40


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        _admin(sb, "clock", {"now": NIGHT.isoformat(), "frozen": True})
        yield sb


@pytest.fixture
def world(tmp_path: Path, db_url: str, sandbox: RunningSandbox) -> Iterator[tuple[Settings, Engine, Path]]:
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url, concurrency=8)
    engine = make_engine(db_url)
    insert_recycling_many(engine, HANDOFFS, due_on=date(2026, 6, 10))
    yield load_test_settings(path), engine, path
    engine.dispose()


def _admin(sb: RunningSandbox, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        resp = requests.get(f"{sb.admin_url}/{path}", timeout=10)
    else:
        resp = requests.post(f"{sb.admin_url}/{path}", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _evaluates(sb: RunningSandbox) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _admin(sb, "requests?path=/evaluate")["items"]
    return items


def _scalar(engine: Engine, stmt: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def _states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(s for (s,) in conn.execute(select(Handoff.state)))


def _answered_once(sb: RunningSandbox, engine: Engine) -> None:
    """Every hand-off reached FlexFactor exactly once: one answer other than 429 per order id."""
    answered = Counter(e["order_id"] for e in _evaluates(sb) if e["status"] != 429)
    with engine.connect() as conn:
        ids = set(conn.execute(select(Handoff.id)).scalars())
    assert len(ids) == HANDOFFS
    assert set(answered) == ids
    assert set(answered.values()) == {1}


def test_given_a_night_with_30_percent_429s_and_a_burst_when_submit_runs_then_every_handoff_is_sent_once(
    world: tuple[Settings, Engine, Path], sandbox: RunningSandbox
) -> None:
    # given: a burst of 429s that outlasts each call's retries, then 30 % of answers are 429 at random
    settings, engine, _ = world
    _admin(
        sandbox,
        "faults",
        {
            "rate_429_rate": 0.3,
            "retry_after_s": 0,
            "script": [{"path": "/evaluate", "action": "429", "count": 24}],
        },
    )

    # when
    result = submit_night(settings, engine, NIGHT)

    # then: nothing is left unsent, and the run says so
    assert _states(engine)["PENDING"] == 0
    _answered_once(sandbox, engine)
    assert result.counts["handoffs_created"] == HANDOFFS
    assert result.counts["sent"] == HANDOFFS
    assert result.counts["rate_limited"] >= 1
    assert "unsent" not in result.counts
    assert "skipped_gateways" not in result.counts
    limited = _scalar(engine, select(func.count()).where(HandoffEvent.kind == "RATE_LIMITED"))
    assert limited == result.counts["rate_limited"]
    assert _scalar(engine, select(JobRun.status)) == "SUCCEEDED"
    assert _scalar(engine, select(func.count()).select_from(NightAnomaly)) == 0


def test_given_a_429_burst_with_retry_after_when_submit_runs_then_no_call_goes_out_before_it_has_passed(
    world: tuple[Settings, Engine, Path], sandbox: RunningSandbox
) -> None:
    # given: FlexFactor asks for one second's quiet with every 429 of a burst; its clock runs
    settings, engine, _ = world
    _admin(sandbox, "clock", {"frozen": False})
    _admin(
        sandbox,
        "faults",
        {"retry_after_s": 1, "script": [{"path": "/evaluate", "action": "429", "count": 8}]},
    )

    # when
    submit_night(settings, engine, NIGHT)

    # then: everything went out once, and the first call to get through came a second after the first 429
    assert _states(engine)["PENDING"] == 0
    _answered_once(sandbox, engine)
    calls = _evaluates(sandbox)
    first_429 = next(datetime.fromisoformat(e["at"]) for e in calls if e["status"] == 429)
    first_200 = next(datetime.fromisoformat(e["at"]) for e in calls if e["status"] == 200)
    assert first_200 - first_429 >= timedelta(seconds=0.9)


def test_given_a_429_burst_with_an_http_date_retry_after_when_submit_runs_then_no_call_goes_out_before_that_date(
    world: tuple[Settings, Engine, Path], sandbox: RunningSandbox
) -> None:
    # given: FlexFactor names the end of its quiet as an HTTP date, a second on by its clock (which
    # runs from the night, months away from the real date), with every 429 of a burst
    settings, engine, _ = world
    _admin(sandbox, "clock", {"frozen": False})
    _admin(
        sandbox,
        "faults",
        {
            "retry_after_s": 1,
            "retry_after_as": "http-date",
            "script": [{"path": "/evaluate", "action": "429", "count": 8}],
        },
    )

    # when
    result = submit_night(settings, engine, NIGHT)

    # then: every hand-off went out once, none was left unsent ...
    assert _states(engine)["PENDING"] == 0
    _answered_once(sandbox, engine)
    assert result.counts["sent"] == HANDOFFS
    assert "unsent" not in result.counts
    # ... each 429 said when by date, and the first call to get through came at or after that date
    calls = _evaluates(sandbox)
    limited = [e for e in calls if e["status"] == 429]
    assert len(limited) >= 8
    until = [parsedate_to_datetime(e["retry_after"]) for e in limited]
    assert all(
        d - datetime.fromisoformat(e["at"]).replace(microsecond=0) == timedelta(seconds=1)
        for d, e in zip(until, limited, strict=True)
    )
    first_200 = next(datetime.fromisoformat(e["at"]) for e in calls if e["status"] == 200)
    assert first_200 >= until[0]


def test_given_flexfactor_answers_only_429_when_submit_runs_then_it_ends_incomplete_and_reconcile_sends_the_rest(
    world: tuple[Settings, Engine, Path], sandbox: RunningSandbox
) -> None:
    # given
    settings, engine, _ = world
    _admin(sandbox, "faults", {"rate_429_rate": 1.0, "retry_after_s": 0})

    # when
    result = submit_night(settings, engine, NIGHT)

    # then: the gateway was given up after a few leases; the hand-offs wait, counted, never sent
    assert result.counts["unsent"] == HANDOFFS
    assert result.counts["sent"] == 0
    assert result.counts["skipped_gateways"] == 1
    assert _states(engine) == {"PENDING": HANDOFFS}
    assert _scalar(engine, select(func.count()).where(Handoff.send_started_at.is_not(None))) == 0
    assert _scalar(engine, select(JobRun.status)) == "INCOMPLETE"
    with engine.connect() as conn:
        anomalies = conn.execute(select(NightAnomaly.kind, NightAnomaly.subject, NightAnomaly.reason)).all()
    assert [(a.kind, a.subject) for a in anomalies] == [("UNSENT", "submit")]
    assert f"{HANDOFFS} hand-offs never sent (ff {HANDOFFS})" in anomalies[0].reason

    # when FlexFactor eases and reconcile runs the same night
    _admin(sandbox, "faults", {"reset": True})
    later = NIGHT + timedelta(hours=3)
    reconciled = reconcile_night(settings, engine, later)

    # then: it sends every one of them, once
    assert reconciled.counts["sent"] == HANDOFFS
    assert "unsent" not in reconciled.counts
    assert _states(engine)["PENDING"] == 0
    _answered_once(sandbox, engine)
    with engine.connect() as conn:
        statuses = dict((r.job, r.status) for r in conn.execute(select(JobRun.job, JobRun.status)))
    assert statuses == {"submit": "INCOMPLETE", "reconcile": "SUCCEEDED"}


def test_given_flexfactor_answers_only_429_when_submit_runs_on_the_command_line_then_it_exits_3(
    sqlite_url: str, tmp_path: Path, sandbox: RunningSandbox
) -> None:
    # given
    path = a_settings_file(tmp_path, db_url=sqlite_url, base_url=sandbox.base_url)
    engine = make_engine(sqlite_url)
    insert_recycling_many(engine, 5, due_on=date(2026, 6, 10))
    _admin(sandbox, "faults", {"rate_429_rate": 1.0, "retry_after_s": 0})
    from recycle_engine.cli import main

    # when
    result = CliRunner().invoke(
        main, ["run", "submit", "--config", str(path), "--at", NIGHT.isoformat()], env=SANDBOX_ENV
    )

    # then
    assert result.exit_code == 3, result.output
    assert "incomplete: submit" in result.stderr
    assert "left 5 hand-offs unsent" in result.stderr
    assert "unsent 5" in result.stdout

    # when reconcile runs while FlexFactor still refuses, it says the same; once it eases, it exits 0
    again = CliRunner().invoke(main, ["run", "reconcile", "--config", str(path)], env=SANDBOX_ENV)
    assert again.exit_code == 3, again.output
    _admin(sandbox, "faults", {"reset": True})
    done = CliRunner().invoke(main, ["run", "reconcile", "--config", str(path)], env=SANDBOX_ENV)
    assert done.exit_code == 0, done.output
    assert _scalar(engine, select(func.count()).where(Handoff.state == "PENDING")) == 0
    engine.dispose()
