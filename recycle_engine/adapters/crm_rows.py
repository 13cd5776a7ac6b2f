"""A CRM declined transaction, with its order and purchase, as a declines feed row (SPEC section 5).

The row then goes through the same checks as a CSV row (feed_rows.check_chunk): this module only moves
values between names and writes them as the CSV would, never judges them. Fields the CRM sends that no
column takes are dropped here, so whatever they hold (a card number included) is never kept.

Field names follow the public clients (docs/crm-api.md); where they are silent, README "The CRM" names
the choice made (and the fake follows it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from types import EllipsisType
from typing import Any, Final

from recycle_engine.services.intake.feed_rows import FEED_COLUMNS

__all__ = ["ORDER_TYPES", "TRANSACTION_FIELDS", "declined_at", "feed_columns", "feed_row"]

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
# Every transaction field the mapping reads: the columns' own, then the time, merchant and card expiry.
_TRANSACTION_NAMES: Final = (*TRANSACTION_FIELDS.values(), "dateCreated", "merchantId", "cardExpiryDate")
_READ_TRANSACTION: Final = itemgetter(*_TRANSACTION_NAMES)
_CRM_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")  # as the CRM sends it
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
    whens = [declined_at(transaction) if when is ... else when]
    columns = feed_columns([transaction], [order], [purchase], gateway_of, whens)
    return {column: values[0] for column, values in columns.items()}


def feed_columns(
    transactions: Sequence[Mapping[str, Any]],
    orders: Sequence[Mapping[str, Any] | None],
    purchases: Sequence[Mapping[str, Any] | None],
    gateway_of: Callable[[str], str],
    whens: Sequence[datetime | None],
) -> dict[str, list[str]]:
    """The feed rows of declined transactions, column by column in FEED_COLUMNS order, as text: the
    i-th row from transactions[i], its order, its purchase and its declined_at() `whens[i]`.

    A pull maps every row it reads: each record's fields are read in one C call (itemgetter) and
    turned into columns by zip, a list per column, which pandas then takes as they are."""
    fields = _fields(transactions)
    columns: dict[str, list[str]] = {
        column: _texts(values) for (column, _), values in zip(_TRANSACTION_ITEMS, fields, strict=False)
    }
    created, merchants, expiries = (_texts(values) for values in fields[len(_TRANSACTION_ITEMS) :])
    # The CRM's own form of a time, read as UTC, becomes its isoformat() by slicing, at a fraction of
    # the call's cost; any other form is written by the call.
    plain = map(_CRM_TIME.fullmatch, created)
    columns["declined_at"] = [
        ((raw[:10] + "T" + raw[11:] + "+00:00") if is_plain else when.isoformat()) if when else raw
        for raw, when, is_plain in zip(created, whens, plain, strict=True)
    ]
    gateways: dict[str, str] = {}  # a few merchants, met again and again
    columns["gateway_id"] = [
        (gateways[m] if m in gateways else gateways.setdefault(m, gateway_of(m))) if m else ""
        for m in merchants
    ]
    parts = [expiry.partition("/") for expiry in expiries]
    columns["card_exp_month"] = [month for month, _, _ in parts]
    columns["card_exp_year"] = [year for _, _, year in parts]
    columns["recurring_product"] = ["true" if p else "false" for p in columns["purchase_id"]]
    _order_and_purchase(columns, orders, purchases)
    return {
        name: columns[name] for name in FEED_COLUMNS
    }  # FEED_COLUMNS' order; a column left unset is a KeyError


def _fields(transactions: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The transactions' values of _TRANSACTION_NAMES, one tuple per name (None where a transaction
    lacks the field)."""
    try:
        rows = list(map(_READ_TRANSACTION, transactions))  # every field there: one C call a row
    except KeyError:
        rows = [tuple(map(t.get, _TRANSACTION_NAMES)) for t in transactions]
    return list(zip(*rows, strict=True)) if rows else [()] * len(_TRANSACTION_NAMES)


def _texts(values: Sequence[Any]) -> list[str]:
    """Values as the CSV would hold them (see _cell)."""
    try:
        "".join(values)  # one C-level pass proves the usual case: every value is text already
    except TypeError:
        return [value if value.__class__ is str else _cell(value) for value in values]
    return list(values)


def _order_and_purchase(
    columns: dict[str, list[str]],
    orders: Sequence[Mapping[str, Any] | None],
    purchases: Sequence[Mapping[str, Any] | None],
) -> None:
    """The columns an order and a purchase give or complete, in place; the transaction's own values
    come first."""
    campaign, product, cycle = columns["campaign_id"], columns["product_id"], columns["billing_cycle"]
    size = len(campaign)
    order_type, shippable, interval = [""] * size, [""] * size, [""] * size
    completes = ["false"] * size
    for n, (order, purchase) in enumerate(zip(orders, purchases, strict=True)):
        if order is not None:
            kind = _cell(order.get("orderType")).upper()
            order_type[n] = ORDER_TYPES.get(kind, kind)
            campaign[n] = campaign[n] or _cell(order.get("campaignId"))
            shippable[n] = _shippable(order, product[n])  # the transaction's own product, if any
        if purchase is not None:
            product[n] = product[n] or _cell(purchase.get("productId"))
            interval[n] = _cell(purchase.get("billingIntervalDays"))
            cycle[n] = cycle[n] or _cell(purchase.get("billingCycleNumber"))
            trial = _cell(purchase.get("trialEnabled")).lower() in ("true", "1")
            completes[n] = "true" if trial and cycle[n] == "2" else "false"
        if not cycle[n] and order_type[n] in ("NEW_SALE", "UPSALE"):
            cycle[n] = "1"
    columns["order_type"], columns["shippable"], columns["billing_interval_days"] = (
        order_type,
        shippable,
        interval,
    )
    columns["campaign_id"], columns["product_id"], columns["billing_cycle"] = campaign, product, cycle
    columns["completes_trial"] = completes


def _shippable(order: Mapping[str, Any], product_id: str) -> str:
    items = order.get("items")
    if not isinstance(items, list):
        return "false"
    for item in items:
        # A JSON object is a dict: the class test spares the slower isinstance() against the ABC.
        is_record = item.__class__ is dict or isinstance(item, Mapping)
        if is_record and (not product_id or _cell(item.get("productId")) == product_id):
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
