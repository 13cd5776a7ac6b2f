"""`import declines` on real databases: stored rows, rejects with line and reason, idempotence, card
numbers never kept, decline mapping and the purchase's entry into recycling, the CLI."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.cli import main
from recycle_engine.config import Settings, load_settings
from recycle_engine.demo.book import BookPlan, write_feeds
from recycle_engine.domain.cards import luhn_ok
from recycle_engine.errors import InputError
from recycle_engine.services.intake.feed_rows import FEED_COLUMNS, PAN_MARKER
from recycle_engine.services.intake.import_declines import ImportResult, import_declines
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Change, Customer, Decline, JobRun, Order, Subscription

TEST_PAN = "4111111111111111"  # the public Visa test number
FLEXFACTOR_ENV = {
    "FLEXFACTOR_APP_KEY": "key",
    "FLEXFACTOR_APP_SECRET": "secret",
    "FLEXFACTOR_MID": "mid",
    "FLEXFACTOR_SITE_ID": "site",
    "FLEXFACTOR_ENVIRONMENT_KEY": "env",
    "FLEXFACTOR_HMAC_SIGNING_KEY": "c2lnbmluZy1rZXk=",
}
SETTINGS_YAML = """\
timezone: America/New_York
database: {{url: "{db_url}"}}
gateways:
  - {{id: nmi-main, type: simulated}}
  - {{id: nmi-orphan, type: simulated}}
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
  - {{id: c1, products: [{{id: p1, gateway: nmi-main}}]}}
  - {{id: c-off, products: [{{id: p1, gateway: nmi-main}}], disable_recycle_billing: true}}
recycle_profiles:
  - id: default
    gateways: [nmi-main]
    reduction_type: percent
    minimum_price: "5.00"
    attempts:
      - {{attempt: 1, days: 2, reduction: "0"}}
      - {{attempt: 2, days: 3, reduction: "5"}}
      - {{attempt: 4, days: 4, reduction: "0"}}
    slots: {{"4-6": flexfactor-main}}
decline_mapping:
  - {{gateway: nmi-main, order_type: RECURRING, contains: "Do Not Honor", map_to: SOFT}}
  - {{gateway_type: simulated, order_type: ALL, contains: "stolen", map_to: HARD, display_message: "Card stolen"}}
