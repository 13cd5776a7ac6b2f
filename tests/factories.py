"""Test data: declines, recycling subscriptions and settings files, each overridable per test."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from recycle_engine.config import Settings, load_settings
from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64, SandboxConfig
from recycle_engine.storage.models import Customer, Decline, Handoff, Order, Subscription
from recycle_engine.storage.outcome_queue import OUTCOME_STATES, queued
from recycle_engine.storage.upsert import insert_ignore

SANDBOX_ENV = {
    "FLEXFACTOR_APP_KEY": SandboxConfig.app_key,
    "FLEXFACTOR_APP_SECRET": SandboxConfig.app_secret,
    "FLEXFACTOR_MID": SandboxConfig.mid,
    "FLEXFACTOR_SITE_ID": SandboxConfig.site_id,
    "FLEXFACTOR_ENVIRONMENT_KEY": "sandbox-env-key",
    "FLEXFACTOR_HMAC_SIGNING_KEY": SANDBOX_SIGNING_KEY_B64,
    # The tests' sandboxes stand at the night's logical time: FlexFactor's window counts from it.
    "RECYCLE_ENGINE_SEND_CLOCK": "at",
    "NMI_SECURITY_KEY": "nmi-test-key-5b0e2d71c9",
}
NMI_TEST_KEY = SANDBOX_ENV["NMI_SECURITY_KEY"]


def a_settings_file(
    tmp_path: Path,
    *,
    db_url: str,
    base_url: str = "http://127.0.0.1:9/v1",
    attempts: str | None = None,
    slots: str = '{"4-6": ff, "7-9": null, final: ff}',
    simulated_default: str = "SOFT_DECLINE",
    batch_size: int = 50,
    concurrency: int = 8,
    extra: str = "",
    nmi_url: str | None = None,
    nmi_read_timeout_s: float = 2.0,
) -> Path:
    """A small settings.yaml for one simulated gateway and one FlexFactor gateway at `base_url`.
    With `nmi_url`, gateway `nmi` is a real NMI gateway there (the bundled fake) instead."""
    attempts = attempts or textwrap.dedent(
        """\
        - {attempt: 1, days: 1, reduction: "0"}
        - {attempt: 2, days: 1, reduction: "5"}
        - {attempt: 3, days: 1, reduction: "0", skip: true}
        - {attempt: 4, days: 2, reduction: "5"}
        - {attempt: final, days: 3, reduction: "10"}
        """
    )
    ordinary = (
        f"""\
    type: nmi
    nmi:
      security_key: ${{NMI_SECURITY_KEY}}
      base_url: "{nmi_url}"
      read_timeout_s: {nmi_read_timeout_s}"""
        if nmi_url
        else f"""\
    type: simulated
    simulated: {{default: {simulated_default}, by_card_last4: {{"0000": APPROVED, "0002": HARD_DECLINE}}}}"""
    )
    text = f"""\
timezone: America/New_York
database: {{url: "{db_url}"}}
gateways:
  - id: nmi
{ordinary}
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
{textwrap.indent(attempts, "      ")}
    slots: {slots}
