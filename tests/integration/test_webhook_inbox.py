"""The webhook inbox over real HTTP: acknowledged once journalled, applied once by the service's writer,
drained at start (after a kill -9) and at shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import Engine, func, insert, select, text

from recycle_engine.adapters.clock import FixedClock, SystemClock
from recycle_engine.adapters.flexfactor_webhooks import parse_event
from recycle_engine.config import Settings
from recycle_engine.ports import Clock
from recycle_engine.sandbox.signing import http_date, new_nonce, sign_webhook
from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64
from recycle_engine.services.nightly.anomalies import check_night
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.services.outcomes.webhook_events import accept_delivery
from recycle_engine.services.reporting.status import gather_status, render_status
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Handoff, HandoffEvent, Subscription, WebhookDelivery
from recycle_engine.storage.webhook_inbox import backlog
from recycle_engine.web.webhook_app import create_app, serving
from tests.factories import (
    SANDBOX_ENV,
    a_settings_file,
    insert_recycling_many,
    load_test_settings,
    outcome_applied,
)

ROOT = Path(__file__).resolve().parents[2]
SUBMITTED_AT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
DEADLINE_S = 60  # a ceiling for conditions on a loaded machine, never a sleep


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def handoffs_waiting_for_outcome(engine: Engine, n: int) -> list[dict[str, str]]:
    """`n` recycling subscriptions, each with a SUBMITTED hand-off FlexFactor knows by its own id."""
    subs = insert_recycling_many(engine, n, due_on=date(2026, 6, 10), prefix=f"{uuid.uuid4().hex[:6]}-")
    rows = []
    with engine.begin() as conn:
        for sub_id in subs:
            sub = conn.execute(select(Subscription).where(Subscription.id == sub_id)).one()
            handoff_id, ff_id = f"sub_{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
            conn.execute(
                insert(Handoff).values(
                    id=handoff_id,
                    source="RECYCLE",
                    order_id=sub.order_id,
                    purchase_id=sub_id,
                    transaction_id=sub.recycle_transaction_id,
                    gateway_id="ff",
                    declining_gateway_id="nmi",
                    slot="4-6",
                    attempt=4,
                    billing_cycle=sub.billing_cycle,
                    amount_minor=sub.price_minor,
                    currency="USD",
                    idempotency_key=str(uuid.uuid4()),
                    request_body="{}",
                    dedupe_key=f"RECYCLE:{sub_id}:4",
                    state="SUBMITTED",
                    created_at=SUBMITTED_AT,
                    submitted_at=SUBMITTED_AT,
                    first_sent_at=SUBMITTED_AT,
                    expires_at=SUBMITTED_AT + timedelta(days=21),
                    flexfactor_order_id=ff_id,
                    updated_at=SUBMITTED_AT,
                )
            )
            rows.append({"handoff_id": handoff_id, "ff_id": ff_id})
    return rows


def completed(h: dict[str, str]) -> bytes:
    payload = {
        "Event": "order.completed",
        "TimeStamp": "2026-06-11T06:00:00.000000Z",
        "ExternalOrderId": h["handoff_id"],
        "OrderId": h["ff_id"],
        "IsTestMode": True,
        "IsResent": False,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def post(
    hook_url: str, body: bytes, *, at: datetime, key: str = SANDBOX_SIGNING_KEY_B64
) -> requests.Response:
    nonce, date_header = new_nonce(), http_date(at)
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "x-fc-nonce": nonce,
        "x-fc-date": date_header,
        **sign_webhook(body, key, nonce=nonce, date=date_header, host=urlsplit(hook_url).netloc),
    }
    return requests.post(hook_url, data=body, headers=headers, timeout=30)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting: {what}"
        time.sleep(0.02)


def webhook_events(engine: Engine, handoff_id: str) -> list[str]:
    with engine.connect() as conn:
        stmt = select(HandoffEvent.kind).where(
            HandoffEvent.handoff_id == handoff_id, HandoffEvent.source == "WEBHOOK"
        )
        return list(conn.execute(stmt).scalars())


def inbox_waiting(engine: Engine) -> int:
    with engine.connect() as conn:
        return backlog(conn).waiting


def reasons(engine: Engine) -> list[str | None]:
    with engine.connect() as conn:
        return list(conn.execute(select(WebhookDelivery.reason).order_by(WebhookDelivery.id)).scalars())


def applies_outcomes(settings: Settings, engine: Engine, clock: Clock, calls: list[list[str]]) -> Any:
    def on_accepted(ids: list[str]) -> None:
        apply_outcomes(settings, engine, now=clock.now(), handoff_ids=ids)
        calls.append(ids)

    return on_accepted


# --- in the process -------------------------------------------------------------------------------


def test_given_concurrent_deliveries_and_repeats_when_acknowledged_then_each_outcome_is_applied_exactly_once(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    handoffs = handoffs_waiting_for_outcome(engine, 20)
    clock = FixedClock(datetime(2026, 6, 11, 7, 0, tzinfo=UTC))
    calls: list[list[str]] = []
    app = create_app(settings, engine, clock, on_accepted=applies_outcomes(settings, engine, clock, calls))
    with serving(app) as url:
        hook = f"{url}/webhooks/flexfactor/ff"
        # when: 20 at once, then the first 5 again (FlexFactor resends what it thinks was lost)
        with ThreadPoolExecutor(20) as pool:
            first = list(pool.map(lambda h: post(hook, completed(h), at=clock.now()), handoffs))
            repeats = list(pool.map(lambda h: post(hook, completed(h), at=clock.now()), handoffs[:5]))
        assert app.state.inbox_writer.drained(DEADLINE_S)
    # then
    assert [a.status_code for a in first + repeats] == [200] * 25
    assert {a.json()["status"] for a in first} == {"accepted"}
    assert len({a.json()["delivery"] for a in first}) == 20
    assert [a.json()["status"] for a in repeats] == ["duplicate"] * 5
    for h in handoffs:
        assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
        assert outcome_applied(engine, h["handoff_id"])
    assert sorted(i for ids in calls for i in ids) == sorted(h["handoff_id"] for h in handoffs)
    assert sorted(r or "" for r in reasons(engine)) == ["applied"] * 20 + ["duplicate"] * 5
    assert inbox_waiting(engine) == 0


def test_given_a_badly_signed_delivery_when_it_arrives_then_it_is_refused_recorded_and_never_queued(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    [h] = handoffs_waiting_for_outcome(engine, 1)
    clock = FixedClock(datetime(2026, 6, 11, 7, 0, tzinfo=UTC))
    app = create_app(settings, engine, clock)
    with serving(app) as url:
        # when: signed with another key
        answer = post(f"{url}/webhooks/flexfactor/ff", completed(h), at=clock.now(), key="b3RoZXIta2V5")
        assert app.state.inbox_writer.drained(DEADLINE_S)
    # then
    assert answer.status_code == 401
    with engine.connect() as conn:
        [row] = conn.execute(select(WebhookDelivery)).all()
    assert (row.accepted, row.http_status, row.body) == (False, 401, None)
    assert inbox_waiting(engine) == 0
    assert webhook_events(engine, h["handoff_id"]) == []


def test_given_a_busy_writer_when_the_service_stops_then_it_applies_every_acknowledged_delivery_first(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: the writer is held inside its first batch's outcome step
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    handoffs = handoffs_waiting_for_outcome(engine, 4)
    clock = FixedClock(datetime(2026, 6, 11, 7, 0, tzinfo=UTC))
    entered, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []
    outcomes = applies_outcomes(settings, engine, clock, calls)

    def held_once(ids: list[str]) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(DEADLINE_S)
        outcomes(ids)

    app = create_app(settings, engine, clock, on_accepted=held_once)
    stopper = None
    with serving(app) as url:
        hook = f"{url}/webhooks/flexfactor/ff"
        assert post(hook, completed(handoffs[0]), at=clock.now()).status_code == 200
        assert entered.wait(DEADLINE_S)
        answers = [post(hook, completed(h), at=clock.now()) for h in handoffs[1:]]
        waiting = inbox_waiting(engine)
        # when: the stop begins while three deliveries wait, and the writer then goes on
        stopper = threading.Timer(0.05, release.set)
        stopper.start()
    stopper.join()
    # then: acknowledged while the writer was busy, applied before the service ended
    assert [a.status_code for a in answers] == [200] * 3
    assert waiting == 3
    assert inbox_waiting(engine) == 0
    for h in handoffs:
        assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
        assert outcome_applied(engine, h["handoff_id"])


def test_given_deliveries_acknowledged_long_ago_and_not_applied_then_status_and_the_anomalies_show_the_backlog(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: two acknowledged deliveries that no running service has applied for 20 minutes
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    received = datetime(2026, 6, 11, 7, 0, tzinfo=UTC)
    for h in handoffs_waiting_for_outcome(engine, 2):
        body = completed(h)
        accept_delivery(
            engine,
            gateway_id="ff",
            event=parse_event(body),
            nonce=new_nonce(),
            body=body.decode(),
            now=received,
        )
    now = received + timedelta(minutes=20)
    # when
    status = gather_status(engine, now=now, crons={}, next_fire_times={})
    anomalies = check_night(settings, engine, day=now.date(), now=now)
    # then
    assert (status.webhooks_waiting, status.oldest_webhook_at) == (2, received)
    assert render_status(status, settings.timezone)[-1] == (
        "webhooks acknowledged, not yet applied: 2 (oldest 2026-06-11T03:00:00-04:00)"
        "  NOT DRAINING: is `serve` running? it applies them when it starts"
    )
    assert [a.kind.value for a in anomalies if a.kind.value == "WEBHOOK_BACKLOG"] == ["WEBHOOK_BACKLOG"]


def poison_events_of(engine: Engine, handoff_id: str) -> None:
    """A database that refuses every handoff_events row of one hand-off (a fault of that row alone)."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON handoff_events "
                f"WHEN NEW.handoff_id = '{handoff_id}' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.handoff_id = '{handoff_id}' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
                "RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON handoff_events FOR EACH ROW EXECUTE FUNCTION poison()"
            )


