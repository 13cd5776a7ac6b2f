"""Benchmark of apply_outcomes: outcomes/s over final RECYCLE hand-offs, beside a bare bulk UPDATE.

Run: .venv/bin/python bench/outcomes_benchmark.py [--rows 50000] [--db sqlite|postgres|both] [--repeat 3]

Both sides start from identical copies of one database holding `--rows` RECYCLE hand-offs in a final
state whose outcome is queued but not yet applied (45 % APPROVED, the rest DECLINED, EXPIRED or
CANCELLED), each with its RECYCLE_BILLING subscription waiting on it and its DECLINED, shippable rebill
order. (The queue row is written when the outcome is recorded, by the poll, webhook or answer that
brings it, so it is part of the book, not of the work measured.)

- outcomes: services.outcomes.applying.apply_outcomes over all of them (purchases moved on or failed, orders
  paid, HOLD fulfillments, change rows, dequeued), as reconcile runs it.
- bare UPDATE: one executemany `UPDATE subscriptions SET status = :status, updated_at = :now WHERE
  id = :id` over the same subscriptions, in the order apply_outcomes visits them (oldest outcome
  first), in one transaction, through the same SQLAlchemy Core path: the least any outcome
  application must write.

The sides run interleaved, `--repeat` times each, each run on a fresh copy; the best run counts. Both
wall-clock and CPU time are shown: on a shared machine, CPU time (this process plus the PostgreSQL
backends serving it) is what the work costs, and wall time adds whatever waiting the run met. Not a
test: it prints figures. PostgreSQL uses $RECYCLE_ENGINE_TEST_PG (admin DSN) and
$RECYCLE_ENGINE_TEST_PG_URL, as the test suite does, and drops its databases afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, bindparam, event, func, insert, select, text, update

from recycle_engine.config import Settings, load_settings
from recycle_engine.services.outcomes.applying import apply_outcomes
from recycle_engine.storage.db import make_engine, upgrade
from recycle_engine.storage.models import Change, Fulfillment, Handoff, Order, OutcomeQueue, Subscription

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENV = {
    "FLEXFACTOR_APP_KEY": "bench",
    "FLEXFACTOR_APP_SECRET": "bench",
    "FLEXFACTOR_MID": "bench",
    "FLEXFACTOR_SITE_ID": "bench",
    "FLEXFACTOR_ENVIRONMENT_KEY": "bench",
    "FLEXFACTOR_HMAC_SIGNING_KEY": "YmVuY2gtc2lnbmluZy1rZXk=",
}
PG_ADMIN = os.environ.get("RECYCLE_ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_HOST_URL = os.environ.get("RECYCLE_ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
SUBMITTED_AT = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 22, 7, 30, tzinfo=UTC)  # the reconcile that applies them
INSERT_CHUNK = 10_000
# What recording an outcome queues (storage.outcome_queue): the news and the hand-off's facts.
_QUEUED = [c.name for c in OutcomeQueue.__table__.columns]


# --- the book ------------------------------------------------------------------------------------------


def book(rows: int, seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(hand-offs, subscriptions, orders): one final, unapplied RECYCLE hand-off per purchase."""
    rnd = random.Random(seed)
    handoffs, subs, orders = [], [], []
    for n in range(rows):
        handoff_id, sub_id, order_id = str(uuid.UUID(int=rnd.getrandbits(128))), f"P-{n:07d}", f"O-{n:07d}"
        roll = rnd.random()
        state = (
            "APPROVED"
            if roll < 0.45
            else "DECLINED"
            if roll < 0.6
            else "CANCELLED"
            if roll < 0.7
            else "EXPIRED"
        )
        source = {"APPROVED": "WEBHOOK", "DECLINED": "RESPONSE", "CANCELLED": "WEBHOOK", "EXPIRED": "EXPIRY"}[
            state
        ]
        outcome_at = SUBMITTED_AT + timedelta(seconds=rnd.randrange(20 * 86400))
        price = rnd.choice([2999, 4999, 1995])
        handoffs.append(
            {
                "id": handoff_id,
                "source": "RECYCLE",
                "order_id": order_id,
                "purchase_id": sub_id,
                "transaction_id": f"T-{n:07d}",
                "gateway_id": "flexfactor-main",
                "declining_gateway_id": "nmi-main",
                "slot": "4-6",
                "attempt": 4,
                "billing_cycle": 3,
                "amount_minor": price * 9 // 10,
                "currency": "USD",
                "idempotency_key": str(uuid.UUID(int=rnd.getrandbits(128))),
                "request_body": "{}",
                "dedupe_key": f"RECYCLE:{sub_id}:T-{n:07d}:4",
                "state": state,
                "created_at": SUBMITTED_AT,
                "submitted_at": SUBMITTED_AT,
                "expires_at": SUBMITTED_AT + timedelta(days=21),
                "flexfactor_order_id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "outcome_at": outcome_at,
                "outcome_source": source,
                "late_outcome": False,
                "poll_count": 3,
                "resend_count": 0,
                "updated_at": outcome_at,
            }
        )
        subs.append(
            {
                "id": sub_id,
                "customer_id": f"C-{n:07d}",
                "order_id": order_id,
                "campaign_id": "c1",
                "product_id": "p1",
                "status": "RECYCLE_BILLING",
                "billing_cycle": 3,
                "billing_interval_days": 30,
                "shippable": True,
                "price_minor": price,
                "currency": "USD",
                "gateway_id": "flexfactor-main",
                "has_payment_token": True,
                "recycle_profile_id": "default",
                "recycle_transaction_id": f"T-{n:07d}",
                "recycle_declined_gateway_id": "nmi-main",
                "recycle_original_minor": price,
                "recycle_last_attempt": 4,
                "recycle_last_ran_on": date(2026, 6, 1),
                "open_handoff_id": handoff_id,
                "updated_at": SUBMITTED_AT,
            }
        )
        orders.append(
            {
                "id": order_id,
                "order_type": "REBILL",
                "status": "DECLINED",
                "customer_id": f"C-{n:07d}",
                "campaign_id": "c1",
                "product_id": "p1",
                "purchase_id": sub_id,
                "billing_cycle": 3,
                "completes_trial": False,
                "recurring_product": True,
                "shippable": True,
                "gateway_id": "nmi-main",
                "amount_minor": price,
                "currency": "USD",
                "has_payment_token": True,
                "updated_at": SUBMITTED_AT,
            }
        )
    return handoffs, subs, orders


