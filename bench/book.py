"""A realistic recycle book for benchmarks and query-plan tests: COPY on PostgreSQL, executemany on SQLite.

The book holds `subscriptions` purchases. Most are ACTIVE (or paused, cancelled, trial) with no recycle
state; a share is RECYCLE_BILLING, and of those exactly `due` are due tonight, split between ordinary
slots (attempts 1 and 2 on the declining gateway `nmi`) and FlexFactor slots (attempt 4 and the final
attempt on gateway `ff`). The others recycle later in the fortnight, wait on an open FlexFactor hand-off,
or have failed. Every recycling subscription has its decline (joined by `recycle_transaction_id`) and
its declined order; some settled subscriptions have an old decline too, and the hand-off history holds
closed hand-offs from past nights. Deterministic by seed. Customers are not written: submit never reads
them (the decline carries the customer's data).

    .venv/bin/python bench/book.py --url postgresql+psycopg://postgres@127.0.0.1:5432/re_book --subscriptions 200000
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Table, insert

from recycle_engine.services.reporting.rollups import refresh_rollups
from recycle_engine.storage.db import make_engine, upgrade
from recycle_engine.storage.models import Base

__all__ = [
    "NIGHT",
    "TIMEZONE",
    "Book",
    "BookShape",
    "build_book",
    "write_settings",
]

TIMEZONE: Final = "America/New_York"
# 02:00 in New York: the run's local date is 2026-06-10, the night the book is due.
NIGHT: Final = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)

# The ladder of the profile write_settings() writes: attempt -> days after the previous one.
# Attempt 3 is skipped; slots 4-6 and final go to FlexFactor gateway `ff`, 1-3 stay on `nmi`.
_DAYS: Final = {1: 1, 2: 1, 4: 2, 10: 3}
_NEXT: Final = {0: 1, 1: 2, 2: 4, 4: 10}  # last attempt run -> the attempt due next
_PROCESSOR_STAGES: Final = (0, 1)  # last attempts whose next attempt runs on the processor
_FLEXFACTOR_STAGES: Final = (2, 4)  # last attempts whose next attempt goes to FlexFactor
_PRICES: Final = (1999, 2499, 2999, 3900, 4999, 7900)
_TEXTS: Final = (
    ("51", "Insufficient funds"),
    ("05", "Processor declined"),
    ("61", "Activity limit exceeded"),
    ("54", "Expired card"),
)
_FIRST: Final = ("Maria", "James", "Aiko", "Omar", "Lena", "Tom", "Priya", "Noah", "Zoe", "Ivan")
_LAST: Final = ("Lopez", "Chen", "Sato", "Haddad", "Novak", "Berg", "Rao", "Smith", "Klein", "Petrov")
_BRANDS: Final = (("VISA", "411111"), ("MASTERCARD", "555555"), ("AMEX", "378282"), ("DISCOVER", "601111"))
_SETTLED: Final = ("ACTIVE",) * 16 + ("PAUSED", "CANCELLED", "CANCELLED", "TRIAL")
_CLOSED: Final = ("APPROVED", "DECLINED", "DECLINED", "EXPIRED")
_SQLITE_CHUNK: Final = 20_000


@dataclass(frozen=True)
class BookShape:
    """How big the book is and how it splits; shares are of the whole book."""

    subscriptions: int = 1_000_000
    due: int = 50_000  # due tonight
    flexfactor_share: float = 0.6  # of the due attempts, on a FlexFactor slot
    recycling_later_share: float = 0.10  # recycling, next attempt later in the fortnight
    waiting_share: float = 0.03  # recycling, waiting on an open FlexFactor hand-off
    failed_share: float = 0.02  # RECYCLE_FAILED
    old_decline_share: float = 0.15  # settled subscriptions with a decline from an earlier cycle
    closed_handoffs_share: float = 0.2  # closed hand-offs from past nights, per subscription
    seed: int = 7

    def __post_init__(self) -> None:
        recycling = self.recycling_later_share + self.waiting_share + self.failed_share
        if self.due > self.subscriptions * (1 - recycling):
            raise ValueError("more due attempts than the book has room for")


@dataclass
class Book:
    """What build_book wrote: rows per table and tonight's due attempts by kind."""

    shape: BookShape
    today: date
    due_flexfactor: int = 0
    due_processor: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def write_settings(
    path: Path,
    *,
    db_url: str,
    base_url: str,
    batch_size: int = 500,
    concurrency: int = 64,
    rate_limit_per_second: float = 10_000,
    read_timeout_s: float = 10,
) -> Path:
    """settings.yaml for the book: processor `nmi` (soft declines; last 4 0000 approves, 0002 hard
    declines), FlexFactor gateway `ff` at `base_url`, credentials from $FLEXFACTOR_* as in the tests."""
    text = f"""\
timezone: {TIMEZONE}
database: {{url: "{db_url}"}}
gateways:
  - id: nmi
    type: simulated
    simulated: {{default: SOFT_DECLINE, by_card_last4: {{"0000": APPROVED, "0002": HARD_DECLINE}}}}
  - id: ff
    type: flexfactor
    base_url: {base_url}
    app_key: ${{FLEXFACTOR_APP_KEY}}
    app_secret: ${{FLEXFACTOR_APP_SECRET}}
    mid: ${{FLEXFACTOR_MID}}
    site_id: ${{FLEXFACTOR_SITE_ID}}
    environment_key: ${{FLEXFACTOR_ENVIRONMENT_KEY}}
    hmac_signing_key: ${{FLEXFACTOR_HMAC_SIGNING_KEY}}
    expiry_days: 21
campaigns:
  - id: c1
    products: [{{id: p1, gateway: nmi}}]
recycle_profiles:
  - id: default
    gateways: [nmi]
    reduction_type: percent
    minimum_price: "5.00"
    bill_on_saturday: false
    hold_recycle_price: false
    attempts:
      - {{attempt: 1, days: 1, reduction: "0"}}
      - {{attempt: 2, days: 1, reduction: "5"}}
      - {{attempt: 3, days: 1, reduction: "0", skip: true}}
      - {{attempt: 4, days: 2, reduction: "5"}}
      - {{attempt: final, days: 3, reduction: "10"}}
    slots: {{"4-6": ff, "7-9": null, final: ff}}
batching: {{batch_size: {batch_size}, concurrency: {concurrency}, rate_limit_per_second: {rate_limit_per_second}}}
http: {{connect_timeout_s: 5, read_timeout_s: {read_timeout_s}, max_retries: 2, backoff_base_s: 0.05, backoff_max_s: 1}}
reports: {{output_dir: reports-out}}
"""
    path.write_text(text, encoding="utf-8")
    return path


