"""The small interfaces services depend on; adapters implement them, tests fake them."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from recycle_engine.domain.states import State

__all__ = [
    "BearerToken",
    "CrmApi",
    "CrmPage",
    "ChargeRequest",
    "ChargeResult",
    "Clock",
    "EvaluateAnswer",
    "FlexFactorGateway",
    "LookupProcessor",
    "OrderSnapshot",
    "ProcessorGateway",
    "TokenCache",
    "VendorStatus",
]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant as an aware UTC datetime."""
        ...


class VendorStatus(enum.StrEnum):
    """FlexFactor's /evaluate status names (compared case-insensitively on the wire)."""

    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    CHALLENGE = "CHALLENGE"
    SUBMITTED = "SUBMITTED"
    PROCESSING = "PROCESSING"
    CAPTUREREQUIRED = "CAPTUREREQUIRED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class EvaluateAnswer:
    """FlexFactor's answer to one /evaluate call."""

    flexfactor_order_id: str  # orderSessionKey (or orderId when absent)
    vendor_status: VendorStatus
    state: State  # our reading of vendor_status (SUBMITTED for the non-final ones)
    needs_attention: str | None = None  # e.g. CAPTUREREQUIRED: a reconciliation exception to report


@dataclass(frozen=True)
class OrderSnapshot:
    """One FlexFactor order as GET /orders/{id} or the order list shows it."""

    flexfactor_order_id: str
    external_order_id: str | None  # the orderId we sent (our submission_id)
    status_code: int  # 0..7
    status_name: str
    state: State | None  # final state it implies, or None while FlexFactor is still working
    needs_attention: str | None  # Problem, Capturerequired, Returned: reason for a reconciliation exception
    order_placed_at: datetime | None
    expiry_at: datetime | None
    amount_minor: int | None = None
    currency: str | None = None


class FlexFactorGateway(Protocol):
    """One FlexFactor gateway (one credential set). Raises the FlexFactorError subclasses of errors.py."""

    def evaluate(self, body: Mapping[str, Any]) -> EvaluateAnswer:
        """POST /evaluate with a body built by `flexfactor_payload`; the body carries its idempotencyKey.

        Raises FlexFactorRejected (400), FlexFactorUnknownOutcome (read timeout, 5xx after retries),
        FlexFactorNotSent (never left us), FlexFactorRateLimited (a FlexFactorNotSent: 429 on every try),
        FlexFactorConflict (409), FlexFactorConfigError."""
        ...

    def get_order(self, flexfactor_order_id: str) -> OrderSnapshot:
        """GET /orders/{id}; raises FlexFactorNotFoundError for an unknown id."""
        ...

    def list_orders(
        self,
        *,
        placed_from: datetime,
        placed_to: datetime,
        statuses: Sequence[int] = (),
        query: str | None = None,
        page_size: int = 100,
    ) -> Iterator[OrderSnapshot]:
        """GET /orders for our MID, paging until the last page."""
        ...

    def find_by_external_id(
        self, external_order_id: str, *, placed_from: datetime, placed_to: datetime
    ) -> OrderSnapshot | None:
        """The order we sent with orderId = external_order_id, or None if FlexFactor has none."""
        ...

    def cancel(self, flexfactor_order_id: str) -> OrderSnapshot | None:
        """POST /orders/{id}/cancel. None when cancelled; when FlexFactor refuses because the order is
        already final (400, A9), the order as re-read, for the caller to apply."""
        ...

    def external_cancel(self, external_order_id: str) -> OrderSnapshot | None:
        """POST /orders/{orderId}/external-cancel, by our orderId; returns as `cancel` does.
        Raises FlexFactorNotFoundError when FlexFactor holds no order with that orderId."""
        ...


@dataclass(frozen=True)
class BearerToken:
    """A FlexFactor access token and when to stop using it. `version` is the shared cache's row
    version it was read or written as (None: known to this process only)."""

    value: str = field(repr=False)
    expires_at: datetime
    renew_at: datetime
    version: int | None = None


class TokenCache(Protocol):
    """Where a FlexFactor token outlives the process that fetched it. It never fails a call: when
    it cannot help it fetches, and a race between processes costs at most an extra fetch."""

    def current(self, now: datetime, fetch: Callable[[], BearerToken]) -> BearerToken:
        """A token usable at `now`: the shared one, else `fetch()`'s, offered to the others."""
        ...

    def drop(self, failed: BearerToken, now: datetime) -> None:
        """Forget `failed` (FlexFactor answered 401 to it) unless another token already replaced it."""
        ...

    def close(self) -> None:
        """Release its database connections."""
        ...


@dataclass(frozen=True)
class ChargeRequest:
    """One re-attempt on an ordinary processor gateway."""

    gateway_id: str
    reference: str  # our transaction id for the attempt
    amount_minor: int
    currency: str
    card_token: str
    card_last4: str


class ChargeResult(enum.StrEnum):
    APPROVED = "APPROVED"
    SOFT_DECLINE = "SOFT_DECLINE"
    HARD_DECLINE = "HARD_DECLINE"


class ProcessorGateway(Protocol):
    def charge(self, request: ChargeRequest) -> tuple[ChargeResult, str]:
        """Charge a vaulted card; returns the result and the processor's response text."""
        ...


class LookupProcessor(ProcessorGateway, Protocol):
    """A processor that can be asked whether it holds a charge, for exactly-once charging.

    `charge` raises ProcessorUnknownOutcome when its answer was lost (the charge may exist) and
    ProcessorConfigError when the processor refuses our credentials."""

    def find_charge(self, reference: str) -> tuple[ChargeResult, str] | None:
        """The charge sent with our `reference` as its order id, or None when the processor confirms
        it holds none. Raises ProcessorUnknownOutcome when the lookup itself fails."""
        ...


@dataclass(frozen=True)
class CrmPage:
    """One page of a CRM query: its rows and the total the CRM counted when it served the page."""

    rows: list[dict[str, Any]]
    total: int
    per_page: int  # resultsPerPage as the CRM answered it (it may cap what was asked)


class CrmApi(Protocol):
    """The merchant's CRM (adapters/crm_http.CrmClient). Queries retry; `update` is sent once and
    raises CrmRefused (an ERROR answer), CrmUnavailable (no answer: it may have been applied) or
    CrmProtocolError."""

    def query_all(self, endpoint: str, params: Mapping[str, str]) -> Iterator[CrmPage]: ...

    def query_ids(self, endpoint: str, key: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]: ...

    def update(self, endpoint: str, params: Mapping[str, str]) -> str: ...
