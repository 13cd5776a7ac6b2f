"""Declines feed rows (SPEC section 5) as the fake CRM holds them: a transaction, its order, its purchase.

The inverse of the connector's mapping, written out separately, so a test that pulls these records and
compares the book with a CSV import of the same rows checks the connector rather than restating it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from recycle_engine.crm_fake.state import FakeCrm

__all__ = ["load_feed_rows", "records_of"]

_ORDER_TYPES = {"NEW_SALE": "NEW_SALE", "UPSALE": "UPSALE", "REBILL": "RECURRING"}


def records_of(
    row: Mapping[str, str], merchant_of: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(transaction, order, purchase or None) for one feed row; `merchant_of` maps gateway -> merchantId."""
    # A feed row may be invalid on purpose (to see the import reject it): its values pass through as
    # they are, except a time, which the fake needs to select by day.
    when = datetime.fromisoformat(row["declined_at"].strip().replace("Z", "+00:00"))
    when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    month, year = row.get("card_exp_month", ""), row.get("card_exp_year", "")
    transaction: dict[str, Any] = {
        "transactionId": row["transaction_id"],
        "dateCreated": when.strftime("%Y-%m-%d %H:%M:%S"),
        "txnType": "SALE",
        "responseType": row["response_type"],
        "responseCode": row.get("response_code", ""),
        "responseText": row.get("response_text", ""),
        "merchantId": (merchant_of or {}).get(row["gateway_id"], row["gateway_id"]),
        "orderId": row["order_id"],
        "purchaseId": row.get("purchase_id") or None,
        "customerId": row.get("customer_id", ""),
        "billingCycleNumber": _number(row["billing_cycle"]),
        "campaignId": row.get("campaign_id", ""),
        "productId": row.get("product_id", ""),
        "totalAmount": row["amount"],
        "currencyCode": row["currency"],
        "avsResponse": row.get("avs_result", ""),
        "cvvResponse": row.get("cvv_result", ""),
        "cavvResponse": row.get("cavv_result", ""),
        "emailAddress": row.get("email", ""),
        "phoneNumber": row.get("phone", ""),
        "firstName": row.get("first_name", ""),
        "lastName": row.get("last_name", ""),
        "address1": row.get("address1", ""),
        "address2": row.get("address2", ""),
        "city": row.get("city", ""),
        "state": row.get("state", ""),
        "postalCode": row.get("zip", ""),
        "country": row.get("country", ""),
        "ipAddress": row.get("ip_address", ""),
        "cardToken": row.get("card_token", ""),
        "cardBin": row.get("card_bin", ""),
        "cardLast4": row.get("card_last4", ""),
        "cardType": row.get("card_brand", ""),
        "cardFundingType": row.get("card_type", ""),
        "cardExpiryDate": f"{month}/{year}" if month or year else "",
    }
    order = {
        "orderId": row["order_id"],
        "orderType": _ORDER_TYPES.get(row["order_type"], row["order_type"]),
        "campaignId": row.get("campaign_id", ""),
        "customerId": row.get("customer_id", ""),
        "orderStatus": "DECLINED",
        "items": [{"productId": row.get("product_id", ""), "shippable": row["shippable"]}],
    }
    purchase = None
    if row.get("purchase_id"):
        purchase = {
            "purchaseId": row["purchase_id"],
            "orderId": row["order_id"],
            "productId": row.get("product_id", ""),
            "status": "ACTIVE",
            "price": row["amount"],
            "billingCycleNumber": _number(row["billing_cycle"]),
            "billingIntervalDays": _number(row["billing_interval_days"]),
            "nextBillDate": when.date().isoformat(),
            "trialEnabled": row["completes_trial"],
        }
    return transaction, order, purchase


def _number(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def load_feed_rows(fake: FakeCrm, rows: Iterable[Mapping[str, str]]) -> int:
    """Add the records of `rows` to `fake` (a row without a readable time or ids is left out); returns
    how many transactions were added."""
    transactions, orders, purchases = [], [], []
    for row in rows:
        try:
            transaction, order, purchase = records_of(row)
        except (KeyError, ValueError, AttributeError):
            continue
        transactions.append(transaction)
        orders.append(order)
        if purchase is not None:
            purchases.append(purchase)
    fake.add(transactions, orders, purchases)
    return len(transactions)