# --- rows ------------------------------------------------------------------------------------


_SUB_COLUMNS: Final = (
    "id customer_id order_id campaign_id product_id status billing_cycle billing_interval_days shippable "
    "price_minor currency gateway_id next_bill_on has_payment_token recycle_profile_id "
    "recycle_transaction_id recycle_declined_gateway_id recycle_original_minor recycle_last_attempt "
    "recycle_last_ran_on next_attempt next_attempt_on open_handoff_id failure_cause updated_at"
).split()
_DECLINE_COLUMNS: Final = (
    "transaction_id declined_at utc_offset_minutes order_id order_type purchase_id billing_cycle "
    "billing_interval_days completes_trial recurring_product shippable campaign_id product_id gateway_id "
    "amount_minor currency response_type decline_type mapping_rule display_message response_code "
    "response_text avs_result cvv_result cavv_result customer_id email phone first_name last_name "
    "address1 address2 city state zip country ip_address card_token card_bin card_last4 card_exp_month "
    "card_exp_year card_brand card_type imported_at"
).split()
_ORDER_COLUMNS: Final = (
    "id order_type status customer_id campaign_id product_id purchase_id billing_cycle completes_trial "
    "recurring_product shippable gateway_id amount_minor currency ip_address latest_transaction_id "
    "has_payment_token updated_at"
).split()
_HANDOFF_COLUMNS: Final = (
    "id source order_id purchase_id transaction_id gateway_id declining_gateway_id slot attempt "
    "billing_cycle amount_minor currency idempotency_key request_body dedupe_key state created_at "
    "send_started_at submitted_at expires_at flexfactor_order_id vendor_status outcome_at outcome_source "
    "late_outcome last_error attention next_poll_at poll_count resend_count run_id claimed_by "
    "claimed_until updated_at"
).split()