def test_given_one_delivery_the_database_refuses_when_the_writer_applies_a_batch_then_the_others_apply_and_it_waits(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url))
    handoffs = handoffs_waiting_for_outcome(engine, 3)
    poison_events_of(engine, handoffs[1]["handoff_id"])
    clock = FixedClock(datetime(2026, 6, 11, 7, 0, tzinfo=UTC))
    app = create_app(settings, engine, clock, on_accepted=applies_outcomes(settings, engine, clock, []))
    with serving(app) as url:
        # when
        answers = [post(f"{url}/webhooks/flexfactor/ff", completed(h), at=clock.now()) for h in handoffs]
        assert app.state.inbox_writer.drained(DEADLINE_S)
        # then: the refused one stays acknowledged and waiting, and the service goes on
        later = handoffs_waiting_for_outcome(engine, 1)[0]
        assert post(f"{url}/webhooks/flexfactor/ff", completed(later), at=clock.now()).status_code == 200
        assert app.state.inbox_writer.drained(DEADLINE_S)
    assert [a.status_code for a in answers] == [200] * 3
    for h in (handoffs[0], handoffs[2], later):
        assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
        assert outcome_applied(engine, h["handoff_id"])
    assert webhook_events(engine, handoffs[1]["handoff_id"]) == []
    assert inbox_waiting(engine) == 1
    assert reasons(engine) == ["applied", "queued", "applied", "applied"]


