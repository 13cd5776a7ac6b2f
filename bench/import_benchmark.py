"""Benchmark of `import declines`: rows/s and peak memory against a bare executemany and a naive ORM loop.

Run: .venv/bin/python bench/import_benchmark.py [--rows 100000] [--db sqlite|postgres] [--naive-rows 3000]
Not a test: it prints figures. PostgreSQL uses $RECYCLE_ENGINE_TEST_PG (admin DSN) and
$RECYCLE_ENGINE_TEST_PG_URL, as the test suite does, and drops its database afterwards.
"""

from __future__ import annotations

import argparse
import csv
import functools
import multiprocessing
import os
import random
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.config import Settings, load_settings
from recycle_engine.services.intake.feed_file import read_chunks, read_header
from recycle_engine.services.intake.feed_rows import FEED_COLUMNS, check_chunk
from recycle_engine.services.intake.import_declines import import_declines
from recycle_engine.storage.db import make_engine, upgrade
from recycle_engine.storage.models import Decline

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENV = {
    "FLEXFACTOR_APP_KEY": "bench",
    "FLEXFACTOR_APP_SECRET": "bench",
    "FLEXFACTOR_MID": "bench",
    "FLEXFACTOR_SITE_ID": "bench",
    "FLEXFACTOR_ENVIRONMENT_KEY": "bench",
    "FLEXFACTOR_HMAC_SIGNING_KEY": "YmVuY2gtc2lnbmluZy1rZXk=",
}
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FULL = "full import (checks, mapping, ladder, upserts)"
BARE = "baseline 1: bare executemany into declines"
NAIVE = "baseline 2: naive ORM add+commit per row"
TEXTS = {
    "SOFT_DECLINE": [
        "Insufficient funds",
        "Processor declined",
        "Activity limit exceeded",
        "Expired card",
        "05 - Do Not Honor",
    ],
    "HARD_DECLINE": ["Stolen card, pick up", "Invalid card number", "Account closed", "05 - Do Not Honor"],
}