class _Rows:
    """Rows of the four tables, generated together so that their keys agree."""

    def __init__(self, shape: BookShape, today: date, night: datetime) -> None:
        self.shape, self.today, self.night = shape, today, night
        self.rng = random.Random(shape.seed)
        self.subs: list[tuple[Any, ...]] = []
        self.declines: list[tuple[Any, ...]] = []
        self.orders: list[tuple[Any, ...]] = []
        self.handoffs: list[tuple[Any, ...]] = []
        self.due_flexfactor = 0
        self.due_processor = 0

    def generate(self) -> None:
        s, rng = self.shape, self.rng
        n = s.subscriptions
        due = set(rng.sample(range(n), s.due))
        # Thresholds on one draw per non-due subscription; each share is of the whole book.
        rest = n - s.due
        scale = n / rest if rest else 1.0
        later = s.recycling_later_share * scale
        waiting = later + s.waiting_share * scale
        failed = waiting + s.failed_share * scale
        old = failed + s.old_decline_share * scale
        for i in range(n):
            if i in due:
                self._due(i)
                continue
            draw = rng.random()
            if draw < later:
                self._recycling_later(i)
            elif draw < waiting:
                self._waiting(i)
            elif draw < failed:
                self._failed(i)
            else:
                self._settled(i, with_decline=draw < old)
        for k in range(int(n * s.closed_handoffs_share)):
            self._closed_handoff(k, rng.randrange(n))

    # -- one subscription of each kind

    def _due(self, i: int) -> None:
        rng = self.rng
        flexfactor = rng.random() < self.shape.flexfactor_share
        last = rng.choice(_FLEXFACTOR_STAGES if flexfactor else _PROCESSOR_STAGES)
        if flexfactor:
            self.due_flexfactor += 1
        else:
            self.due_processor += 1
        # Most are due exactly tonight; one in ten was due on a night that did not run.
        due_on = self.today - timedelta(days=1 if rng.random() < 0.1 else 0)
        self._recycling(i, last=last, due_on=due_on)

    def _recycling_later(self, i: int) -> None:
        last = self.rng.choice(_PROCESSOR_STAGES + _FLEXFACTOR_STAGES)
        self._recycling(i, last=last, due_on=self.today + timedelta(days=self.rng.randint(1, 14)))

    def _recycling(self, i: int, *, last: int, due_on: date) -> None:
        nxt = _NEXT[last]
        ran_on = due_on - timedelta(days=_DAYS[nxt])
        price = self.rng.choice(_PRICES)
        self._decline(i, price, declined_on=ran_on if last == 0 else ran_on - timedelta(days=2))
        self.subs.append(
            self._sub(
                i,
                "RECYCLE_BILLING",
                price,
                recycling=True,
                last=last,
                ran_on=ran_on,
                next_attempt=nxt,
                next_on=due_on,
            )
        )

    def _waiting(self, i: int) -> None:
        price = self.rng.choice(_PRICES)
        ran_on = self.today - timedelta(days=self.rng.randint(1, 18))
        self._decline(i, price, declined_on=ran_on - timedelta(days=4))
        handoff_id = f"ho-open-{i}"
        self.subs.append(
            self._sub(
                i, "RECYCLE_BILLING", price, recycling=True, last=4, ran_on=ran_on, open_handoff=handoff_id
            )
        )
        created = datetime.combine(ran_on, self.night.timetz())
        self.handoffs.append(
            self._handoff(
                handoff_id,
                i,
                price,
                state="SUBMITTED",
                created=created,
                attempt=4,
                poll_at=created + timedelta(days=1),
            )
        )

    def _failed(self, i: int) -> None:
        price = self.rng.choice(_PRICES)
        ran_on = self.today - timedelta(days=self.rng.randint(1, 60))
        self._decline(i, price, declined_on=ran_on - timedelta(days=7))
        self.subs.append(
            self._sub(
                i,
                "RECYCLE_FAILED",
                price,
                recycling=True,
                last=10,
                ran_on=ran_on,
                failure="ALL_ATTEMPTS_DECLINED",
            )
        )

    def _settled(self, i: int, *, with_decline: bool) -> None:
        price = self.rng.choice(_PRICES)
        if with_decline:
            self._decline(i, price, declined_on=self.today - timedelta(days=self.rng.randint(20, 300)))
        status = self.rng.choice(_SETTLED)
        self.subs.append(self._sub(i, status, price, recycling=False))

    def _closed_handoff(self, k: int, i: int) -> None:
        created = self.night - timedelta(days=self.rng.randint(22, 400), minutes=self.rng.randrange(600))
        state = self.rng.choice(_CLOSED)
        self.handoffs.append(
            self._handoff(
                f"ho-old-{k}", i, self.rng.choice(_PRICES), state=state, created=created, attempt=10
            )
        )

    # -- row builders

    def _sub(
        self,
        i: int,
        status: str,
        price: int,
        *,
        recycling: bool,
        last: int = 0,
        ran_on: date | None = None,
        next_attempt: int | None = None,
        next_on: date | None = None,
        open_handoff: str | None = None,
        failure: str | None = None,
    ) -> tuple[Any, ...]:
        bill_on = None if recycling else self.today + timedelta(days=i % 30)
        return (
            f"sub-{i}",
            f"cust-{i}",
            f"ord-{i}",
            "c1",
            "p1",
            status,
            2 + i % 9,
            30,
            i % 3 != 0,
            price,
            "USD",
            "nmi",
            bill_on,
            True,
            "default" if recycling else None,
            f"txn-{i}" if recycling else None,
            "nmi" if recycling else None,
            price if recycling else None,
            last,
            ran_on,
            next_attempt,
            next_on,
            open_handoff,
            failure,
            self.night - timedelta(days=1),
        )

    def _decline(self, i: int, price: int, *, declined_on: date) -> None:
        rng = self.rng
        code, text = rng.choice(_TEXTS)
        brand, bin6 = rng.choice(_BRANDS)
        declined_at = datetime.combine(declined_on, self.night.timetz()) + timedelta(
            minutes=rng.randrange(1200)
        )
        last4 = f"{rng.randrange(10000):04d}"
        self.declines.append(
            (
                f"txn-{i}",
                declined_at,
                -240,
                f"ord-{i}",
                "REBILL",
                f"sub-{i}",
                2 + i % 9,
                30,
                False,
                True,
                i % 3 != 0,
                "c1",
                "p1",
                "nmi",
                price,
                "USD",
                "SOFT_DECLINE",
                "SOFT",
                None,
                None,
                code,
                text,
                "Y",
                "M",
                "",
                f"cust-{i}",
                f"customer{i}@example.com",
                f"+1555{i % 10_000_000:07d}",
                rng.choice(_FIRST),
                rng.choice(_LAST),
                f"{1 + i % 9999} Main St",
                "",
                "Albany",
                "NY",
                "12207",
                "US",
                f"203.0.{i % 256}.{(i // 256) % 256}",
                f"tok_{i:012d}",
                bin6,
                last4,
                1 + i % 12,
                2030,
                brand,
                "CREDIT",
                declined_at + timedelta(hours=1),
            )
        )
        self.orders.append(
            (
                f"ord-{i}",
                "REBILL",
                "DECLINED",
                f"cust-{i}",
                "c1",
                "p1",
                f"sub-{i}",
                2 + i % 9,
                False,
                True,
                i % 3 != 0,
                "nmi",
                price,
                "USD",
                f"203.0.{i % 256}.{(i // 256) % 256}",
                f"txn-{i}",
                True,
                declined_at + timedelta(hours=1),
            )
        )

    def _handoff(
        self,
        handoff_id: str,
        i: int,
        price: int,
        *,
        state: str,
        created: datetime,
        attempt: int,
        poll_at: datetime | None = None,
    ) -> tuple[Any, ...]:
        is_open = state == "SUBMITTED"
        outcome_at = None if is_open else created + timedelta(days=self.rng.randint(0, 21))
        key = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return (
            handoff_id,
            "RECYCLE",
            f"ord-{i}",
            f"sub-{i}",
            f"txn-{i}",
            "ff",
            "nmi",
            "4-6" if attempt == 4 else "final",
            attempt,
            2 + i % 9,
            price,
            "USD",
            key,
            "{}",
            f"RECYCLE:{handoff_id}",  # history: one per row, whatever the attempt
            state,
            created,
            created,
            created,
            created + timedelta(days=21),
            f"ffo-{handoff_id}",
            "Submitted" if is_open else state.title(),
            outcome_at,
            None if is_open else "POLL",
            False,
            None,
            None,
            poll_at,
            0 if is_open else 2,
            0,
            None,
            None,
            None,
            outcome_at or created,
        )