def load(
    engine: Engine, handoffs: list[dict[str, Any]], subs: list[dict[str, Any]], orders: list[dict[str, Any]]
) -> None:
    queue = [
        {"handoff_id": h["id"], **{name: h[name] for name in _QUEUED if name != "handoff_id"}}
        for h in handoffs
    ]
    for model, rows in ((Handoff, handoffs), (Subscription, subs), (Order, orders), (OutcomeQueue, queue)):
        for start in range(0, len(rows), INSERT_CHUNK):
            with engine.begin() as conn:
                conn.execute(insert(model), rows[start : start + INSERT_CHUNK])


# --- databases: one loaded template, a fresh copy per run ----------------------------------------------


class SqliteCopies:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.template = folder / "template.db"

    def build(self, fill: Callable[[Engine], None]) -> None:
        url = f"sqlite:///{self.template}"
        upgrade(url)
        engine = make_engine(url)
        fill(engine)
        engine.dispose()
        # Fold the WAL into the main file, so that a plain file copy holds every row.
        with closing(sqlite3.connect(self.template)) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def copy(self) -> Iterator[Engine]:
        path = self.folder / f"run-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(self.template, path)
        engine = make_engine(f"sqlite:///{path}")
        try:
            yield engine
        finally:
            engine.dispose()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        pass


