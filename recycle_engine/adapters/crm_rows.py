"""A CRM declined transaction, with its order and purchase, as a declines feed row (SPEC section 5).

The row then goes through the same checks as a CSV row (feed_rows.check_chunk): this module only moves
values between names and writes them as the CSV would, never judges them. Fields the CRM sends that no
column takes are dropped here, so whatever they hold (a card number included) is never kept.

Field names follow the public clients (docs/crm-api.md); where they are silent, README "The CRM" names
the choice made (and the fake follows it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import EllipsisType
from typing import Any, Final

from recycle_engine.services.intake.feed_rows import FEED_COLUMNS

__all__ = ["ORDER_TYPES", "TRANSACTION_FIELDS", "declined_at", "feed_row"]

# Feed column <- transaction row field, for the columns a transaction row carries itself.
TRANSACTION_FIELDS: Final[Mapping[str, str]] = {
    "transaction_id": "transactionId",
    "order_id": "orderId",
    "purchase_id": "purchaseId",
    "billing_cycle": "billingCycleNumber",
    "campaign_id": "campaignId",
    "product_id": "productId",
    "amount": "totalAmount",
    "currency": "currencyCode",
    "response_type": "responseType",
    "response_code": "responseCode",
    "response_text": "responseText",
    "avs_result": "avsResponse",
    "cvv_result": "cvvResponse",
    "cavv_result": "cavvResponse",
    "customer_id": "customerId",
    "email": "emailAddress",
    "phone": "phoneNumber",
    "first_name": "firstName",
    "last_name": "lastName",
    "address1": "address1",
    "address2": "address2",
    "city": "city",
    "state": "state",
    "zip": "postalCode",
    "country": "country",
    "ip_address": "ipAddress",
    "card_token": "cardToken",
    "card_bin": "cardBin",
    "card_last4": "cardLast4",
    "card_brand": "cardType",
    "card_type": "cardFundingType",
}
# The CRM's orderType -> the feed's order_type; a recurring bill is its own order at the CRM.
_TRANSACTION_ITEMS: Final = tuple(TRANSACTION_FIELDS.items())
ORDER_TYPES: Final[Mapping[str, str]] = {"NEW_SALE": "NEW_SALE", "UPSALE": "UPSALE", "RECURRING": "REBILL"}


def declined_at(transaction: Mapping[str, Any]) -> datetime | None:
    """The transaction's `dateCreated` ("YYYY-MM-DD HH:MM:SS", UTC) as an aware instant, or None."""
    raw = transaction.get("dateCreated")
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def feed_row(
    transaction: Mapping[str, Any],
    order: Mapping[str, Any] | None,
    purchase: Mapping[str, Any] | None,
    gateway_of: Callable[[str], str],
    when: datetime | None | EllipsisType = ...,
) -> dict[str, str]:
    """The feed row of one declined transaction; every column present, as text. `when` is the
    transaction's declined_at() where the caller has read it already."""
    row = dict.fromkeys(FEED_COLUMNS, "")
    get = transaction.get
    # A pull maps every row it reads: the text values, nearly all of them, skip the call to _cell.
    for column, name in _TRANSACTION_ITEMS:
        value = get(name)
        row[column] = value if value.__class__ is str else _cell(value)
    if when is ...:
        when = declined_at(transaction)
    row["declined_at"] = when.isoformat() if when else _cell(get("dateCreated"))
    merchant = _cell(get("merchantId"))
    row["gateway_id"] = gateway_of(merchant) if merchant else ""
    month, _, year = _cell(get("cardExpiryDate")).partition("/")
    row["card_exp_month"], row["card_exp_year"] = month, year
    row["recurring_product"] = "true" if row["purchase_id"] else "false"
    if order is not None:
        kind = _cell(order.get("orderType")).upper()
        row["order_type"] = ORDER_TYPES.get(kind, kind)
        row["campaign_id"] = row["campaign_id"] or _cell(order.get("campaignId"))
        row["shippable"] = _shippable(order, row["product_id"])
    if purchase is not None:
        row["product_id"] = row["product_id"] or _cell(purchase.get("productId"))
        row["billing_interval_days"] = _cell(purchase.get("billingIntervalDays"))
        row["billing_cycle"] = row["billing_cycle"] or _cell(purchase.get("billingCycleNumber"))
        trial = _cell(purchase.get("trialEnabled")).lower() in ("true", "1")
        row["completes_trial"] = "true" if trial and row["billing_cycle"] == "2" else "false"
    else:
        row["completes_trial"] = "false"
    if not row["billing_cycle"] and row["order_type"] in ("NEW_SALE", "UPSALE"):
        row["billing_cycle"] = "1"
    return row


def _shippable(order: Mapping[str, Any], product_id: str) -> str:
    items = order.get("items")
    if not isinstance(items, list):
        return "false"
    for item in items:
        if isinstance(item, Mapping) and (not product_id or _cell(item.get("productId")) == product_id):
            return "true" if _cell(item.get("shippable")).lower() in ("true", "1") else "false"
    return "false"


def _cell(value: Any) -> str:
    """A JSON value as the CSV would hold it: text as is, numbers in plain decimal, booleans as words."""
    if value.__class__ is str:  # nearly every value: the one check a row's forty cells need
        return value
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return str(value)