# --- writing ---------------------------------------------------------------------------------


def build_book(url: str, shape: BookShape, *, night: datetime = NIGHT, migrate: bool = True) -> Book:
    """Write a fresh book into the (empty) database at `url`; `migrate` runs `alembic upgrade head` first.

    PostgreSQL gets COPY and then VACUUM ANALYZE, so the planner sees the real sizes."""
    started = time.monotonic()
    if migrate:
        upgrade(url)
    today = night.astimezone(ZoneInfo(TIMEZONE)).date()
    rows = _Rows(shape, today, night)
    rows.generate()
    tables: Sequence[tuple[Table, Sequence[str], list[tuple[Any, ...]]]] = (
        (Base.metadata.tables["subscriptions"], _SUB_COLUMNS, rows.subs),
        (Base.metadata.tables["declines"], _DECLINE_COLUMNS, rows.declines),
        (Base.metadata.tables["orders"], _ORDER_COLUMNS, rows.orders),
        (Base.metadata.tables["handoffs"], _HANDOFF_COLUMNS, rows.handoffs),
    )
    engine = make_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            _copy_all(engine, tables)
        else:
            with engine.begin() as conn:
                for table, columns, data in tables:
                    _sqlite_insert(conn, table, columns, data)
        # A running system keeps the report rollups built: build them as `db rebuild-rollups` does, so
        # that the first run on the book recomputes only the days it touches.
        refresh_rollups(engine, ZoneInfo(TIMEZONE), now=night, rebuild=True)
    finally:
        engine.dispose()
    book = Book(shape, today, rows.due_flexfactor, rows.due_processor)
    book.rows = {table.name: len(data) for table, _columns, data in tables}
    book.seconds = time.monotonic() - started
    return book


