"""Shared pieces of the CRM tests: generated declines feed rows, settings with a crm: section, the fake."""

from __future__ import annotations

import csv
import random
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from recycle_engine.config import Settings, load_settings
from recycle_engine.services.intake.feed_rows import FEED_COLUMNS
from tests.factories import SANDBOX_ENV, a_settings_file

CRM_LOGIN = "crm-test-user"
CRM_PASSWORD = "crm-test-password-7f3a"
CRM_ENV = {**SANDBOX_ENV, "CRM_LOGIN_ID": CRM_LOGIN, "CRM_PASSWORD": CRM_PASSWORD}
TEST_PAN = "4111111111111111"  # the public Visa test number


def crm_settings_file(
    tmp_path: Path,
    *,
    db_url: str,
    crm_url: str,
    per_page: int = 200,
    max_retries: int = 2,
    read_timeout_s: float = 10.0,
    lookback_minutes: int = 60,
) -> Path:
    crm = f"""\
crm:
  type: konnektive
  base_url: "{crm_url}"
  login_id: ${{CRM_LOGIN_ID}}
  password: ${{CRM_PASSWORD}}
  results_per_page: {per_page}
  rate_limit_per_second: 10000
  connect_timeout_s: 5
  read_timeout_s: {read_timeout_s}
  max_retries: {max_retries}
  backoff_base_s: 0.01
  backoff_max_s: 0.02
  pull: {{lookback_minutes: {lookback_minutes}, settle_minutes: 5}}
"""
    return a_settings_file(tmp_path, db_url=db_url, extra=crm)


def crm_settings(path: Path) -> Settings:
    return load_settings(path, env=CRM_ENV)


def feed_rows(
    n: int, start: datetime, *, seed: int = 7, span: timedelta = timedelta(hours=20)
) -> list[dict[str, str]]:
    """`n` declines feed rows spread over `span` from `start`, in UTC: rebills (some completing a trial),
    new sales, soft and hard, a few currencies; every row valid for the settings of a_settings_file."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        when = start + span * (i / max(n, 1)) + timedelta(seconds=rng.randrange(0, 30))
        kind = rng.choice(("REBILL", "REBILL", "REBILL", "NEW_SALE"))
        cycle = rng.randrange(2, 7) if kind == "REBILL" else 1
        currency, amount = rng.choice((("USD", "49.99"), ("USD", "19.95"), ("EUR", "29.00"), ("JPY", "3200")))
        rows.append(
            {
                "transaction_id": f"T-{seed}-{i:07d}",
                "declined_at": when.astimezone(UTC).replace(microsecond=0).isoformat(),
                "order_id": f"O-{seed}-{i:07d}",
                "order_type": kind,
                "purchase_id": f"P-{seed}-{i:07d}" if kind == "REBILL" or rng.random() < 0.5 else "",
                "billing_cycle": str(cycle),
                "billing_interval_days": "30",
                "completes_trial": "true" if cycle == 2 and rng.random() < 0.5 else "false",
                "recurring_product": "",
                "shippable": rng.choice(("true", "false")),
                "campaign_id": "c1",
                "product_id": "p1",
                "gateway_id": "nmi",
                "amount": amount,
                "currency": currency,
                "response_type": rng.choice(("SOFT_DECLINE", "SOFT_DECLINE", "HARD_DECLINE")),
                "response_code": rng.choice(("05", "51", "61")),
                "response_text": rng.choice(
                    ("Do Not Honor", "Insufficient funds", "Activity limit exceeded")
                ),
                "avs_result": "Y",
                "cvv_result": "M",
                "cavv_result": "",
                "customer_id": f"C-{seed}-{i % 997:05d}",
                "email": f"buyer{i}@example.com",
                "phone": "+1 305 555 0141",
                "first_name": "Maria",
                "last_name": "López",
                "address1": "1200 Brickell Ave",
                "address2": "",
                "city": "Miami",
                "state": "FL",
                "zip": "33131",
                "country": "US",
                "ip_address": "203.0.113.11",
                "card_token": f"tok_{i:012d}",
                "card_bin": "555555",
                "card_last4": f"{i % 10000:04d}",
                "card_exp_month": str(rng.randrange(1, 13)),
                "card_exp_year": "2030",
                "card_brand": "MASTERCARD",
                "card_type": rng.choice(("CREDIT", "DEBIT")),
            }
        )
        rows[-1]["recurring_product"] = "true" if rows[-1]["purchase_id"] else "false"
        if not rows[-1]["purchase_id"]:
            rows[-1]["billing_interval_days"] = ""  # a CRM order without a purchase has no interval
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(FEED_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


_VOLATILE = {"imported_at", "created_at", "updated_at", "run_id", "changed_at"}


def book(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """What an import writes, table by table, without the columns that name the run or its time."""
    found: dict[str, list[tuple[object, ...]]] = {}
    with engine.connect() as conn:
        for table in ("declines", "customers", "orders", "subscriptions", "changes"):
            columns = [
                c for c in conn.execute(text(f"SELECT * FROM {table} LIMIT 0")).keys() if c not in _VOLATILE
            ]
            if table == "changes":
                columns = [c for c in columns if c != "id"]
            rows = conn.execute(text(f"SELECT {', '.join(columns)} FROM {table}")).all()
            found[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return found


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def every_text(engine: Engine) -> Iterator[str]:
    """Every value of every table, as text (to look for what must never be stored)."""
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(text(_TABLES[engine.dialect.name])).all()]
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).all():
                yield from (str(v) for v in row)


_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
}


class Meeting:
    """An `on_arrival` hook for the CRM fake: holds each call that `group_of` puts in a group (with the
    group's size) until every call of the group has arrived, so only calls a client has in flight at
    once can meet. A call that waits `timeout_s` in vain goes on, its group is noted in `missed`, and
    later calls no longer wait (a client calling one at a time fails the test once, not per call)."""

    def __init__(
        self,
        group_of: Callable[[str, Mapping[str, str]], tuple[Hashable, int] | None],
        timeout_s: float = 10.0,
    ) -> None:
        self.group_of = group_of
        self.timeout_s = timeout_s
        self.met: set[Hashable] = set()
        self.missed: list[Hashable] = []
        self._arrived: Counter[Hashable] = Counter()
        self._changed = threading.Condition()

    def __call__(self, endpoint: str, params: Mapping[str, str]) -> None:
        found = self.group_of(endpoint, params)
        if found is None:
            return
        group, size = found
        with self._changed:
            self._arrived[group] += 1
            self._changed.notify_all()
            if self._changed.wait_for(
                lambda: self._arrived[group] >= size or bool(self.missed), timeout=self.timeout_s
            ):
                if self._arrived[group] >= size:
                    self.met.add(group)
            else:
                self.missed.append(group)
                self._changed.notify_all()
