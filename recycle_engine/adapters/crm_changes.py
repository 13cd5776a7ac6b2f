"""A change of the outbox (`export changes`) as the CRM call that makes it, and the CRM's value read back.

Only what the CRM's known API can take goes out (docs/crm-api.md): a purchase's status and next bill
date through /purchase/update/, a cancellation through /purchase/cancel/. An order's status has no
known endpoint, and a new fulfilment starts in HOLD, which /fulfillment/update/ does not take; those
stay UNSUPPORTED, shown by `crm deliveries`, and keep reaching the CRM by `export changes`. The
engine's own bookkeeping fields (attempt dates, causes, cycle, token flags) are not the CRM's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

__all__ = ["PURCHASE_QUERY", "CrmRequest", "is_applied", "request_for"]

PURCHASE_QUERY: Final = "/purchase/query/"
_CANCEL_REASON: Final = "Recycle billing ended"


@dataclass(frozen=True)
class CrmRequest:
    endpoint: str
    params: dict[str, str]


def request_for(entity: str, field: str, entity_id: str, new_value: str | None) -> CrmRequest | None:
    """The call that writes this change to the CRM, or None when the CRM has no place for it."""
    if entity != "SUBSCRIPTION" or not new_value:
        return None
    if field == "status":
        if new_value == "CANCELLED":
            return CrmRequest("/purchase/cancel/", {"purchaseId": entity_id, "cancelReason": _CANCEL_REASON})
        return CrmRequest("/purchase/update/", {"purchaseId": entity_id, "status": new_value})
    if field == "next_bill_on":
        day = _day(new_value)
        if day is None:
            return None
        return CrmRequest(
            "/purchase/update/", {"purchaseId": entity_id, "nextBillDate": day.strftime("%m/%d/%Y")}
        )
    return None


def is_applied(field: str, new_value: str | None, purchase: Mapping[str, Any] | None) -> bool:
    """Whether the purchase as the CRM holds it already shows this change (its answer was lost)."""
    if purchase is None or new_value is None:
        return False
    if field == "status":
        return str(purchase.get("status", "")).upper() == new_value
    if field == "next_bill_on":
        held = _day(str(purchase.get("nextBillDate", "")))
        return held is not None and held == _day(new_value)
    return False


def _day(text: str) -> date | None:
    """A date written ISO (2026-07-01) or as the CRM writes it (07/01/2026)."""
    value = text.strip()[:10]
    try:
        if "/" in value:
            month, day, year = (int(part) for part in value.split("/"))
            return date(year, month, day)
        return date.fromisoformat(value)
    except ValueError:
        return None
