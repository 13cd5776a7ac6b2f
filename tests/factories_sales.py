"""Test data for reruns and cascades: declined initial sales, their settings, and the sandbox around them."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, func, insert, select

from recycle_engine.config import Settings, load_settings
from recycle_engine.sandbox.server import RunningSandbox
from recycle_engine.storage.models import Customer, Decline, Handoff, Order, Subscription
from recycle_engine.storage.upsert import insert_ignore
from tests.factories import SANDBOX_ENV, a_decline

# 02:00 in New York on 2026-06-10.
NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
API_KEY = "test-cascade-key-0123456789"
SALES_ENV = {**SANDBOX_ENV, "CASCADE_API_KEY": API_KEY}

_FLEXFACTOR_KEYS = """\
    app_key: ${FLEXFACTOR_APP_KEY}
    app_secret: ${FLEXFACTOR_APP_SECRET}
    mid: ${FLEXFACTOR_MID}
    site_id: ${FLEXFACTOR_SITE_ID}
    environment_key: ${FLEXFACTOR_ENVIRONMENT_KEY}
    hmac_signing_key: ${FLEXFACTOR_HMAC_SIGNING_KEY}"""


def a_sales_settings_file(
    tmp_path: Path,
    *,
    db_url: str,
    base_url: str,
    cascade_all: bool = False,
    api_key: bool = True,
    decline_mapping: str = "[]",
) -> Path:
    """Gateways nmi (in ATRI profile atri-1, whose cascade profile casc-1 leads to FlexFactor gateway ff),
    nmi-2 (no cascade path), ff and ff-all (FlexFactor; ff-all sets cascade_all if asked)."""
    serve = "serve:\n  api_key: ${CASCADE_API_KEY}" if api_key else ""
    text = f"""\
timezone: America/New_York
database: {{url: "{db_url}"}}
gateways:
  - {{id: nmi, type: simulated}}
  - {{id: nmi-2, type: simulated}}
  - id: ff
    type: flexfactor
    base_url: {base_url}
{_FLEXFACTOR_KEYS}
    expiry_days: 21
  - id: ff-all
    type: flexfactor
    base_url: {base_url}
{_FLEXFACTOR_KEYS}
    expiry_days: 14
    cascade_all: {str(cascade_all).lower()}
cascade_profiles: [{{id: casc-1, gateways: [nmi-2, ff]}}]
atri_profiles: [{{id: atri-1, gateways: [nmi], cascade_profile: casc-1}}]
decline_mapping: {decline_mapping}
batching: {{batch_size: 50, concurrency: 4, rate_limit_per_second: 10000}}
http: {{connect_timeout_s: 5, read_timeout_s: 15, max_retries: 1, backoff_base_s: 0.01, backoff_max_s: 0.02}}
reports: {{output_dir: reports-out}}
{serve}
"""
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_sales_settings(path: Path) -> Settings:
    return load_settings(path, env=SALES_ENV)


def a_declined_sale(**overrides: Any) -> dict[str, Any]:
    """A soft-declined initial sale (cycle 1) of 49.99 USD on nmi, recurring and shippable, card 3184."""
    row = a_decline(
        transaction_id="txn-s1",
        order_id="ord-s1",
        order_type="NEW_SALE",
        purchase_id="sub-s1",
        billing_cycle=1,
        response_code="05",
        response_text="Do Not Honor",
    )
    row.update(overrides)
    return row


def insert_declined_sale(engine: Engine, decline: dict[str, Any], *, status: str = "DECLINED") -> None:
    """The decline, its customer, its order (`status`) and, for a recurring product, its purchase."""
    now = decline["imported_at"]
    with engine.begin() as conn:
        conn.execute(insert(Decline).values(**decline))
        customer = {"id": decline["customer_id"], "email": decline["email"], "updated_at": now}
        insert_ignore(conn, Customer, [customer], ["id"])
        conn.execute(
            insert(Order).values(
                id=decline["order_id"],
                order_type=decline["order_type"],
                status=status,
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
        if decline["purchase_id"] and decline["recurring_product"]:
            conn.execute(
                insert(Subscription).values(
                    id=decline["purchase_id"],
                    customer_id=decline["customer_id"],
                    order_id=decline["order_id"],
                    campaign_id=decline["campaign_id"],
                    product_id=decline["product_id"],
                    status="TRIAL",
                    billing_cycle=1,
                    billing_interval_days=decline["billing_interval_days"],
                    shippable=decline["shippable"],
                    price_minor=decline["amount_minor"],
                    currency=decline["currency"],
                    gateway_id=decline["gateway_id"],
                    updated_at=now,
                )
            )


def one(engine: Engine, stmt: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(stmt).one()


def handoff_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Handoff)).scalar_one())


# --- the sandbox ---------------------------------------------------------------------------------


def reset_sandbox(sb: RunningSandbox) -> RunningSandbox:
    """Empty the sandbox and freeze its clock at NIGHT."""
    admin(sb, "reset", {})
    admin(sb, "clock", {"now": NIGHT.isoformat(), "frozen": True})
    return sb


def admin(sb: RunningSandbox, path: str, body: dict[str, Any] | None = None) -> Any:
    if body is None:
        resp = requests.get(f"{sb.admin_url}/{path}", timeout=10)
    else:
        resp = requests.post(f"{sb.admin_url}/{path}", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def evaluates(sb: RunningSandbox) -> list[dict[str, Any]]:
    """The sandbox's log of /evaluate calls (order_id = our hand-off id)."""
    items: list[dict[str, Any]] = admin(sb, "requests?path=/evaluate")["items"]
    return items


def sandbox_orders(sb: RunningSandbox) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin(sb, "orders")["items"]
    return items