class PostgresCopies:
    def __init__(self) -> None:
        self.template = f"re_bench_tmpl_{uuid.uuid4().hex[:8]}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(sql)

    def build(self, fill: Callable[[Engine], None]) -> None:
        self._admin(f'CREATE DATABASE "{self.template}"')
        upgrade(f"{PG_HOST_URL}/{self.template}")
        engine = make_engine(f"{PG_HOST_URL}/{self.template}")
        fill(engine)
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()

    @contextmanager
    def copy(self) -> Iterator[Engine]:
        name = f"re_bench_run_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        engine = make_engine(f"{PG_HOST_URL}/{name}")
        try:
            yield engine
        finally:
            engine.dispose()
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


# --- the two sides ---------------------------------------------------------------------------------------


def run_outcomes(settings: Settings, engine: Engine, chunk: int | None) -> Counter[str]:
    kwargs: dict[str, Any] = {} if chunk is None else {"chunk": chunk}
    return apply_outcomes(settings, engine, now=NOW, run_id="bench", **kwargs)


def run_bare_update(engine: Engine, subs: list[dict[str, Any]], states: dict[str, str]) -> None:
    params = [
        {"b_id": s["id"], "b_status": "ACTIVE" if states[s["id"]] == "APPROVED" else "RECYCLE_FAILED"}
        for s in subs
    ]
    with engine.begin() as conn:
        conn.execute(
            update(Subscription)
            .where(Subscription.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), updated_at=NOW)
            .execution_options(synchronize_session=False),
            params,
        )


def check_applied(engine: Engine, rows: int, approved: int) -> None:
    """Guard against measuring a no-op: every outcome applied, each save with its records."""
    with engine.connect() as conn:
        unapplied = conn.execute(select(func.count()).select_from(OutcomeQueue)).scalar_one()
        active = conn.execute(
            select(func.count()).select_from(Subscription).where(Subscription.status == "ACTIVE")
        ).scalar_one()
        held = conn.execute(select(func.count()).select_from(Fulfillment)).scalar_one()
        changes = Counter(
            {
                (entity, field): n
                for entity, field, n in conn.execute(
                    select(Change.entity, Change.field, func.count()).group_by(Change.entity, Change.field)
                )
            }
        )
    if (unapplied, active, held) != (0, approved, approved):
        raise SystemExit(
            f"NOT A MEASUREMENT: {unapplied:,} outcomes left unapplied, {active:,} purchases saved and "
            f"{held:,} fulfillments held of {approved:,} approved"
        )
    # A save moves the order, the fulfillment and four fields of the purchase; a failed outcome ends
    # the purchase with its status and its failure cause (docs: "CRM outbox statuses").
    failed = rows - approved
    expected = Counter(
        {
            ("ORDER", "status"): approved,
            ("FULFILLMENT", "status"): approved,
            ("SUBSCRIPTION", "billing_cycle"): approved,
            ("SUBSCRIPTION", "gateway_id"): approved,
            ("SUBSCRIPTION", "next_bill_on"): approved,
            ("SUBSCRIPTION", "status"): rows,
            ("SUBSCRIPTION", "failure_cause"): failed,
        }
    )
    if changes != expected:
        raise SystemExit(
            f"NOT A MEASUREMENT: other change rows than the outcomes write: {changes} != {expected}"
        )


@dataclass
class Figure:
    """One side's best run: wall-clock seconds, and CPU seconds (this process plus, on PostgreSQL,
    the server backends that did the work). The machine is shared: CPU time is what the work costs,
    wall time adds whatever waiting for a CPU or the disk the run happened to meet."""

    wall_s: float
    cpu_s: float


@dataclass
class Result:
    db: str
    rows: int
    outcomes: Figure
    bare: Figure

    def per_s(self, seconds: float) -> float:
        return self.rows / seconds