# --- `recycle-engine serve` in a process of its own --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(settings_path: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = {**os.environ, **SANDBOX_ENV}
    log = (tmp_path / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recycle_engine",
            "serve",
            "--config",
            str(settings_path),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(healthy, "serve to answer /healthz")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        log.close()


def test_given_acknowledged_deliveries_left_in_the_inbox_when_serve_starts_then_it_applies_each_once(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: what an acknowledgement leaves when the service dies before its writer runs
    settings_path = a_settings_file(tmp_path, db_url=db_url)
    handoffs = handoffs_waiting_for_outcome(engine, 3)
    received = SystemClock().now()
    for h in handoffs:
        body = completed(h)
        accept_delivery(
            engine,
            gateway_id="ff",
            event=parse_event(body),
            nonce=new_nonce(),
            body=body.decode(),
            now=received,
        )
    assert inbox_waiting(engine) == 3
    # when
    with serve_process(settings_path, tmp_path):
        wait_until(
            lambda: all(outcome_applied(engine, h["handoff_id"]) for h in handoffs), "outcomes applied"
        )
    # then
    assert inbox_waiting(engine) == 0
    for h in handoffs:
        assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
    assert reasons(engine) == ["applied"] * 3


@pytest.mark.postgres
def test_given_serve_killed_9_after_acknowledging_and_before_applying_when_it_starts_again_then_each_applies_once(
    tmp_path: Path, pg_url: str
) -> None:
    # given: a session holds the hand-offs table, so the writer cannot apply what serve acknowledges
    engine = make_engine(pg_url)
    try:
        settings_path = a_settings_file(tmp_path, db_url=pg_url)
        handoffs = handoffs_waiting_for_outcome(engine, 3)
        with serve_process(settings_path, tmp_path) as (proc, url):
            with engine.connect() as holder:
                holder.execute(text("LOCK TABLE handoffs IN EXCLUSIVE MODE"))
                answers = [
                    post(f"{url}/webhooks/flexfactor/ff", completed(h), at=SystemClock().now())
                    for h in handoffs
                ]
                # when: killed between the acknowledgement and the writer's commit
                proc.kill()
                proc.wait(30)
                holder.rollback()
        assert [a.status_code for a in answers] == [200] * 3
        assert inbox_waiting(engine) == 3
        with engine.connect() as conn:
            states = conn.execute(select(func.count()).where(Handoff.state == "SUBMITTED")).scalar_one()
        assert states == 3
        with serve_process(settings_path, tmp_path):
            wait_until(
                lambda: all(outcome_applied(engine, h["handoff_id"]) for h in handoffs), "outcomes applied"
            )
        # then
        assert inbox_waiting(engine) == 0
        for h in handoffs:
            assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
        assert reasons(engine) == ["applied"] * 3
    finally:
        engine.dispose()


def test_given_serve_killed_9_right_after_a_burst_is_acknowledged_when_it_starts_again_then_each_applies_once(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: 30 deliveries acknowledged at once; the kill lands while most or all wait in the inbox
    # (the writer lets answers go first), on SQLite too, where no lock can hold the writer alone
    settings_path = a_settings_file(tmp_path, db_url=db_url)
    handoffs = handoffs_waiting_for_outcome(engine, 30)
    with serve_process(settings_path, tmp_path) as (proc, url):
        hook = f"{url}/webhooks/flexfactor/ff"
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(lambda h: post(hook, completed(h), at=SystemClock().now()), handoffs))
        # when
        proc.kill()
        proc.wait(30)
    assert [a.status_code for a in answers] == [200] * 30
    with serve_process(settings_path, tmp_path):
        wait_until(
            lambda: all(outcome_applied(engine, h["handoff_id"]) for h in handoffs), "outcomes applied"
        )
    # then
    assert inbox_waiting(engine) == 0
    for h in handoffs:
        assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
    assert reasons(engine) == ["applied"] * 30


@pytest.mark.postgres
def test_given_acknowledged_deliveries_not_yet_applied_when_serve_gets_sigterm_then_it_applies_them_and_exits_0(
    tmp_path: Path, pg_url: str
) -> None:
    # given: a session holds the hand-offs table, so three acknowledged deliveries wait in the inbox
    engine = make_engine(pg_url)
    try:
        settings_path = a_settings_file(tmp_path, db_url=pg_url)
        handoffs = handoffs_waiting_for_outcome(engine, 3)
        with serve_process(settings_path, tmp_path) as (proc, url):
            with engine.connect() as holder:
                holder.execute(text("LOCK TABLE handoffs IN EXCLUSIVE MODE"))
                answers = [
                    post(f"{url}/webhooks/flexfactor/ff", completed(h), at=SystemClock().now())
                    for h in handoffs
                ]
                waiting = inbox_waiting(engine)
                # when: asked to stop, then the table is free again
                proc.terminate()
                holder.rollback()
            exit_code = proc.wait(60)
        # then
        assert [a.status_code for a in answers] == [200] * 3
        assert (waiting, exit_code) == (3, 0)
        assert inbox_waiting(engine) == 0
        for h in handoffs:
            assert webhook_events(engine, h["handoff_id"]) == ["APPROVED"]
            assert outcome_applied(engine, h["handoff_id"])
    finally:
        engine.dispose()
