"""The daily report over a long history: `run report` for one day of a 5,000,000-hand-off book beside a
bare GROUP BY over every hand-off, each in its own process, with its seconds and its peak RSS.

    .venv/bin/python bench/report_benchmark.py [--rows 5000000] [--days 730] [--db sqlite|postgres]
                                               [--repeat 3] [--rebuild] [--no-night] [--holdout]

The book is built once and kept (SQLite: var/bench/report-ROWS-DAYS.db; PostgreSQL: a database of that
name) unless --rebuild, and a kept book is migrated to the current schema first: ROWS hand-offs spread
evenly over DAYS local days (about 6,850 a night at the defaults) ending 2026-06-12 in New York, each
with its decline (25 reasons, 5 brands, 600 BINs), in every state a real book holds: settled ones,
pending ones in the last 21 days, FAILED, refunds, chargebacks and late approvals, in USD, EUR and JPY,
on 3 declining and 2 FlexFactor gateways. The last 45 days also have their hand-off events (created and
outcome) and the day its webhook deliveries and job runs. Rows are generated in Python and written with
raw executemany (SQLite) or COPY (PostgreSQL) with the rollup triggers off; then
`refresh_rollups(rebuild=True)` builds the rollups (timed and printed when built).

With --holdout (a book of its own, name ending in -holdout) every recycle hand-off reached its slot in
the FlexFactor group (a holdout assignment), and for one in nine a subscription of the holdout group
reached the same slot and stayed on the declining gateway: a declined retry, an approved one for a
quarter of them, still on the ladder in its last 14 days otherwise; open hand-offs' subscriptions are
still on the ladder. About one assignment per hand-off (5M for 5M hand-offs). A third
bare statement reads every assignment (by arm and currency), and each side's ratio is printed.

Then, interleaved, `--repeat` times each, each in a fresh child process:
  bare     one GROUP BY over every hand-off joined with its decline, by the rollups' dimensions
           (day, source, slot, declining gateway, FlexFactor gateway, response code, state, currency)
  report   services.reporting.report.run_report for 2026-06-12 as of 06:00 the next morning, the rollups current:
           every query, the pandas shaping, the HTML, the CSV of the day's rows and the index
Seconds are the call's wall time inside the child (imports excluded); peak RSS is the child's own
high-water mark (VmHWM, read as it ends), the interpreter and its imports included.
The best run and the median of the runs are both printed; the target is judged on the median.

With the night (default), on a copy of the book: the next night is written the way runs write it (a
night of new hand-offs, outcomes for a third of the open ones, a late approval), then the refresh a
nightly run makes is timed, then the report of that day.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from outcomes_benchmark import FAKE_ENV as ENV  # sibling scripts: bench/ is on sys.path
from outcomes_benchmark import CpuMeter
from sqlalchemy import text

from recycle_engine.domain.night import Night
from recycle_engine.storage.db import make_engine, upgrade

ROOT: Final = Path(__file__).resolve().parents[1]

TZ: Final = ZoneInfo("America/New_York")
LAST_DAY: Final = date(2026, 6, 12)
NOW: Final = datetime.combine(LAST_DAY + timedelta(days=1), clock_time(6), tzinfo=TZ).astimezone(UTC)
PG_ADMIN: Final = os.environ.get(
    "RECYCLE_ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_HOST_URL: Final = os.environ.get(
    "RECYCLE_ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"
)
CHUNK: Final = 100_000
EVENT_DAYS: Final = 45
HANDOFF_COLUMNS: Final = (
    "id source order_id purchase_id transaction_id gateway_id declining_gateway_id slot attempt billing_cycle "
    "amount_minor currency idempotency_key request_body dedupe_key state created_at send_started_at "
    "submitted_at expires_at flexfactor_order_id outcome_at outcome_source late_outcome "
    "attention next_poll_at poll_count resend_count updated_at"
).split()
DECLINE_COLUMNS: Final = (
    "transaction_id declined_at utc_offset_minutes order_id order_type purchase_id billing_cycle completes_trial "
    "recurring_product shippable gateway_id amount_minor currency response_type decline_type display_message "
    "response_code response_text card_bin card_brand imported_at"
).split()
EVENT_COLUMNS: Final = "handoff_id kind source state_after amount_minor occurred_at".split()
REASONS: Final = [(f"{n:02d}", text) for n, text in enumerate(
    "Insufficient funds|Do Not Honor|Expired card|Activity limit exceeded|Issuer unavailable|Pick up card|"
    "Transaction not permitted|Restricted card|Call issuer|Invalid transaction|Exceeds withdrawal limit|"
    "Suspected fraud|Security violation|Card not activated|Closed account|Invalid account|Processor declined|"
    "Try again later|System malfunction|Refer to issuer|Lost card|Stolen card|No such issuer|Format error|"
    "Generic decline".split("|"), start=1)]  # fmt: skip
BRANDS: Final = [("VISA", 50), ("MASTERCARD", 30), ("AMEX", 10), ("DISCOVER", 7), ("JCB", 3)]
# Tables whose triggers note rollup changes: off during the load, the rollups are rebuilt after it.
WATCHED: Final = ("handoffs", "holdout_assignments", "transactions", "subscriptions")
SLOTS: Final = [("4-6", 4, 12), ("7-9", 7, 17), ("final", 10, 22)]  # slot, attempt, days after the decline


# --- the book ----------------------------------------------------------------------------------------------


def _local(day: date, hour: float) -> datetime:
    at = datetime.combine(day, clock_time(0), tzinfo=TZ) + timedelta(hours=hour)
    return at.astimezone(UTC)


def _pick(rnd: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rnd.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


def _state(rnd: random.Random, age: int) -> str:
    roll = rnd.random()
    if roll < 0.015:
        return "FAILED"
    if age < 21 and rnd.random() < 0.6 * (1 - age / 21):
        return "SUBMITTED"
    return _pick(
        rnd, [("APPROVED", 38), ("DECLINED", 22), ("EXPIRED", 35 if age >= 21 else 0), ("CANCELLED", 5)]
    )


def generate(rows: int, days: int, seed: int = 7) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(hand-off, decline) pairs, oldest night first; deterministic by seed."""
    rnd = random.Random(seed)
    first_day = LAST_DAY - timedelta(days=days - 1)
    bins = [f"{400000 + rnd.randrange(200000):06d}" for _ in range(600)]
    for i in range(rows):
        day = first_day + timedelta(days=i * days // rows)
        age = (LAST_DAY - day).days
        source = _pick(rnd, [("RECYCLE", 90), ("RERUN", 7), ("CASCADE", 3)])
        created = _local(day, 2 if source != "CASCADE" else rnd.uniform(8, 22))
        slot, attempt, lag = rnd.choices(SLOTS, [60, 25, 15])[0] if source == "RECYCLE" else (None, None, 0)
        state = _state(rnd, age)
        outcome = None
        if state in ("APPROVED", "CANCELLED"):
            outcome = created + timedelta(days=rnd.uniform(0, min(age + 0.9, 21)))
        elif state in ("DECLINED", "FAILED"):
            outcome = created + timedelta(minutes=rnd.uniform(0, 5))
        elif state == "EXPIRED":
            outcome = created + timedelta(days=21, hours=1.5)
        late = state == "APPROVED" and age >= 26 and rnd.random() < 0.003
        if late:
            outcome = created + timedelta(days=rnd.uniform(22, 25))
        attention = None
        if state == "APPROVED":
            attention = _pick(rnd, [("REFUNDED", 6), ("CHARGEBACK", 2), ("", 992)]) or None
        currency = _pick(rnd, [("USD", 80), ("EUR", 15), ("JPY", 5)])
        amount = rnd.randrange(1000, 12000) if currency == "JPY" else rnd.randrange(799, 9999)
        hid, txn = f"H{i:09d}", f"T{i:09d}"
        handoff = {
            "id": hid,
            "source": source,
            "order_id": f"O{i:09d}",
            "purchase_id": f"P{i:09d}",
            "transaction_id": txn,
            "gateway_id": _pick(rnd, [("flexfactor-main", 85), ("flexfactor-eu", 15)]),
            "declining_gateway_id": _pick(rnd, [("nmi-main", 50), ("nmi-eu", 30), ("stripe-us", 20)]),
            "slot": slot,
            "attempt": attempt,
            "billing_cycle": 2 + min(int(rnd.expovariate(0.5)), 10) if source == "RECYCLE" else 1,
            "amount_minor": amount,
            "currency": currency,
            "idempotency_key": f"00000000-0000-4000-8000-{i:012d}",
            "request_body": "{}",
            "dedupe_key": f"{source}:{hid}",
            "state": state,
            "created_at": created,
            "send_started_at": created,
            "submitted_at": None if state == "FAILED" else created,
            "expires_at": created + timedelta(days=21),
            "flexfactor_order_id": None if state == "FAILED" else f"F{i:09d}",
            "outcome_at": outcome,
            "outcome_source": None if outcome is None else ("POLL" if state == "EXPIRED" else "WEBHOOK"),
            "late_outcome": late,
            "attention": attention,
            "next_poll_at": created + timedelta(days=age + 1) if state == "SUBMITTED" else None,
            "poll_count": min(age, 21),
            "resend_count": 0,
            "updated_at": outcome or created,
        }
        code, reason = rnd.choice(REASONS)
        declined = created - timedelta(
            days=lag + (rnd.uniform(0, 3) if source == "RERUN" else 0), hours=rnd.uniform(0, 6)
        )
        decline = {
            "transaction_id": txn,
            "declined_at": declined,
            "utc_offset_minutes": -240,
            "order_id": handoff["order_id"],
            "order_type": "REBILL" if source == "RECYCLE" else "NEW_SALE",
            "purchase_id": handoff["purchase_id"],
            "billing_cycle": handoff["billing_cycle"],
            "completes_trial": False,
            "recurring_product": True,
            "shippable": False,
            "gateway_id": handoff["declining_gateway_id"],
            "amount_minor": amount,
            "currency": currency,
            "response_type": "SOFT_DECLINE",
            "decline_type": "SOFT",
            "display_message": reason.upper() if code == "02" else None,
            "response_code": code,
            "response_text": reason,
            "card_bin": rnd.choice(bins),
            "card_brand": _pick(rnd, BRANDS),
            "imported_at": declined,
        }
        yield handoff, decline


def holdout_rows(
    handoff: dict[str, Any], n: int, rnd: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(assignments, subscriptions, retries) of one hand-off in a book with holdout on."""
    if handoff["source"] != "RECYCLE":
        return [], [], []
    created, currency, amount = handoff["created_at"], handoff["currency"], handoff["amount_minor"]
    common = {"billing_cycle": handoff["billing_cycle"], "profile_id": "default", "attempt": 4, "slot": "4-6"}
    common |= {"gateway_id": handoff["gateway_id"], "amount_minor": amount, "currency": currency}
    common |= {"run_id": None, "assigned_at": created}
    sub, txn = handoff["purchase_id"], handoff["transaction_id"]
    assignments = [common | {"subscription_id": sub, "decline_transaction_id": txn, "arm": "FLEXFACTOR"}]
    subscriptions, retries = [], []
    if handoff["state"] == "SUBMITTED":
        subscriptions.append(_recycling(sub, txn, currency, amount, created))
    if n % 9 == 0:
        sub, txn = f"Q{n:09d}", f"U{n:09d}"
        assignments.append(common | {"subscription_id": sub, "decline_transaction_id": txn, "arm": "HOLDOUT"})
        age = (LAST_DAY - created.astimezone(TZ).date()).days
        retry = {"subscription_id": sub, "decline_transaction_id": txn, "gateway_id": "nmi-main"}
        retry |= {"amount_minor": amount, "currency": currency}
        retries.append(
            retry | {"id": f"R{n:09d}a", "attempt": 4, "result": "DECLINED", "occurred_at": created}
        )
        if rnd.random() < 0.25:
            at = created + timedelta(days=rnd.uniform(1, min(age + 0.9, 14)))
            retries.append(
                retry | {"id": f"R{n:09d}b", "attempt": 5, "result": "APPROVED", "occurred_at": at}
            )
        elif age < 14:
            subscriptions.append(_recycling(sub, txn, currency, amount, created))
    return assignments, subscriptions, retries


def _recycling(sub: str, txn: str, currency: str, amount: int, at: datetime) -> dict[str, Any]:
    return {"id": sub, "status": "RECYCLE_BILLING", "billing_cycle": 3, "shippable": False} | {
        "price_minor": amount,
        "currency": currency,
        "gateway_id": "nmi-main",
        "has_payment_token": True,
        "recycle_transaction_id": txn,
        "recycle_last_attempt": 4,
        "updated_at": at,
    }


def _events(handoff: dict[str, Any]) -> list[dict[str, Any]]:
    created = {"handoff_id": handoff["id"], "kind": "CREATED", "source": "RESPONSE", "state_after": "PENDING"}
    rows = [created | {"amount_minor": handoff["amount_minor"], "occurred_at": handoff["created_at"]}]
    if handoff["outcome_at"] is not None:
        rows.append(
            {
                "handoff_id": handoff["id"],
                "kind": handoff["state"],
                "source": handoff["outcome_source"] or "RESPONSE",
            }
            | {"state_after": handoff["state"], "amount_minor": None, "occurred_at": handoff["outcome_at"]}
        )
    return rows


# --- loading -------------------------------------------------------------------------------------------------


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


class SqliteLoader:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-400000")
        self.triggers = self.db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        for name, _ in self.triggers:  # restored after the load; the rollups are rebuilt from scratch
            self.db.execute(f"DROP TRIGGER {name}")

    def write(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self.db.execute("BEGIN")
        self.db.executemany(sql, [tuple(_sqlite_value(r[c]) for c in columns) for r in rows])
        self.db.execute("COMMIT")

    def close(self) -> None:
        for _, sql in self.triggers:
            self.db.execute(sql)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


class PostgresLoader:
    def __init__(self, dsn: str) -> None:
        import psycopg

        self.db = psycopg.connect(dsn, autocommit=True)
        for table in WATCHED:
            self.db.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")

    def write(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        with self.db.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row([r[c] for c in columns])

    def close(self) -> None:
        for table in WATCHED:
            self.db.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        self.db.execute("VACUUM ANALYZE")  # what autovacuum would have done on a book this old
        self.db.close()


def _day_extras(loader: SqliteLoader | PostgresLoader) -> None:
    """The day's webhook deliveries and job runs, which the report lists."""
    start = _local(LAST_DAY, 0)
    hooks = [
        {
            "gateway_id": "flexfactor-main",
            "received_at": start + timedelta(seconds=20 * n),
            "accepted": n % 50 != 0,
        }
        | {"http_status": 200 if n % 50 else 401, "reason": "applied" if n % 50 else "bad signature"}
        | {"is_resent": False, "is_duplicate": n % 97 == 0}
        for n in range(3000)
    ]
    loader.write("webhook_deliveries", list(hooks[0]), hooks)
    runs = [
        {
            "id": f"{job}-bench",
            "job": job,
            "logical_at": start + timedelta(hours=h),
            "started_at": start + timedelta(hours=h),
        }
        | {
            "finished_at": start + timedelta(hours=h, minutes=9),
            "status": "SUCCEEDED",
            "counts": '{"handed_off": 6850}',
        }
        for job, h in (("submit", 2), ("reconcile", 3.5))
    ]
    loader.write("job_runs", list(runs[0]), runs)


def build(url: str, rows: int, days: int, holdout: bool = False) -> None:
    upgrade(url)
    loader: SqliteLoader | PostgresLoader
    if url.startswith("sqlite"):
        loader = SqliteLoader(Path(url.removeprefix("sqlite:///")))
    else:
        loader = PostgresLoader(url.replace("postgresql+psycopg://", "postgresql://"))
    started = time.perf_counter()
    handoffs: list[dict[str, Any]] = []
    declines: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    extra: dict[str, list[dict[str, Any]]] = {
        "holdout_assignments": [],
        "subscriptions": [],
        "transactions": [],
    }
    rnd = random.Random(21)
    event_from = _local(LAST_DAY - timedelta(days=EVENT_DAYS), 0)
    for n, (handoff, decline) in enumerate(generate(rows, days), start=1):
        handoffs.append(handoff)
        declines.append(decline)
        if handoff["created_at"] >= event_from:
            events += _events(handoff)
        if holdout:
            for table, part in zip(extra, holdout_rows(handoff, n, rnd), strict=True):
                extra[table] += part
        if len(handoffs) == CHUNK or n == rows:
            loader.write("declines", DECLINE_COLUMNS, declines)
            loader.write("handoffs", HANDOFF_COLUMNS, handoffs)
            loader.write("handoff_events", EVENT_COLUMNS, events)
            for table, part in extra.items():
                if part:
                    loader.write(table, list(part[0]), part)
            handoffs, declines, events = [], [], []
            extra = {table: [] for table in extra}
            print(f"\r  {n:,} hand-offs written ({time.perf_counter() - started:.0f} s)", end="", flush=True)
    _day_extras(loader)
    loader.close()
    print()
    from recycle_engine.services.reporting.rollups import refresh_rollups

    engine = make_engine(url)
    refresh = refresh_rollups(engine, TZ, now=NOW, rebuild=True)
    engine.dispose()
    print(
        f"  rollups rebuilt: {refresh.days:,} local days in {refresh.seconds:.1f} s (refresh_rollups, rebuild)"
    )


# --- a night later -------------------------------------------------------------------------------------------


def write_night(url: str, rows: int, days: int) -> str:
    """The night after LAST_DAY, written as runs write it, triggers on: a night of new hand-offs, outcomes
    for a third of the open ones, a late approval; then the refresh a nightly run makes, timed."""
    from sqlalchemy import bindparam, insert, select, update

    from recycle_engine.services.reporting.rollups import refresh_rollups
    from recycle_engine.storage.models import Decline, Handoff

    engine = make_engine(url)
    night = _local(LAST_DAY + timedelta(days=1), 2)
    handoffs, declines = [], []
    for n, (handoff, decline) in enumerate(generate(rows // days, 1, seed=99)):
        shift = night - handoff["created_at"]
        for key in ("id", "order_id", "purchase_id", "transaction_id", "dedupe_key"):
            handoff[key] = f"N{n:08d}{handoff[key]}"
        for key in ("created_at", "send_started_at", "submitted_at", "expires_at", "updated_at"):
            handoff[key] = handoff[key] and handoff[key] + shift
        handoff |= {"idempotency_key": f"00000000-0000-4000-9000-{n:012d}", "state": "SUBMITTED"}
        handoff |= {"outcome_at": None, "outcome_source": None, "attention": None}
        handoff |= {"late_outcome": False, "flexfactor_order_id": f"FN{n:09d}", "next_poll_at": None}
        handoffs.append(handoff)
        declines.append(
            decline
            | {"transaction_id": handoff["transaction_id"], "declined_at": decline["declined_at"] + shift}
        )
    with engine.begin() as conn:
        conn.execute(insert(Decline), declines)
        conn.execute(insert(Handoff), handoffs)
    with engine.begin() as conn:
        open_ids = (
            conn.execute(select(Handoff.id).where(Handoff.state == "SUBMITTED", Handoff.created_at < night))
            .scalars()
            .all()
        )
        settled = [
            {"b_id": h, "b_state": ("DECLINED", "APPROVED")[k % 2]} for k, h in enumerate(open_ids[::3])
        ]
        stmt = update(Handoff).where(Handoff.id == bindparam("b_id"))
        conn.execute(stmt.values(state=bindparam("b_state"), outcome_at=night, updated_at=night), settled)
        late = conn.execute(
            select(Handoff.id).where(Handoff.state == "EXPIRED").order_by(Handoff.created_at.desc()).limit(1)
        ).scalar_one()
        conn.execute(
            update(Handoff)
            .where(Handoff.id == late)
            .values(state="APPROVED", late_outcome=True, outcome_at=night)
        )
    refresh = refresh_rollups(engine, TZ, now=night)
    engine.dispose()
    return (
        f"{len(handoffs):,} new hand-offs, {len(settled):,} outcomes, 1 late approval; the nightly run's "
        f"refresh recomputed {refresh.days} local days in {refresh.seconds:.2f} s"
    )


# --- the two sides, each in a child process ------------------------------------------------------------------

SETTINGS: Final = """\
timezone: America/New_York
database: {{url: "{url}"}}
gateways:
  - id: nmi-main
    type: simulated
  - id: flexfactor-main
    type: flexfactor
    base_url: http://127.0.0.1:9/v1
    app_key: ${{FLEXFACTOR_APP_KEY}}
    app_secret: ${{FLEXFACTOR_APP_SECRET}}
    mid: ${{FLEXFACTOR_MID}}
    site_id: ${{FLEXFACTOR_SITE_ID}}
    environment_key: ${{FLEXFACTOR_ENVIRONMENT_KEY}}
    hmac_signing_key: ${{FLEXFACTOR_HMAC_SIGNING_KEY}}
campaigns:
  - id: c1
    products: [{{id: p1, gateway: nmi-main}}]
recycle_profiles:
  - id: default
    gateways: [nmi-main]
    reduction_type: percent
    minimum_price: "5.00"
    attempts:
      - {{attempt: 4, days: 4, reduction: "0"}}
    slots: {{"4-6": flexfactor-main}}
reports: {{output_dir: "{out}"}}
"""


def _peak_mb() -> float:
    """This process's own peak RSS (VmHWM: the high-water mark of its memory since exec)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_read(url: str, sql: Any) -> dict[str, Any]:
    """One statement read to the end: wall seconds, the database's CPU and the rows it returned."""
    engine = make_engine(url)
    meter = CpuMeter(engine)
    with engine.connect() as conn, meter:
        started = time.perf_counter()
        groups = len(conn.execute(sql).fetchall())
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "cpu_s": meter.cpu_s, "groups": groups}


def bare_group_by(url: str) -> dict[str, Any]:
    day = (
        "date(h.created_at)" if url.startswith("sqlite") else "CAST(h.created_at AT TIME ZONE 'UTC' AS date)"
    )
    sql = text(
        f"SELECT {day}, h.source, h.slot, h.declining_gateway_id, h.gateway_id, d.response_code, h.state, "
        "h.currency, count(*), sum(h.amount_minor) FROM handoffs h "
        "LEFT JOIN declines d ON d.transaction_id = h.transaction_id GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"
    )
    return _timed_read(url, sql)


def bare_holdout(url: str) -> dict[str, Any]:
    """Every holdout assignment read once, by arm and currency: the least any read of them all costs."""
    sql = text(
        "SELECT arm, currency, count(*), sum(amount_minor) FROM holdout_assignments GROUP BY arm, currency"
    )
    return _timed_read(url, sql)


def report(url: str, day: date, now: datetime, out: Path) -> dict[str, Any]:
    from recycle_engine.config import load_settings
    from recycle_engine.services.reporting.report import run_report

    path = out / "settings.yaml"
    path.write_text(SETTINGS.format(url=url, out=out / "reports"), encoding="utf-8")
    settings = load_settings(path, ENV)
    engine = make_engine(url)
    meter = CpuMeter(engine)
    with meter:
        started = time.perf_counter()
        result = run_report(settings, engine, day=day, night=Night.of(now, settings.timezone))
        seconds = time.perf_counter() - started
    engine.dispose()
    counts = {"csv_rows": result.counts["csv_rows"], "rollup_days": result.counts["rollup_days"]}
    return {"seconds": seconds, "cpu_s": meter.cpu_s} | counts


def in_child(*args: str) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its JSON answer, with its own peak RSS."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def child_main(argv: list[str]) -> None:
    mode, url = argv[0], argv[1]
    if mode == "bare":
        answer = bare_group_by(url)
    elif mode == "bare-holdout":
        answer = bare_holdout(url)
    else:
        import tempfile

        day = date.fromisoformat(argv[2])
        now = datetime.combine(day + timedelta(days=1), clock_time(6), tzinfo=TZ).astimezone(UTC)
        with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
            answer = report(url, day, now, Path(tmp))
    print(json.dumps(answer | {"peak_mb": _peak_mb()}))


# --- databases -----------------------------------------------------------------------------------------------


def _pg_admin(sql: str) -> list[Any]:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def _pg_admin_on(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql)


def book_url(db: str, rows: int, days: int, rebuild: bool, holdout: bool = False) -> str:
    """The kept book's URL, built first when missing or asked to."""
    name = f"report-{rows}-{days}" + ("-holdout" if holdout else "")
    if db == "sqlite":
        path = ROOT / "var" / "bench" / f"{name}.db"
        url = f"sqlite:///{path}"
        if rebuild:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            print(f"building {path} ...")
            build(url, rows, days, holdout)
        return _at_head(url)
    dbname = "re_bench_" + name.replace("-", "_")
    exists = bool(_pg_admin(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"))
    if exists and rebuild:
        _pg_admin(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    if rebuild or not exists:
        _pg_admin(f'CREATE DATABASE "{dbname}"')
        print(f"building PostgreSQL database {dbname} ...")
        build(f"{PG_HOST_URL}/{dbname}", rows, days, holdout)
    return _at_head(f"{PG_HOST_URL}/{dbname}")


def _at_head(url: str) -> str:
    """The kept book migrated to the current schema (indexes a newer migration adds), timed when it was
    behind; nothing to do once it is there."""
    started = time.perf_counter()
    engine = make_engine(url)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    if after != before:
        print(f"  kept book migrated from {before} to {after} in {time.perf_counter() - started:.0f} s")
        from recycle_engine.services.reporting.rollups import refresh_rollups

        engine = make_engine(url)
        refresh = refresh_rollups(engine, TZ, now=NOW)
        engine.dispose()
        print(
            f"  then its first refresh: {refresh.days + refresh.holdout_days + refresh.recovery_days:,} local days in {refresh.seconds:.1f} s"
        )
        if not url.startswith("sqlite"):  # what autovacuum does after so many changed rows, as after the load
            _pg_admin_on(url, "VACUUM ANALYZE")
    return url


def copy_of(db: str, url: str) -> tuple[str, Any]:
    """A throwaway copy of the book for the night, and how to remove it."""
    if db == "sqlite":
        source = Path(url.removeprefix("sqlite:///"))
        target = source.with_name(source.stem + "-night.db")
        shutil.copyfile(source, target)
        return f"sqlite:///{target}", lambda: [
            Path(f"{target}{s}").unlink(missing_ok=True) for s in ("", "-wal", "-shm")
        ]
    name = url.rsplit("/", 1)[1]
    copy = f"{name}_night"
    _pg_admin(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    return f"{PG_HOST_URL}/{copy}", lambda: _pg_admin(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


# --- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build the book again even if it is kept")
    parser.add_argument("--no-night", dest="night", action="store_false", help="skip the night after")
    parser.add_argument("--holdout", action="store_true", help="a book with holdout on (its own book)")
    args = parser.parse_args()

    url = book_url(args.db, args.rows, args.days, args.rebuild, args.holdout)
    bare_runs, report_runs, holdout_runs = [], [], []
    for n in range(args.repeat):  # interleaved, so that a busy spell on the machine hits both sides
        bare_runs.append(in_child("bare", url))
        if args.holdout:
            holdout_runs.append(in_child("bare-holdout", url))
        report_runs.append(in_child("report", url, LAST_DAY.isoformat()))
        b, r = bare_runs[-1], report_runs[-1]
        also = f", bare holdout {holdout_runs[-1]['seconds']:.2f} s" if args.holdout else ""
        print(f"  run {n + 1}: bare {b['seconds']:.2f} s (CPU {b['cpu_s']:.2f}){also}, report {r['seconds']:.2f} s (CPU {r['cpu_s']:.2f})")  # fmt: skip
    bare = min(bare_runs, key=lambda r: r["seconds"])
    best = min(report_runs, key=lambda r: r["seconds"])
    peak = max(r["peak_mb"] for r in report_runs)
    ratio, cpu_ratio = bare["seconds"] / best["seconds"], bare["cpu_s"] / best["cpu_s"]
    print()
    print(f"{args.db}, {args.rows:,} hand-offs over {args.days} days; best of {args.repeat} runs, each in its own process")  # fmt: skip
    print(f"  {'':<18} {'wall s':>8} {'CPU s':>8} {'peak RSS':>10}")
    print(f"  {'bare GROUP BY':<18} {bare['seconds']:8.2f} {bare['cpu_s']:8.2f} {bare['peak_mb']:7.0f} MB   {bare['groups']:,} groups")  # fmt: skip
    print(f"  {'report ' + str(LAST_DAY):<18} {best['seconds']:8.2f} {best['cpu_s']:8.2f} {best['peak_mb']:7.0f} MB   {best['csv_rows']:,} detail rows")  # fmt: skip
    if holdout_runs:
        ho = min(holdout_runs, key=lambda r: r["seconds"])
        print(f"  {'bare holdout read':<18} {ho['seconds']:8.2f} {ho['cpu_s']:8.2f} {ho['peak_mb']:7.0f} MB   {ho['groups']:,} groups")  # fmt: skip
    print(f"  the report is {ratio:.1f}x faster than the bare GROUP BY ({cpu_ratio:.1f}x in CPU time); its peak RSS over all runs {peak:.0f} MB")  # fmt: skip
    # The best run shows what the code can do on a quiet moment; the median, what a run usually takes.
    mid_bare = statistics.median(r["seconds"] for r in bare_runs)
    mid_report = statistics.median(r["seconds"] for r in report_runs)
    print(f"  median of {args.repeat}: bare GROUP BY {mid_bare:.2f} s, report {mid_report:.2f} s, {mid_bare / mid_report:.1f}x faster")  # fmt: skip
    if holdout_runs:
        print(f"  report / bare GROUP BY = {best['seconds'] / bare['seconds']:.3f}; report / bare holdout read = {best['seconds'] / ho['seconds']:.3f}")  # fmt: skip
    met = mid_report < 1 and peak < 300 and mid_bare / mid_report >= 9
    print(f"  target (median under 1 s, under 300 MB, at least 9x faster): {'met' if met else 'NOT met'}")
    if args.night:
        night_url, remove = copy_of(args.db, url)
        try:
            print(f"\nthe night after, on a copy: {write_night(night_url, args.rows, args.days)}")
            after = in_child("report", night_url, (LAST_DAY + timedelta(days=1)).isoformat())
            print(f"  report {LAST_DAY + timedelta(days=1)}: {after['seconds']:.2f} s (CPU {after['cpu_s']:.2f}), peak RSS {after['peak_mb']:.0f} MB, {after['rollup_days']} local days left for its own refresh")  # fmt: skip
        finally:
            remove()


if __name__ == "__main__":
    main()
