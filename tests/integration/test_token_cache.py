"""The FlexFactor token shared through the database, against the sandbox over real HTTP.

Each "process" here is what a process has of its own: an engine (its own connections) and clients
built by bootstrap; nothing but the database and the sandbox is shared between them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, select, text

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.adapters.flexfactor_http import FlexFactorClient
from recycle_engine.bootstrap import flexfactor_clients, processors
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.ports import BearerToken
from recycle_engine.sandbox.server import RunningSandbox, SandboxConfig, run_sandbox
from recycle_engine.services.nightly.submit import run_submit
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import FlexFactorTokenCache, Handoff
from recycle_engine.storage.sealed_token_cache import SealedTokenCache
from tests.factories import SANDBOX_ENV, a_decline, a_settings_file, insert_recycling, load_test_settings
from tests.integration import test_workers as workers_night
from tests.integration.test_flexfactor_client import a_body

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
TOKEN_TTL = timedelta(seconds=SandboxConfig.token_ttl_s)
RENEW_AT = NIGHT + TOKEN_TTL - timedelta(seconds=60)  # A16: 60 s before `expires`


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        yield sb


@pytest.fixture(autouse=True)
def _night(sandbox: RunningSandbox) -> None:
    _admin(sandbox, "reset", {})
    _admin(sandbox, "clock", {"now": NIGHT.isoformat(), "frozen": True})


@pytest.fixture
def settings(tmp_path: Path, db_url: str, sandbox: RunningSandbox) -> Settings:
    return load_test_settings(a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url))


@pytest.fixture
def process(settings: Settings, db_url: str) -> Iterator[Callable[..., FlexFactorClient]]:
    """Starts a "process": its own engine and bootstrap's FlexFactor client, at a clock it is given."""
    engines: list[Engine] = []
    clients: list[FlexFactorClient] = []

    def start(at: datetime = NIGHT) -> FlexFactorClient:
        engine = make_engine(db_url)
        engines.append(engine)
        client = flexfactor_clients(settings, FixedClock(at), engine=engine)["ff"]
        assert isinstance(client, FlexFactorClient)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for engine in engines:
        engine.dispose()


def _admin(sb: RunningSandbox, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        resp = requests.get(f"{sb.admin_url}/{path}", timeout=10)
    else:
        resp = requests.post(f"{sb.admin_url}/{path}", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _token_calls(sb: RunningSandbox) -> int:
    return len(_admin(sb, "requests?path=/oauth2/token")["items"])


def _statuses(sb: RunningSandbox, path: str) -> list[int]:
    return [item["status"] for item in _admin(sb, f"requests?path={path}")["items"]]


def _cached_row(db_url: str) -> Any:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(FlexFactorTokenCache)).one()
    finally:
        engine.dispose()


def _body() -> dict[str, Any]:
    return a_body(expiry_at=NIGHT + timedelta(days=20), declined_at=NIGHT - timedelta(hours=2))


# --- one token for many processes ---------------------------------------------------------------


def test_given_five_runs_one_after_another_when_each_calls_flexfactor_then_one_token_call_serves_them(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient]
) -> None:
    # given / when: five processes, each started after the last, within the token's life
    for minute in range(5):
        client = process(NIGHT + timedelta(minutes=minute))
        client.evaluate(_body())
        client.close()
    # then
    assert _token_calls(sandbox) == 1
    assert _statuses(sandbox, "/evaluate") == [200] * 5


def test_given_eight_processes_starting_at_once_when_they_call_flexfactor_then_all_succeed_on_few_tokens(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient], db_url: str
) -> None:
    # given
    clients = [process() for _ in range(8)]
    barrier = threading.Barrier(len(clients))

    def call(client: FlexFactorClient) -> str:
        barrier.wait()
        return client.evaluate(_body()).flexfactor_order_id

    # when
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        order_ids = list(pool.map(call, clients))
    # then: nobody failed; PostgreSQL's row lock makes the others wait for the first one's token,
    # while on SQLite (no lock held across HTTP) a race costs at most a token call per process
    assert len(set(order_ids)) == 8
    assert _statuses(sandbox, "/evaluate") == [200] * 8
    if db_url.startswith("postgresql"):
        assert _token_calls(sandbox) == 1
    else:
        assert 1 <= _token_calls(sandbox) <= 8


def test_given_a_cached_token_near_its_expiry_when_a_process_starts_then_it_is_renewed_once(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient], db_url: str
) -> None:
    # given: a token fetched at NIGHT, so due for renewal at RENEW_AT
    process(NIGHT).evaluate(_body())
    first = _cached_row(db_url)
    assert first.renew_at == RENEW_AT
    # when: a process a second before renewal, then two at it
    process(RENEW_AT - timedelta(seconds=1)).evaluate(_body())
    calls_before_renewal = _token_calls(sandbox)
    _admin(sandbox, "clock", {"now": RENEW_AT.isoformat(), "frozen": True})
    process(RENEW_AT).evaluate(_body())
    process(RENEW_AT).evaluate(_body())
    # then
    assert calls_before_renewal == 1
    assert _token_calls(sandbox) == 2
    renewed = _cached_row(db_url)
    assert renewed.expires_at == RENEW_AT + TOKEN_TTL
    assert renewed.version > first.version
    assert _statuses(sandbox, "/evaluate") == [200] * 4