batching: {{batch_size: {batch_size}, concurrency: {concurrency}, rate_limit_per_second: 10000}}
# Generous timeouts: a loaded CI machine must not turn a slow answer into a test failure.
http: {{connect_timeout_s: 5, read_timeout_s: 15, max_retries: 2, backoff_base_s: 0.01, backoff_max_s: 0.05}}
reports: {{output_dir: reports-out}}
{extra}
"""
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_test_settings(path: Path) -> Settings:
    return load_settings(path, env=SANDBOX_ENV)


def a_decline(**overrides: Any) -> dict[str, Any]:
    """A soft-declined rebill of 49.99 USD on gateway nmi, as the import stores it."""
    row: dict[str, Any] = {
        "transaction_id": "txn-1",
        "declined_at": datetime(2026, 6, 1, 14, 30, tzinfo=UTC),
        "utc_offset_minutes": -240,
        "order_id": "ord-1",
        "order_type": "REBILL",
        "purchase_id": "sub-1",
        "billing_cycle": 3,
        "billing_interval_days": 30,
        "completes_trial": False,
        "recurring_product": True,
        "shippable": True,
        "campaign_id": "c1",
        "product_id": "p1",
        "gateway_id": "nmi",
        "amount_minor": 4999,
        "currency": "USD",
        "response_type": "SOFT_DECLINE",
        "decline_type": "SOFT",
        "mapping_rule": None,
        "display_message": None,
        "response_code": "51",
        "response_text": "Insufficient funds",
        "avs_result": "Y",
        "cvv_result": "",
        "cavv_result": "",
        "customer_id": "cust-1",
        "email": "jo@example.com",
        "phone": "+15551234567",
        "first_name": "Jo",
        "last_name": "Doe",
        "address1": "1 Main St",
        "address2": "",
        "city": "Albany",
        "state": "NY",
        "zip": "12207",
        "country": "US",
        "ip_address": "203.0.113.9",
        "card_token": "tok_abc123",
        "card_bin": "400000",
        "card_last4": "3184",
        "card_exp_month": 9,
        "card_exp_year": 2029,
        "card_brand": "VISA",
        "card_type": "CREDIT",
        "imported_at": datetime(2026, 6, 1, 15, 0, tzinfo=UTC),
    }
    row.update(overrides)
    return row


def insert_recycling(
    engine: Engine,
    decline: dict[str, Any],
    *,
    last_attempt: int = 0,
    last_ran_on: date = date(2026, 6, 1),
    next_attempt: int = 1,
    next_attempt_on: date = date(2026, 6, 2),
) -> None:
    """A decline, its order, customer and a subscription in RECYCLE_BILLING on profile `default`."""
    now = decline["imported_at"]
    with engine.begin() as conn:
        conn.execute(insert(Decline).values(**decline))
        customer = {"id": decline["customer_id"], "email": decline["email"], "updated_at": now}
        insert_ignore(conn, Customer, [customer], ["id"])
        conn.execute(
            insert(Order).values(
                id=decline["order_id"],
                order_type=decline["order_type"],
                status="DECLINED",
                customer_id=decline["customer_id"],
                campaign_id=decline["campaign_id"],
                product_id=decline["product_id"],
                purchase_id=decline["purchase_id"],
                billing_cycle=decline["billing_cycle"],
                completes_trial=decline["completes_trial"],
                recurring_product=decline["recurring_product"],
                shippable=decline["shippable"],
                gateway_id=decline["gateway_id"],
                amount_minor=decline["amount_minor"],
                currency=decline["currency"],
                ip_address=decline["ip_address"],
                latest_transaction_id=decline["transaction_id"],
                updated_at=now,
            )
        )
        if decline["purchase_id"]:
            conn.execute(
                insert(Subscription).values(
                    id=decline["purchase_id"],
                    customer_id=decline["customer_id"],
                    order_id=decline["order_id"],
                    campaign_id=decline["campaign_id"],
                    product_id=decline["product_id"],
                    status="RECYCLE_BILLING",
                    billing_cycle=decline["billing_cycle"],
                    billing_interval_days=decline["billing_interval_days"],
                    shippable=decline["shippable"],
                    price_minor=decline["amount_minor"],
                    currency=decline["currency"],
                    gateway_id=decline["gateway_id"],
                    recycle_profile_id="default",
                    recycle_transaction_id=decline["transaction_id"],
                    recycle_declined_gateway_id=decline["gateway_id"],
                    recycle_original_minor=decline["amount_minor"],
                    recycle_last_attempt=last_attempt,
                    recycle_last_ran_on=last_ran_on,
                    next_attempt=next_attempt,
                    next_attempt_on=next_attempt_on,
                    updated_at=now,
                )
            )


def insert_recycling_many(
    engine: Engine,
    n: int,
    *,
    due_on: date,
    attempt: int = 4,
    last_ran_on: date = date(2026, 6, 8),
    prefix: str = "",
) -> list[str]:
    """`n` subscriptions whose attempt `attempt` is due on `due_on`, written in bulk; returns their ids."""
    declines, orders, subs = [], [], []
    for i in range(n):
        d = a_decline(
            transaction_id=f"{prefix}txn-{i}",
            order_id=f"{prefix}ord-{i}",
            purchase_id=f"{prefix}sub-{i}",
            customer_id=f"{prefix}cust-{i}",
            card_last4=f"{i % 10000:04d}" if i % 10000 not in (0, 2) else "3184",
        )
        declines.append(d)
        orders.append(
            {
                "id": d["order_id"],
                "order_type": "REBILL",
                "status": "DECLINED",
                "customer_id": d["customer_id"],
                "campaign_id": "c1",
                "product_id": "p1",
                "purchase_id": d["purchase_id"],
                "billing_cycle": d["billing_cycle"],
                "completes_trial": False,
                "recurring_product": True,
                "shippable": True,
                "gateway_id": "nmi",
                "amount_minor": d["amount_minor"],
                "currency": "USD",
                "ip_address": d["ip_address"],
                "latest_transaction_id": d["transaction_id"],
                "has_payment_token": True,
                "updated_at": d["imported_at"],
            }
        )
        subs.append(
            {
                "id": d["purchase_id"],
                "customer_id": d["customer_id"],
                "order_id": d["order_id"],
                "campaign_id": "c1",
                "product_id": "p1",
                "status": "RECYCLE_BILLING",
                "billing_cycle": d["billing_cycle"],
                "billing_interval_days": 30,
                "shippable": True,
                "price_minor": d["amount_minor"],
                "currency": "USD",
                "gateway_id": "nmi",
                "has_payment_token": True,
                "recycle_profile_id": "default",
                "recycle_transaction_id": d["transaction_id"],
                "recycle_declined_gateway_id": "nmi",
                "recycle_original_minor": d["amount_minor"],
                "recycle_last_attempt": attempt - 1 if attempt != 4 else 2,
                "recycle_last_ran_on": last_ran_on,
                "next_attempt": attempt,
                "next_attempt_on": due_on,
                "updated_at": d["imported_at"],
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(Decline), declines)
        conn.execute(insert(Order), orders)
        conn.execute(insert(Subscription), subs)
    return [s["id"] for s in subs]


def outcome_applied(engine: Engine, handoff_id: str) -> bool:
    """True once the hand-off's final outcome has reached its order and purchase (no longer queued)."""
    with engine.connect() as conn:
        state = conn.execute(select(Handoff.state).where(Handoff.id == handoff_id)).scalar_one()
        return state in OUTCOME_STATES and not queued(conn, [handoff_id])