def _copy_all(engine: Engine, tables: Iterable[tuple[Table, Sequence[str], list[tuple[Any, ...]]]]) -> None:
    raw = engine.raw_connection()
    try:
        pg: Any = raw.driver_connection
        with pg.cursor() as cur:
            for table, columns, data in tables:
                with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
        pg.commit()
        pg.autocommit = True  # VACUUM refuses to run inside a transaction
        for table, _columns, _data in tables:
            pg.execute(f"VACUUM ANALYZE {table.name}")
        pg.autocommit = False
    finally:
        raw.close()


def _sqlite_insert(
    conn: Connection, table: Table, columns: Sequence[str], data: list[tuple[Any, ...]]
) -> None:
    """executemany of compiled INSERTs, values passed through each column type's bind processor."""
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
    order = compiled.positiontup or []
    index = {name: k for k, name in enumerate(columns)}
    processors: list[Callable[[Any], Any] | None] = [
        compiled.binds[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for name in order
    ]
    picks = [index[name] for name in order]

    def converted(chunk: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        for row in chunk:
            yield tuple(
                row[k] if p is None or row[k] is None else p(row[k])
                for k, p in zip(picks, processors, strict=True)
            )

    for start in range(0, len(data), _SQLITE_CHUNK):
        conn.exec_driver_sql(compiled.string, list(converted(data[start : start + _SQLITE_CHUNK])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="an empty database (SQLAlchemy URL)")
    parser.add_argument("--subscriptions", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    book = build_book(args.url, BookShape(subscriptions=args.subscriptions, due=args.due, seed=args.seed))
    print(
        f"book for {book.today}: {book.rows} in {book.seconds:.1f} s; due tonight "
        f"{book.due_flexfactor:,} on FlexFactor slots, {book.due_processor:,} on processor slots"
    )


if __name__ == "__main__":
    main()