# --- the 401 path, end to end ---------------------------------------------------------------------


def test_given_the_shared_token_revoked_when_a_night_hands_off_then_one_401_one_new_token_and_one_order(
    sandbox: RunningSandbox,
    process: Callable[..., FlexFactorClient],
    settings: Settings,
    db_url: str,
) -> None:
    # given: yesterday's process left a token in the database, which FlexFactor has since revoked
    warm = process(NIGHT)
    warm.evaluate(_body())
    assert _admin(sandbox, "tokens/revoke", {})["revoked"] == 1
    engine = make_engine(db_url)
    insert_recycling(
        engine,
        a_decline(),
        last_attempt=2,
        last_ran_on=date(2026, 6, 8),
        next_attempt=4,
        next_attempt_on=date(2026, 6, 10),
    )
    try:
        # when: tonight's run, its own process, hands the due attempt off
        clients = flexfactor_clients(settings, FixedClock(NIGHT), engine=engine)
        result = run_submit(
            settings,
            engine,
            clients,
            processors(settings),
            night=Night.of(NIGHT, settings.timezone),
            send_clock=FixedClock(NIGHT),
        )
        for client in clients.values():
            assert isinstance(client, FlexFactorClient)
            client.close()
        with engine.connect() as conn:
            handoffs = conn.execute(select(Handoff.id, Handoff.state)).all()
    finally:
        engine.dispose()
    # then: the 401 dropped the shared token, one new one was fetched, the call went once more
    assert result.counts["handoffs_created"] == 1
    assert [h.state for h in handoffs] == ["SUBMITTED"]
    night = _admin(sandbox, "requests?path=/evaluate")["items"][1:]
    assert [e["status"] for e in night] == [401, 200]
    assert night[1]["order_id"] == handoffs[0].id  # the 401 was refused before its body was read
    assert [o["external_order_id"] for o in _admin(sandbox, "orders")["items"]].count(handoffs[0].id) == 1
    assert _token_calls(sandbox) == 2
    # and the next process uses the new token without a call of its own
    process(NIGHT + timedelta(minutes=1)).evaluate(_body())
    assert _token_calls(sandbox) == 2


def test_given_two_processes_on_a_revoked_token_when_both_meet_the_401_then_one_new_token_serves_both(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient]
) -> None:
    # given: two processes holding the same shared token, which FlexFactor then revokes
    first, second = process(), process()
    first.evaluate(_body())
    second.evaluate(_body())
    _admin(sandbox, "tokens/revoke", {})
    # when: the first meets the 401 and renews; the second meets it after, on the old token
    first.evaluate(_body())
    second.evaluate(_body())
    # then: the second dropped only the token that failed it, and took the first's new one
    assert _token_calls(sandbox) == 2
    assert _statuses(sandbox, "/evaluate") == [200, 200, 401, 200, 401, 200]


@pytest.mark.timeout(60, method="thread")  # a hang in SQLite's busy wait, where signals wait too
def test_given_the_run_holds_a_transaction_when_its_call_needs_a_token_then_the_cache_does_not_wait_for_it(
    sandbox: RunningSandbox, settings: Settings, db_url: str
) -> None:
    # given: a run whose own transaction is open around a FlexFactor call (reconcile settles an
    # expired hand-off so), on a database whose writers wait an hour for a lock
    patient_url = db_url + "?timeout=3600" if db_url.startswith("sqlite") else db_url
    engine = make_engine(patient_url)
    client = flexfactor_clients(settings, FixedClock(NIGHT), engine=engine)["ff"]
    assert isinstance(client, FlexFactorClient)
    try:
        with engine.begin() as conn:
            conn.execute(select(FlexFactorTokenCache.version)).all()
            # when: the call inside it fetches a token (a hang here is the failure)
            answer = client.evaluate(_body())
    finally:
        client.close()
        engine.dispose()
    # then
    assert answer.flexfactor_order_id
    assert _token_calls(sandbox) == 1


def test_given_a_revoked_token_met_inside_the_runs_own_transaction_then_one_reauth_and_the_call_succeeds(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient], settings: Settings, db_url: str
) -> None:
    # given: a shared token, revoked; a run whose open transaction (on SQLite: the database's lock)
    # keeps the cache from forgetting it
    process().evaluate(_body())
    _admin(sandbox, "tokens/revoke", {})
    engine = make_engine(db_url)
    client = flexfactor_clients(settings, FixedClock(NIGHT), engine=engine)["ff"]
    assert isinstance(client, FlexFactorClient)
    try:
        with engine.begin() as conn:
            conn.execute(select(FlexFactorTokenCache.version)).all()
            # when
            answer = client.evaluate(_body())
    finally:
        client.close()
        engine.dispose()
    # then: the token that failed is never taken back from the cache, whatever the cache could write
    assert answer.flexfactor_order_id
    assert _statuses(sandbox, "/evaluate") == [200, 401, 200]
    assert _token_calls(sandbox) == 2