class CpuMeter:
    """CPU seconds spent by this process and by the PostgreSQL backends of `engine` while active."""

    def __init__(self, engine: Engine) -> None:
        self.backends: dict[int, float] = {}  # backend pid -> its CPU seconds when first seen
        if engine.dialect.name == "postgresql":
            event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = int(cur.fetchone()[0])
        self.backends[pid] = _cpu_of(pid)

    def __enter__(self) -> CpuMeter:
        self.started = time.process_time()
        self.at_start = {pid: _cpu_of(pid) for pid in self.backends}
        return self

    def __exit__(self, *_: object) -> None:
        own = time.process_time() - self.started
        server = sum(_cpu_of(pid) - self.at_start.get(pid, base) for pid, base in self.backends.items())
        self.cpu_s = own + server


def _cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(engine: Engine, action: Callable[[], object]) -> Figure:
    meter = CpuMeter(engine)
    with meter:
        started = time.perf_counter()
        action()
        wall = time.perf_counter() - started
    return Figure(wall, meter.cpu_s)


def bench(db: str, settings: Settings, rows: int, repeat: int, chunk: int | None, folder: Path) -> Result:
    handoffs, subs, orders = book(rows)
    states = {h["purchase_id"]: h["state"] for h in handoffs}
    approved = sum(1 for h in handoffs if h["state"] == "APPROVED")
    # The bare UPDATE visits the purchases in the order apply_outcomes takes their hand-offs (oldest
    # outcome first), not in the id order they were inserted in, which would favour the page cache.
    visit = {h["purchase_id"]: (h["outcome_at"], h["id"]) for h in handoffs}
    in_apply_order = sorted(subs, key=lambda sub: visit[sub["id"]])
    copies: SqliteCopies | PostgresCopies = SqliteCopies(folder) if db == "sqlite" else PostgresCopies()
    try:
        copies.build(lambda engine: load(engine, handoffs, subs, orders))
        outcome_runs, bare_runs = [], []
        for _ in range(repeat):  # interleaved, so that a busy spell on the machine hits both sides
            with copies.copy() as engine:
                outcome_runs.append(measure(engine, partial(run_outcomes, settings, engine, chunk)))
                check_applied(engine, rows, approved)
            with copies.copy() as engine:
                bare_runs.append(measure(engine, partial(run_bare_update, engine, in_apply_order, states)))
        return Result(db, rows, _best(outcome_runs), _best(bare_runs))
    finally:
        copies.close()


def _best(runs: list[Figure]) -> Figure:
    return Figure(min(r.wall_s for r in runs), min(r.cpu_s for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="apply_outcomes chunk (default: its own)")
    args = parser.parse_args()

    settings = load_settings(ROOT / "settings.yaml", FAKE_ENV)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = []
    with tempfile.TemporaryDirectory(prefix="outcomes-bench-") as tmp:
        for db in dbs:
            print(f"{db}: building {args.rows:,} final hand-offs, then {args.repeat} run(s) of each side ...")
            results.append(bench(db, settings, args.rows, args.repeat, args.chunk, Path(tmp)))
    print()
    print(
        f"{'database':<10} {'rows':>7} {'clock':<5} {'outcomes/s':>11} {'bare UPDATE rows/s':>19} {'ratio':>7}  target"
    )
    for r in results:
        for clock, out_s, bare_s in (
            ("wall", r.outcomes.wall_s, r.bare.wall_s),
            ("CPU", r.outcomes.cpu_s, r.bare.cpu_s),
        ):
            ratio = out_s / bare_s
            verdict = "within 3x" if ratio <= 3 else "misses 3x"
            print(f"{r.db:<10} {r.rows:>7,} {clock:<5} {r.per_s(out_s):>11,.0f} {r.per_s(bare_s):>19,.0f} {ratio:>6.2f}x  {verdict}")  # fmt: skip
    print(
        "bare UPDATE: one executemany UPDATE subscriptions SET status, updated_at WHERE id = :id over the\n"
        "same purchases, in the order apply_outcomes visits them, in one transaction. Best of the runs;\n"
        "CPU = this process plus the PostgreSQL backends that served it."
    )


if __name__ == "__main__":
    main()
