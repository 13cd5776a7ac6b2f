"""Token calls and start-up cost of N processes in a row, with the shared token cache and without it.

Each "process" is what a run has of its own: an engine on the database and a FlexFactor client built
as bootstrap builds it, which sends one evaluate to an in-process sandbox and is closed. Two arms in the
same run, on a freshly migrated database each time:

  cache     the client keeps its token in flexfactor_token_cache (what runs, workers and serve do)
  baseline  no cache: every process fetches its own token (what they did before)

Figures: token calls the sandbox logged, and the median time from building the client to the first
answered evaluate (a token call or a cache read and unseal, then the evaluate). Asserts nothing.

    .venv/bin/python bench/token_cache_benchmark.py [--runs 30] [--latency-ms 0,100] [--db sqlite,postgres]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from recycle_engine.adapters.clock import SystemClock
from recycle_engine.adapters.flexfactor_http import FlexFactorClient
from recycle_engine.adapters.flexfactor_payload import HandoffRequest, build_evaluate_body
from recycle_engine.config import BatchingSettings, FlexFactorSettings, HttpSettings
from recycle_engine.domain.states import Source
from recycle_engine.sandbox.server import RunningSandbox, SandboxConfig, run_sandbox
from recycle_engine.storage.db import make_engine, upgrade
from recycle_engine.storage.sealed_token_cache import SealedTokenCache

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'bench.db'}"
            upgrade(url)
            yield url
        return
    import psycopg

    name = f"re_token_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade(f"{PG_ADMIN}/{name}")
        yield f"{PG_ADMIN}/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def body() -> dict[str, object]:
    now = datetime.now(UTC)
    return build_evaluate_body(
        HandoffRequest(
            source=Source.RECYCLE,
            submission_id=f"sub-{uuid.uuid4()}",
            idempotency_key=str(uuid.uuid4()),
            mid=SandboxConfig.mid,
            site_id=SandboxConfig.site_id,
            expiry_at=now + timedelta(days=20),
            amount_minor=2749,
            currency="USD",
            transaction_id=f"txn-{uuid.uuid4().hex[:8]}",
            declined_at=now - timedelta(hours=2),
            response_code="51",
            response_text="Insufficient funds",
            processor_type="nmi",
            card_token=f"tok_{uuid.uuid4().hex[:12]}",
            card_bin="400000",
            card_last4="3184",
            card_exp_month=9,
            card_exp_year=2030,
            card_brand="VISA",
            card_type="CREDIT",
            email="jo@example.com",
            phone="+15551234567",
            first_name="Jo",
            last_name="Doe",
            address1="1 Main St",
            city="Springfield",
            state="IL",
            zip="62701",
            country="US",
            ip_address="203.0.113.7",
            purchase_id="P-123",
            billing_interval_days=30,
            regular_price_minor=2999,
            billing_cycle=4,
        )
    )


def one_process(sandbox: RunningSandbox, url: str, *, cached: bool) -> float:
    settings = FlexFactorSettings(
        base_url=sandbox.base_url,
        app_key=SandboxConfig.app_key,
        app_secret=SandboxConfig.app_secret,
        mid=SandboxConfig.mid,
        site_id=SandboxConfig.site_id,
        hmac_signing_key=SandboxConfig.hmac_signing_key_b64,
    )
    engine = make_engine(url)  # the run's own engine, as every process opens one
    started = time.perf_counter()
    cache = (
        SealedTokenCache(
            url,
            base_url=settings.base_url,
            app_key=settings.app_key,
            app_secret=settings.app_secret,
            lock_wait_s=60,
        )
        if cached
        else None
    )
    client = FlexFactorClient(
        settings, HttpSettings(), BatchingSettings(), SystemClock(), gateway_id="ff", token_cache=cache
    )
    try:
        client.evaluate(body())
        return time.perf_counter() - started
    finally:
        client.close()
        engine.dispose()


def token_calls(sandbox: RunningSandbox) -> int:
    answer = requests.get(f"{sandbox.admin_url}/requests", params={"path": "/oauth2/token"}, timeout=30)
    return len(answer.json()["items"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--latency-ms", default="0,100")
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    for kind in args.db.split(","):
        for latency in (int(x) for x in args.latency_ms.split(",")):
            figures = {}
            for arm in ("baseline", "cache"):
                with fresh_database(kind) as url, run_sandbox(SandboxConfig()) as sandbox:
                    if latency:
                        requests.post(
                            f"{sandbox.admin_url}/faults", json={"latency_ms": latency}, timeout=10
                        ).raise_for_status()
                    times = [one_process(sandbox, url, cached=arm == "cache") for _ in range(args.runs)]
                    figures[arm] = (token_calls(sandbox), statistics.median(times) * 1000)
            (b_calls, b_ms), (c_calls, c_ms) = figures["baseline"], figures["cache"]
            print(  # noqa: T201
                f"{kind:8} latency {latency:3d} ms, {args.runs} processes: token calls {c_calls} vs "
                f"{b_calls} (x{c_calls / b_calls:.3f}); median start to first answer {c_ms:.1f} ms vs "
                f"{b_ms:.1f} ms (x{c_ms / b_ms:.2f})"
            )


if __name__ == "__main__":
    main()