# --- what the database holds ----------------------------------------------------------------------


def test_given_a_cached_token_when_the_database_is_read_raw_then_no_token_secret_or_app_key_is_in_it(
    sandbox: RunningSandbox, process: Callable[..., FlexFactorClient], db_url: str
) -> None:
    # given
    process().evaluate(_body())
    issued = list(sandbox.state.store.tokens)
    assert len(issued) == 1
    secrets = [issued[0], SANDBOX_ENV["FLEXFACTOR_APP_SECRET"], SANDBOX_ENV["FLEXFACTOR_APP_KEY"]]
    # when: everything the table holds, as text, and for SQLite the database files' bytes
    row = _cached_row(db_url)
    dumped = repr(tuple(row))
    raw = b""
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    else:
        engine = make_engine(db_url)
        with engine.connect() as conn:
            dumped += conn.execute(text("SELECT t::text FROM flexfactor_token_cache t")).scalar_one()
        engine.dispose()
    # then: the token is there, sealed, and nothing it could be used with
    assert row.sealed_token
    assert row.expires_at == NIGHT + TOKEN_TTL
    for secret in secrets:
        assert secret not in dumped
        assert secret.encode() not in raw
    # the JWT's payload alone would identify it: not even that part is stored
    assert issued[0].split(".")[1].encode() not in raw


def test_given_a_token_sealed_under_another_secret_when_read_then_it_is_a_miss_and_replaced(
    db_url: str,
) -> None:
    # given: a row written under the old secret
    caches: list[SealedTokenCache] = []
    fetched: list[str] = []

    def fetch_as(value: str) -> Callable[[], BearerToken]:
        def fetch() -> BearerToken:
            fetched.append(value)
            return BearerToken(value=value, expires_at=NIGHT + TOKEN_TTL, renew_at=RENEW_AT)

        return fetch

    def cache(secret: str) -> SealedTokenCache:
        made = SealedTokenCache(
            db_url, base_url="http://ff.test/v1", app_key="key", app_secret=secret, lock_wait_s=5
        )
        caches.append(made)
        return made

    try:
        old = cache("old-secret").current(NIGHT, fetch_as("token-old"))
        # when: a process with the rotated secret reads it
        new = cache("new-secret").current(NIGHT, fetch_as("token-new"))
        again = cache("new-secret").current(NIGHT, fetch_as("token-unwanted"))
    finally:
        for made in caches:
            made.close()
    # then: the old row did not unseal, so a token was fetched and stored under the new secret
    assert (old.value, new.value, again.value) == ("token-old", "token-new", "token-new")
    assert fetched == ["token-old", "token-new"]


def test_given_a_database_without_the_cache_table_when_calling_then_the_call_succeeds_without_it(
    sandbox: RunningSandbox, settings: Settings, tmp_path: Path
) -> None:
    # given: a database the cache cannot use (never migrated)
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    client = flexfactor_clients(settings, FixedClock(NIGHT), engine=engine)["ff"]
    assert isinstance(client, FlexFactorClient)
    try:
        # when
        answer = client.evaluate(_body())
        client.evaluate(_body())
    finally:
        client.close()
        engine.dispose()
    # then: the cache never fails a call; the token lives in the process as before
    assert answer.flexfactor_order_id
    assert _token_calls(sandbox) == 1


# --- a multi-worker night ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow  # four worker processes over 400 hand-offs; the eight-process start above stays fast
def test_given_a_night_run_by_four_worker_processes_when_they_hand_off_then_one_token_call_serves_all(
    tmp_path: Path, pg_url: str
) -> None:
    # given: a sandbox process, 400 hand-offs and 10 processor charges due, for `run submit --workers 4`
    sandbox = workers_night.Sandbox(latency_ms=0)
    try:
        env = workers_night._book(tmp_path, pg_url, sandbox, handoffs=400, charges=10, concurrency=4)
        # when
        proc = workers_night._cli("run", "submit", "--at", NIGHT.isoformat(), "--workers", "4", env=env)
        out, err = proc.communicate(timeout=300)
        token_calls = requests.get(f"{sandbox.admin}/requests?path=/oauth2/token", timeout=30).json()["items"]
        evaluates = sandbox.evaluates()
    finally:
        sandbox.close()
    # then: four processes, one token call between them
    assert proc.returncode == 0, err.decode()[-3000:]
    assert "handoffs_created 400," in out.decode()
    assert [e["status"] for e in evaluates] == [200] * 400
    assert len(token_calls) == 1


def test_given_an_app_whose_clients_used_the_cache_when_the_app_closes_then_no_connection_stays_open(
    settings: Settings,
) -> None:
    # given: a command's app and its clients, which read and wrote the shared token
    import gc
    import warnings

    from recycle_engine.bootstrap import build_app

    app = build_app(settings, FixedClock(NIGHT))
    app.flexfactor_clients(FixedClock(NIGHT))["ff"].evaluate(_body())

    # when: the app closes and everything it built is collected
    app.close()
    del app
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()

    # then: no connection of the token cache was left for the collector to close
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