def write_feed(path: Path, rows: int, seed: int = 11) -> None:
    """A realistic feed: 60 % rebills, 30 % new sales, 10 % upsales; repeat customers and purchases."""
    rnd = random.Random(seed)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FEED_COLUMNS)
        for n in range(rows):
            kind = rnd.random()
            order_type = "REBILL" if kind < 0.6 else "NEW_SALE" if kind < 0.9 else "UPSALE"
            response_type = "SOFT_DECLINE" if rnd.random() < 0.8 else "HARD_DECLINE"
            purchase = f"P-{rnd.randrange(rows // 2)}" if order_type != "UPSALE" else ""
            customer = rnd.randrange(rows // 3)
            when = start + timedelta(seconds=rnd.randrange(30 * 86400))
            writer.writerow(
                [
                    f"T-{n:08d}", when.isoformat(), f"O-{n:08d}", order_type, purchase,
                    rnd.randint(2, 8) if order_type == "REBILL" else 1, 30 if purchase else "",
                    "false", str(bool(purchase)).lower(), rnd.choice(["true", "false"]), "c1", "p1",
                    rnd.choice(["nmi-main", "nmi-backup"]), rnd.choice(["29.99", "49.99", "19.95", "9.00"]), "USD",
                    response_type, rnd.choice(["05", "51", "61"]), rnd.choice(TEXTS[response_type]), "Y", "M", "",
                    f"C-{customer}", f"shopper{customer}@example.com", f"+1 555 {customer % 10000:04d}",
                    "Alex", f"Shopper{customer}", f"{customer % 900 + 1} Main St", "", "Springfield", "IL",
                    "62701", "US", f"198.51.100.{customer % 250}", token(rnd),
                    "411111", f"{rnd.randrange(10000):04d}", rnd.randint(1, 12), rnd.randint(2026, 2031),
                    "VISA", "CREDIT",
                ]
            )  # fmt: skip


def token(rnd: random.Random) -> str:
    """A vault token shaped like the real ones: 24 base-62 characters (rarely 13 digits in a row)."""
    return "tok_" + "".join(rnd.choices(BASE62, k=24))


@dataclass
class Figure:
    name: str
    rows: int
    seconds: float
    peak_mb: float
    growth_mb: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def measure(name: str, action: Callable[[], int]) -> Figure:
    """Run `action` (which returns how many rows it wrote) in a forked process of its own, and time it.

    Peak memory is that process's peak RSS plus the largest of its own children's (the import's feed
    checker), so work moved into a child is still counted. The bench process stays single-threaded,
    as the CLI is, so the import may fork its checker here too.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_measured, args=(sender, action))
    child.start()
    sender.close()
    answer = receiver.recv()
    child.join()
    if isinstance(answer, str):  # the measure refused its own result: say why, in this process
        raise SystemExit(answer)
    rows, seconds, peak, before = answer
    mb = 1024 * 1024
    return Figure(name, rows, seconds, peak / mb, (peak - before) / mb)


def _measured(sender: Connection, action: Callable[[], int]) -> None:
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    try:
        rows = action()
    except SystemExit as exc:
        sender.send(str(exc))
        sender.close()
        return
    seconds = time.perf_counter() - started
    own, children = (
        resource.getrusage(who).ru_maxrss * 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    sender.send((rows, seconds, own + children, before))
    sender.close()


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[Engine]:
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    import psycopg

    admin = os.environ.get("RECYCLE_ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    host = os.environ.get("RECYCLE_ENGINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
    name = f"re_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        upgrade(f"{host}/{name}")
        engine = make_engine(f"{host}/{name}")
        yield engine
        engine.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checked_records(feed: Path, settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """The feed's rows as the import stores them, for the two baselines (not timed)."""
    header = read_header(feed)
    ordinary = [g.id for g in settings.gateways.values() if not g.is_flexfactor]
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for frame, first_line in read_chunks(feed, header, 20_000):
        chunk = check_chunk(
            frame, first_line=first_line, gateways=ordinary, flexfactor_gateways=[], seen_transactions=seen
        )
        rows = chunk.records
        for record in rows:
            record.update(decline_type="SOFT", mapping_rule=None, display_message=None, imported_at=now)
        records.extend(rows)
    return records


def bare_executemany(*, engine: Engine, records: list[dict[str, Any]], chunk: int = 20_000) -> None:
    for start in range(0, len(records), chunk):
        with engine.begin() as conn:
            conn.execute(insert(Decline), records[start : start + chunk])


def naive_orm(*, engine: Engine, records: list[dict[str, Any]]) -> None:
    with Session(engine) as session:
        for record in records:
            session.add(Decline(**record))
            session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--naive-rows", type=int, default=3_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each measure keeps its fastest")
    args = parser.parse_args()
    total_rows: int = args.rows
    naive_rows: int = args.naive_rows

    settings = load_settings(ROOT / "settings.yaml", FAKE_ENV)
    clock = FixedClock(datetime(2026, 6, 10, 6, 0, tzinfo=UTC))
    best: dict[str, Figure] = {}
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        folder = Path(tmp)
        feed = folder / "declines.csv"
        write_feed(feed, args.rows)
        size_mb = feed.stat().st_size / 1024 / 1024
        print(
            f"feed: {args.rows:,} rows, {size_mb:.1f} MB; database: {args.db}; load {os.getloadavg()[0]:.1f}"
        )
        records: list[dict[str, Any]] = []

        def run(name: str, engine: Engine) -> int:
            """One measure on a fresh database; returns the rows it wrote."""
            engine.dispose(close=False)  # a forked process opens connections of its own
            if name == FULL:
                result = import_declines(feed, settings=settings, engine=engine, clock=clock)
                if result.accepted != total_rows:
                    # A feed the import refuses would be measured as fast rejection, not as an import.
                    reasons = result.rejects_path.read_text(encoding="utf-8").splitlines()[1:4]
                    raise SystemExit(
                        f"NOT A MEASUREMENT: the import stored {result.accepted:,} of {total_rows:,} rows "
                        f"({result.rejected:,} rejected, {result.duplicates:,} duplicates); first rejects:\n"
                        + "\n".join(reasons)
                    )
                return result.accepted
            if name == BARE:
                if len(records) != total_rows:
                    raise SystemExit(
                        f"NOT A MEASUREMENT: {len(records):,} of {total_rows:,} feed rows passed the checks"
                    )
                bare_executemany(engine=engine, records=records)
                return len(records)
            naive_orm(engine=engine, records=records[:naive_rows])
            return min(naive_rows, len(records))

        # Rounds interleave the three measures, so a busy moment on a shared machine hits them alike.
        # Memory figures come from each measure's first run; the full import runs first of all, before
        # the baselines' rows are built (untimed, in this process), so its memory is its own.
        for _ in range(args.repeat):
            for name in (FULL, BARE, NAIVE):
                if name != FULL and not records:
                    records = checked_records(feed, settings, clock.now())
                with fresh_database(args.db, folder) as engine:
                    figure = measure(name, functools.partial(run, name, engine))
                first = best.get(name)
                if first is None or figure.seconds < first.seconds:
                    if first is not None:
                        figure.peak_mb, figure.growth_mb = first.peak_mb, first.growth_mb
                    best[name] = figure

    full, bare, naive = best[FULL], best[BARE], best[NAIVE]
    print(f"{'measure (fastest of ' + str(args.repeat) + ')':<52} {'rows/s':>10} {'seconds':>8} {'peak RSS MB':>12} {'growth MB':>10}")  # fmt: skip
    for figure in (full, bare, naive):
        label = f"{figure.name} ({figure.rows:,} rows)"
        print(f"{label:<52} {figure.rows_per_s:>10,.0f} {figure.seconds:>8.2f} {figure.peak_mb:>12.0f} {figure.growth_mb:>10.0f}")  # fmt: skip
    print(f"full import / naive ORM: {full.rows_per_s / naive.rows_per_s:.1f}x")
    print(f"full import / bare executemany: {full.rows_per_s / bare.rows_per_s:.2f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
