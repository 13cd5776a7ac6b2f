"""Pure builder of FlexFactor /evaluate bodies (contract section 5) from one hand-off request."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from recycle_engine.domain.cards import contains_pan, looks_like_pan
from recycle_engine.domain.states import Source
from recycle_engine.errors import InputError

__all__ = ["HandoffRequest", "build_evaluate_body", "interval_text", "with_expiry"]

_NOT_AVAILABLE: Final = "NA"  # A2: the vendor treats "" as missing, so unknown codes go as NA


@dataclass(frozen=True, repr=False)
class HandoffRequest:
    """Everything one /evaluate call needs, as plain values (amounts in minor units, aware datetimes)."""

    source: Source
    submission_id: str  # sent as orderId (A4)
    idempotency_key: str  # GUID, reused whenever this same body is sent again
    mid: str
    site_id: str
    expiry_at: datetime | None  # end of FlexFactor's window; None (or ignored) for a cascade
    amount_minor: int  # the attempt amount, after any recycle reduction
    currency: str
    transaction_id: str
    declined_at: datetime
    response_code: str
    response_text: str
    processor_type: str  # responseCodeSource, e.g. "nmi"
    card_token: str  # FlexFactor vault token; never a card number
    card_bin: str
    card_last4: str
    card_exp_month: int
    card_exp_year: int
    card_brand: str = ""
    card_type: str = ""
    avs: str = ""
    cvv: str = ""
    cavv: str = ""
    customer_id: str = ""
    email: str = ""
    phone: str = ""
    first_name: str = ""
    last_name: str = ""
    address1: str = ""
    address2: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""
    country: str = ""  # ISO 3166 alpha-2
    ip_address: str = ""
    # RECYCLE only
    purchase_id: str = ""
    billing_interval_days: int | None = None
    regular_price_minor: int | None = None
    billing_cycle: int | None = None
    total_payments: int | None = None  # the final cycle, or None for an open-ended subscription

    def __repr__(self) -> str:
        # The token and personal data stay out of logs and tracebacks.
        return (
            f"HandoffRequest(source={self.source}, submission_id={self.submission_id!r}, "
            f"transaction_id={self.transaction_id!r}, card_last4={self.card_last4!r})"
        )


def build_evaluate_body(req: HandoffRequest) -> dict[str, Any]:
    """The /evaluate JSON body for `req`: RECYCLE as managed MIT, RERUN and CASCADE as CIT.

    Raises InputError for a request FlexFactor must never see: a card_token that looks like a card
    number, a cascade without ip_address, a missing expiry on RECYCLE/RERUN, a non-positive amount,
    naive datetimes, or a missing required value (A2)."""
    _check(req)
    is_mit = req.source is Source.RECYCLE
    body: dict[str, Any] = {
        "isDeclined": True,
        "isMIT": is_mit,
        "isRecurring": is_mit,
    }
    if req.source is not Source.CASCADE:
        assert req.expiry_at is not None  # checked in _check
        body["expiryDateUtc"] = _utc_text(req.expiry_at)
    body.update(
        {
            "mid": req.mid,
            "siteId": req.site_id,
            "orderId": req.submission_id,
            "idempotencyKey": req.idempotency_key,
        }
    )
    if req.ip_address:
        body["customerIp"] = req.ip_address
    body["transaction"] = _transaction(req)
    if is_mit:
        body["subscription"] = _subscription(req)
    body["payer"] = _without_empty(
        {"email": req.email or _NOT_AVAILABLE, "phone": req.phone, "id": req.customer_id}
    )
    body["billingInformation"] = _without_empty(
        {
            "firstName": req.first_name,
            "lastName": req.last_name,
            "phone": req.phone,
            "addressLine1": req.address1,
            "addressLine2": req.address2,
            "city": req.city,
            "state": req.state,
            "zipCode": req.zip,
            "countryCode": req.country.upper(),
            "country": req.country.upper(),
        }
    )
    body["paymentMethod"] = _without_empty(
        {
            "cardNumber": req.card_token,
            "token": True,
            "holderName": " ".join(p for p in (req.first_name, req.last_name) if p),
            "cardBrand": req.card_brand,
            "cardType": req.card_type,
            "expirationMonth": req.card_exp_month,
            "expirationYear": req.card_exp_year,
            "cardBinNumber": req.card_bin,
            "cardLast4Digits": req.card_last4,
        }
    )
    return body


def interval_text(days: int) -> str:
    """The subscription `interval` text: 7 -> weekly, 28-31 -> monthly, else `every N days`."""
    if days == 7:
        return "weekly"
    if 28 <= days <= 31:
        return "monthly"
    return f"every {days} days"


def _transaction(req: HandoffRequest) -> dict[str, Any]:
    return {
        "id": req.transaction_id,
        "amount": req.amount_minor,
        "currency": req.currency.upper(),
        "timestampUtc": _utc_text(req.declined_at),
        "timezoneUtcOffset": _offset_hours(req.declined_at),
        "responseCode": req.response_code,
        "responseCodeSource": req.processor_type,
        "responseStatus": "DECLINED",
        "responseDescription": req.response_text,
        "avsResultCode": req.avs.strip() or _NOT_AVAILABLE,
        "cvvResultCode": req.cvv.strip() or _NOT_AVAILABLE,
        "cavvResultCode": req.cavv.strip() or _NOT_AVAILABLE,
        "cardNotPresent": True,
    }


def _subscription(req: HandoffRequest) -> dict[str, Any]:
    assert req.billing_interval_days is not None  # checked in _check
    return {
        "subscriptionId": req.purchase_id,
        "interval": interval_text(req.billing_interval_days),
        "price": req.regular_price_minor,
        "currency": req.currency.upper(),
        "paymentNumber": req.billing_cycle,
        "totalPayments": req.total_payments,  # null is meaningful: no final cycle
    }


# Text fields sent in the body (payer, billingInformation, holderName, responseDescription, ids):
# none may carry a card number, however written (domain.cards). The token has its own, stricter rule.
_FREE_TEXT: Final = (
    "transaction_id", "response_text", "customer_id", "email", "phone", "first_name", "last_name",
    "address1", "address2", "city", "state", "zip", "purchase_id", "card_brand", "card_type",
)  # fmt: skip


def _check(req: HandoffRequest) -> None:
    # Message names the field, never its value: the value might be card data.
    if looks_like_pan(req.card_token):
        raise InputError(
            f"submission {req.submission_id}: card_token looks like a card number; only vault tokens are sent"
        )
    written = sorted(name for name in _FREE_TEXT if contains_pan(getattr(req, name)))
    if written:
        raise InputError(
            f"submission {req.submission_id}: {', '.join(written)} hold(s) what looks like a card number"
        )
    required = {
        "submission_id": req.submission_id,
        "idempotency_key": req.idempotency_key,
        "mid": req.mid,
        "site_id": req.site_id,
        "transaction_id": req.transaction_id,
        "response_code": req.response_code,
        "processor_type": req.processor_type,
        "currency": req.currency,
        "card_token": req.card_token,
    }
    missing = sorted(name for name, value in required.items() if not value.strip())
    if req.source is Source.CASCADE and not req.ip_address.strip():
        missing.append("ip_address (required for a cascade)")
    if req.source is not Source.CASCADE and req.expiry_at is None:
        missing.append(f"expiry_at (required for {req.source})")
    if req.source is Source.RECYCLE:
        for name, number in (
            ("billing_interval_days", req.billing_interval_days),
            ("regular_price_minor", req.regular_price_minor),
            ("billing_cycle", req.billing_cycle),
        ):
            if number is None or number <= 0:
                missing.append(f"{name} (required for RECYCLE)")
        if not req.purchase_id.strip():
            missing.append("purchase_id (required for RECYCLE)")
    if missing:
        raise InputError(f"submission {req.submission_id}: missing {', '.join(missing)}")
    if req.amount_minor <= 0:
        raise InputError(f"submission {req.submission_id}: amount_minor must be > 0")
    try:
        uuid.UUID(req.idempotency_key)
    except ValueError:
        raise InputError(f"submission {req.submission_id}: idempotency_key must be a GUID") from None
    for name, moment in (("declined_at", req.declined_at), ("expiry_at", req.expiry_at)):
        if moment is not None and moment.utcoffset() is None:
            raise InputError(f"submission {req.submission_id}: {name} must be timezone-aware")


def with_expiry(body_text: str, expiry_at: datetime) -> str:
    """The /evaluate body `body_text` with its `expiryDateUtc` set to `expiry_at` (a body without a
    window, a cascade's, is returned unchanged)."""
    body = json.loads(body_text)
    if body.get("expiryDateUtc") is None:
        return body_text
    body["expiryDateUtc"] = _utc_text(expiry_at)
    return json.dumps(body)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offset_hours(moment: datetime) -> int | float:
    offset = moment.utcoffset()
    assert offset is not None  # checked in _check
    hours = offset.total_seconds() / 3600
    return int(hours) if hours.is_integer() else hours  # -5, or 5.5 for India


def _without_empty(fields: dict[str, Any]) -> dict[str, Any]:
    # Optional values we do not know are left out rather than sent as "" (A2 reads "" as missing).
    return {k: v for k, v in fields.items() if v is not None and v != ""}