"""


def a_decline(**overrides: str) -> dict[str, str]:
    """A feed row of a soft-declined rebill, each column as text."""
    row = {
        "transaction_id": "T-1", "declined_at": "2026-06-01T10:15:00-04:00", "order_id": "O-1",
        "order_type": "REBILL", "purchase_id": "P-1", "billing_cycle": "3", "billing_interval_days": "30",
        "completes_trial": "false", "recurring_product": "true", "shippable": "true", "campaign_id": "c1",
        "product_id": "p1", "gateway_id": "nmi-main", "amount": "49.99", "currency": "USD",
        "response_type": "SOFT_DECLINE", "response_code": "51", "response_text": "Insufficient funds",
        "avs_result": "Y", "cvv_result": "M", "cavv_result": "", "customer_id": "C-1",
        "email": "ana@example.com", "phone": "+1 305 555 0141", "first_name": "Ana", "last_name": "Diaz",
        "address1": "1 Main St", "address2": "", "city": "Miami", "state": "FL", "zip": "33131",
        "country": "US", "ip_address": "203.0.113.7", "card_token": "tok_abc", "card_bin": "411111",
        "card_last4": "1111", "card_exp_month": "7", "card_exp_year": "2028", "card_brand": "VISA",
        "card_type": "CREDIT",
    }  # fmt: skip
    row.update(overrides)
    return row


def a_new_sale(**overrides: str) -> dict[str, str]:
    fields = {"order_type": "NEW_SALE", "purchase_id": "", "billing_cycle": "1", "billing_interval_days": ""}
    return a_decline(**{**fields, **overrides})


def write_feed(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(FEED_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def rejects_of(result: ImportResult) -> dict[int, str]:
    with result.rejects_path.open(newline="", encoding="utf-8") as handle:
        return {int(row["line"]): row["reason"] for row in csv.DictReader(handle)}


def feed_settings(tmp_path: Path) -> Settings:
    """SETTINGS_YAML loaded (its database URL unused: tests pass their own engine)."""
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS_YAML.format(db_url=f"sqlite:///{tmp_path / 'unused.db'}"), encoding="utf-8")
    return load_settings(path, FLEXFACTOR_ENV)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return feed_settings(tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def run_import(tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock) -> Any:
    def run(rows: list[dict[str, str]], name: str = "declines.csv") -> ImportResult:
        feed = write_feed(tmp_path / name, rows)
        return import_declines(feed, settings=settings, engine=engine, clock=clock)

    return run


def subscription(engine: Engine, purchase_id: str) -> Subscription:
    with engine.connect() as conn:
        return conn.execute(select(Subscription).where(Subscription.id == purchase_id)).one()  # type: ignore[return-value]


def test_given_good_rows_when_imported_then_declines_orders_and_customers_are_stored(
    run_import: Any, engine: Engine
) -> None:
    # given
    rows = [a_decline(), a_new_sale(transaction_id="T-2", order_id="O-2", customer_id="C-2", amount="10")]
    # when
    result = run_import(rows)
    # then
    assert (result.accepted, result.rejected, result.duplicates) == (2, 0, 0)
    with engine.connect() as conn:
        decline = conn.execute(select(Decline).where(Decline.transaction_id == "T-1")).one()
        orders = {o.id: o for o in conn.execute(select(Order))}
        customers = {c.id: c for c in conn.execute(select(Customer))}
    assert decline.declined_at == datetime(2026, 6, 1, 14, 15, tzinfo=UTC)
    assert decline.utc_offset_minutes == -240
    assert (decline.amount_minor, decline.currency, decline.decline_type) == (4999, "USD", "SOFT")
    assert orders["O-2"].status == "DECLINED"
    assert (orders["O-2"].amount_minor, orders["O-2"].latest_transaction_id) == (1000, "T-2")
    assert orders["O-1"].gateway_id == "nmi-main"
    assert customers["C-1"].email == "ana@example.com"
    assert set(customers) == {"C-1", "C-2"}


def test_given_bad_rows_when_imported_then_each_is_rejected_with_its_line_and_reason(run_import: Any) -> None:
    # given: line 2 is good, lines 3-10 each break one rule
    rows = [
        a_decline(),
        a_decline(transaction_id="T-3", declined_at="2026-02-30T10:00:00Z"),
        a_decline(transaction_id="T-4", declined_at="2026-06-01T10:00:00"),
        a_decline(transaction_id="T-5", gateway_id="stripe-eu"),
        a_decline(transaction_id="T-6", currency="EURO"),
        a_decline(transaction_id="T-7", amount="49.999"),
        a_decline(transaction_id="T-8", response_type="DECLINED"),
        a_decline(transaction_id="T-9", purchase_id=""),
        a_decline(transaction_id="T-1", order_id="O-9"),
    ]
    # when
    result = run_import(rows)
    # then
    assert (result.accepted, result.rejected) == (1, 8)
    assert result.rejects_path.name == "declines.rejects.csv"
    assert rejects_of(result) == {
        3: "declined_at: not an ISO 8601 timestamp with offset",
        4: "declined_at: no UTC offset",
        5: "gateway_id: not a gateway in the settings",
        6: "currency: not a known ISO 4217 currency",
        7: "amount: more decimal places than USD has",
        8: "response_type: must be SOFT_DECLINE or HARD_DECLINE",
        9: "purchase_id: required for REBILL",
        10: "transaction_id: duplicate of line 2",
    }
    with result.rejects_path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == [*FEED_COLUMNS, "line", "reason"]


def test_given_a_huge_amount_a_nul_and_a_byte_that_is_not_utf8_when_imported_then_only_those_rows_are_rejected(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock
) -> None:
    # given: one chunk holding a good row, then one row per fault, then another good row
    rows = [
        a_decline(),
        a_decline(transaction_id="T-2", amount="99999999999999999999"),
        a_decline(transaction_id="T-3", city="Mia@@NUL@@mi"),
        a_decline(transaction_id="T-4", last_name="M@@BAD@@ller"),
        a_new_sale(transaction_id="T-5", order_id="O-5", customer_id="C-5"),
    ]
    feed = write_feed(tmp_path / "declines.csv", rows)
    feed.write_bytes(feed.read_bytes().replace(b"@@NUL@@", b"\x00").replace(b"@@BAD@@", b"\xfc"))
    # when: twice, the second time nothing new
    result = import_declines(feed, settings=settings, engine=engine, clock=clock)
    again = import_declines(feed, settings=settings, engine=engine, clock=clock)
    # then
    assert (result.accepted, result.rejected) == (2, 3)
    assert rejects_of(result) == {
        3: "amount: more than 9999999999.99 USD",
        4: "city: contains a NUL character",
        5: "last_name: not UTF-8 text (byte 0xFC)",
    }
    assert (again.accepted, again.rejected, again.duplicates) == (0, 3, 2)
    with engine.connect() as conn:
        assert set(conn.scalars(select(Decline.transaction_id))) == {"T-1", "T-5"}
        assert set(conn.scalars(select(Customer.id))) == {"C-1", "C-5"}


def test_given_a_byte_that_is_not_utf8_in_the_header_when_imported_then_the_file_is_refused(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock
) -> None:
    # given
    feed = write_feed(tmp_path / "feed.csv", [a_decline()])
    feed.write_bytes(feed.read_bytes().replace(b"currency", b"curr\xe9ncy", 1))
    # when / then
    with pytest.raises(InputError, match="the header is not UTF-8 text"):
        import_declines(feed, settings=settings, engine=engine, clock=clock)


def test_given_an_imported_feed_when_imported_again_then_nothing_changes(
    run_import: Any, engine: Engine, clock: FixedClock
) -> None:
    # given
    rows = [a_decline(), a_new_sale(transaction_id="T-2", order_id="O-2")]
    run_import(rows)
    with engine.connect() as conn:
        before = [
            conn.execute(select(model)).all() for model in (Decline, Order, Customer, Subscription, Change)
        ]
    clock.advance(days=1)
    # when
    result = run_import(rows)
    # then
    assert (result.accepted, result.rejected, result.duplicates) == (0, 0, 2)
    with engine.connect() as conn:
        after = [
            conn.execute(select(model)).all() for model in (Decline, Order, Customer, Subscription, Change)
        ]
        runs = conn.execute(
            select(JobRun.job, JobRun.status, JobRun.counts).order_by(JobRun.started_at)
        ).all()
    assert after == before
    assert [(job, status) for job, status, _ in runs] == [("import", "SUCCEEDED")] * 2
    assert json.loads(runs[1].counts) == {"accepted": 0, "rejected": 0, "duplicates": 2}


def test_given_a_card_number_in_a_token_and_in_free_text_when_imported_then_it_is_nowhere(
    tmp_path: Path,
    sqlite_url: str,
    settings: Settings,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given
    rows = [
        a_decline(),
        a_decline(transaction_id="T-2", card_token=TEST_PAN),
        a_decline(transaction_id="T-3", response_text=f"Declined card {TEST_PAN} by issuer"),
    ]
    feed = write_feed(tmp_path / "feed.csv", rows)
    engine = make_engine(sqlite_url)
    caplog.set_level(logging.DEBUG)
    # when
    result = import_declines(feed, settings=settings, engine=engine, clock=clock)
    engine.dispose()
    # then
    assert (result.accepted, result.rejected) == (1, 2)
    assert rejects_of(result) == {
        3: "card_token: looks like a full card number (removed)",
        4: "response_text: looks like a full card number (removed)",
    }
    rejects_text = result.rejects_path.read_text(encoding="utf-8")
    assert rejects_text.count(PAN_MARKER) == 2
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"T-1" in stored  # the good row is there, so the scan reads real data
    captured = capsys.readouterr()
    for text in (stored.decode("latin-1"), rejects_text, caplog.text, captured.out, captured.err):
        assert TEST_PAN not in text


def test_given_the_demo_book_when_imported_then_no_row_is_taken_for_a_card_number(
    tmp_path: Path, sqlite_url: str, clock: FixedClock
) -> None:
    # given: the demo's own generator, at the demo's size and seed
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "settings.yaml", FLEXFACTOR_ENV)
    plan = BookPlan(subscriptions=3000, nights=30, start=date(2026, 6, 1), seed=7)
    feeds = [path for _, path in write_feeds(plan, settings, tmp_path / "feed")]
    tokens = [
        row["card_token"] for path in feeds for row in csv.DictReader(path.read_text("utf-8").splitlines())
    ]
    luhn_runs = [t for t in tokens if any(len(r) >= 13 and luhn_ok(r) for r in re.findall(r"\d+", t))]
    assert luhn_runs  # tokens a Luhn-only rule would take for card numbers
    engine = make_engine(sqlite_url)
    # when
    results = [import_declines(feed, settings=settings, engine=engine, clock=clock) for feed in feeds]
    engine.dispose()
    # then
    assert sum(r.accepted for r in results) == len(tokens)
    assert [rejects_of(r) for r in results if r.rejected] == []


def test_given_a_hard_decline_mapped_to_soft_when_imported_then_the_purchase_enters_recycle_billing(
    run_import: Any, engine: Engine
) -> None:
    # given
    rows = [a_decline(response_type="HARD_DECLINE", response_text="05 - Do Not Honor")]
    # when
    run_import(rows)
    # then
    with engine.connect() as conn:
        decline = conn.execute(select(Decline)).one()
    assert decline.response_type == "HARD_DECLINE"
    assert decline.decline_type == "SOFT"
    assert decline.mapping_rule == "MID nmi-main RECURRING contains 'Do Not Honor' -> SOFT"
    assert subscription(engine, "P-1").status == "RECYCLE_BILLING"


def test_given_a_soft_decline_mapped_to_hard_when_imported_then_the_purchase_fails_with_hard_decline(
    run_import: Any, engine: Engine
) -> None:
    # when
    run_import([a_decline(response_text="Lost or stolen card")])
    # then
    with engine.connect() as conn:
        decline = conn.execute(select(Decline)).one()
    assert (decline.decline_type, decline.display_message) == ("HARD", "Card stolen")
    sub = subscription(engine, "P-1")
    assert (sub.status, sub.failure_cause, sub.next_attempt_on) == ("RECYCLE_FAILED", "HARD_DECLINE", None)


def test_given_a_soft_rebill_declined_late_in_the_evening_when_imported_then_attempt_1_counts_from_the_local_date(
    run_import: Any, engine: Engine
) -> None:
    # given: 22:30 in New York is already 2 June in UTC; the ladder counts from the merchant's 1 June
    rows = [a_decline(declined_at="2026-06-01T22:30:00-04:00")]
    # when
    run_import(rows)
    # then
    sub = subscription(engine, "P-1")
    assert sub.status == "RECYCLE_BILLING"
    assert (sub.next_attempt, sub.next_attempt_on) == (1, date(2026, 6, 3))
    assert (sub.recycle_last_attempt, sub.recycle_last_ran_on) == (0, date(2026, 6, 1))
    assert (sub.recycle_profile_id, sub.recycle_transaction_id, sub.recycle_declined_gateway_id) == (
        "default",
        "T-1",
        "nmi-main",
    )
    assert (sub.recycle_original_minor, sub.price_minor, sub.currency) == (4999, 4999, "USD")
    assert (sub.billing_cycle, sub.billing_interval_days, sub.order_id, sub.customer_id) == (
        3,
        30,
        "O-1",
        "C-1",
    )
    assert sub.has_payment_token is True
    assert sub.failure_cause is None


@pytest.mark.parametrize(
    ("overrides", "cause"),
    [
        ({"gateway_id": "nmi-orphan"}, "NO_PROFILE"),
        ({"response_type": "HARD_DECLINE"}, "HARD_DECLINE"),
        ({"campaign_id": "c-off"}, "RECYCLE_DISABLED"),
    ],
)
def test_given_a_rebill_that_cannot_recycle_when_imported_then_the_purchase_fails_with_its_cause(
    run_import: Any, engine: Engine, overrides: dict[str, str], cause: str
) -> None:
    # when
    run_import([a_decline(**overrides)])
    # then
    sub = subscription(engine, "P-1")
    assert (sub.status, sub.failure_cause, sub.next_attempt) == ("RECYCLE_FAILED", cause, None)
    # and: the CRM outbox carries the domain's status and the cause as a change of its own
    with engine.connect() as conn:
        changes = conn.execute(
            select(Change.field, Change.old_value, Change.new_value).where(Change.entity == "SUBSCRIPTION")
        ).all()
    assert sorted(tuple(c) for c in changes) == [
        ("failure_cause", None, cause),
        ("status", None, "RECYCLE_FAILED"),
    ]


def test_given_a_recycle_in_progress_when_an_older_decline_arrives_then_the_purchase_keeps_its_state(
    run_import: Any, engine: Engine
) -> None:
    # given
    run_import([a_decline(transaction_id="T-new", declined_at="2026-06-05T09:00:00-04:00")], "new.csv")
    # when
    run_import(
        [
            a_decline(
                transaction_id="T-old", declined_at="2026-06-01T09:00:00-04:00", response_type="HARD_DECLINE"
            )
        ],
        "old.csv",
    )
    # then
    sub = subscription(engine, "P-1")
    assert (sub.status, sub.recycle_transaction_id, sub.next_attempt_on) == (
        "RECYCLE_BILLING",
        "T-new",
        date(2026, 6, 7),
    )
    with engine.connect() as conn:
        order = conn.execute(select(Order)).one()
    assert order.latest_transaction_id == "T-new"


def test_given_a_newer_decline_of_a_recycling_purchase_when_imported_then_it_takes_over(
    run_import: Any, engine: Engine
) -> None:
    # given
    run_import([a_decline(transaction_id="T-1")], "first.csv")
    # when
    run_import([a_decline(transaction_id="T-2", order_id="O-2", billing_cycle="4", declined_at="2026-07-01T09:00:00-04:00", response_type="HARD_DECLINE")], "second.csv")  # fmt: skip
    # then
    sub = subscription(engine, "P-1")
    assert (sub.status, sub.failure_cause, sub.billing_cycle) == ("RECYCLE_FAILED", "HARD_DECLINE", 4)


def test_given_imported_declines_when_statuses_change_then_each_change_is_recorded(
    run_import: Any, engine: Engine, clock: FixedClock
) -> None:
    # when
    result = run_import([a_decline(), a_new_sale(transaction_id="T-2", order_id="O-2")])
    # then
    with engine.connect() as conn:
        changes = conn.execute(select(Change).order_by(Change.entity, Change.entity_id)).all()
    assert [(c.entity, c.entity_id, c.field, c.old_value, c.new_value) for c in changes] == [
        ("ORDER", "O-1", "status", None, "DECLINED"),
        ("ORDER", "O-2", "status", None, "DECLINED"),
        ("SUBSCRIPTION", "P-1", "status", None, "RECYCLE_BILLING"),
    ]
    assert {(c.reason, c.source, c.run_id, c.occurred_at) for c in changes} == {
        ("DECLINE_IMPORTED", "IMPORT", result.run_id, clock.now())
    }


def test_given_a_header_without_a_contract_column_when_imported_then_the_import_stops_naming_it(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock
) -> None:
    # given
    columns = [c for c in FEED_COLUMNS if c != "currency"]
    feed = write_feed(tmp_path / "feed.csv", [a_decline()], columns)
    # when / then
    with pytest.raises(InputError, match="lacks column\\(s\\): currency"):
        import_declines(feed, settings=settings, engine=engine, clock=clock)
    assert not (tmp_path / "feed.rejects.csv").exists()


def test_given_an_extra_column_when_imported_then_it_is_ignored_with_a_warning(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    feed = write_feed(tmp_path / "feed.csv", [{**a_decline(), "note": "vip"}], [*FEED_COLUMNS, "note"])
    # when
    result = import_declines(feed, settings=settings, engine=engine, clock=clock)
    # then
    assert result.accepted == 1
    assert any(getattr(r, "columns", None) == "note" for r in caplog.records if r.levelno == logging.WARNING)


def test_given_a_feed_when_imported_from_the_command_line_then_it_prints_counts_and_writes_rejects(
    tmp_path: Path, sqlite_url: str
) -> None:
    # given
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS_YAML.format(db_url=sqlite_url), encoding="utf-8")
    feed = write_feed(tmp_path / "feed.csv", [a_decline(), a_decline(transaction_id="T-2", currency="XXX")])
    runner = CliRunner(env=FLEXFACTOR_ENV)
    # when
    result = runner.invoke(main, ["import", "declines", str(feed), "--config", str(config)])
    # then
    assert result.exit_code == 0, result.output
    assert "accepted 1, rejected 1, duplicates 0 (already imported)" in result.output
    assert str(tmp_path / "feed.rejects.csv") in result.output
    assert (tmp_path / "feed.rejects.csv").exists()


def test_given_a_broken_header_when_imported_from_the_command_line_then_it_exits_non_zero(
    tmp_path: Path, sqlite_url: str
) -> None:
    # given
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS_YAML.format(db_url=sqlite_url), encoding="utf-8")
    feed = write_feed(tmp_path / "feed.csv", [a_decline()], [c for c in FEED_COLUMNS if c != "gateway_id"])
    # when
    result = CliRunner(env=FLEXFACTOR_ENV).invoke(
        main, ["import", "declines", str(feed), "--config", str(config)]
    )
    # then
    assert result.exit_code != 0
    assert "gateway_id" in result.output


def test_given_the_shipped_sample_when_imported_with_the_shipped_settings_then_only_its_bad_rows_are_rejected(
    tmp_path: Path, sqlite_url: str, clock: FixedClock
) -> None:
    # given
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "settings.yaml", FLEXFACTOR_ENV)
    feed = tmp_path / "sample.csv"
    feed.write_bytes((root / "recycle_engine" / "sample" / "declines-sample.csv").read_bytes())
    engine = make_engine(sqlite_url)
    # when
    result = import_declines(feed, settings=settings, engine=engine, clock=clock)
    engine.dispose()
    # then
    assert (result.accepted, result.rejected, result.duplicates) == (34, 6, 0)
    assert all(reason for reason in rejects_of(result).values())
