"""FlexFactor's vocabulary: status names and numbers, error bodies, webhook events, transport errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from recycle_engine.domain.cards import mask_pans
from recycle_engine.domain.states import Event, State
from recycle_engine.errors import (
    FlexFactorConfigError,
    FlexFactorError,
    FlexFactorErrorBody,
    FlexFactorNotSent,
    FlexFactorProtocolError,
    FlexFactorUnknownOutcome,
)
from recycle_engine.ports import EvaluateAnswer, OrderSnapshot, VendorStatus

__all__ = [
    "ATTENTION_CAPTURE_REQUIRED",
    "ATTENTION_PROBLEM",
    "ATTENTION_RETURNED",
    "EVALUATE_STATUSES",
    "ORDER_STATUSES",
    "TRANSPORT_ERRORS",
    "WEBHOOK_EVENTS",
    "OrderStatus",
    "envelope_failure",
    "error_for_transport",
    "evaluate_answer",
    "event_outcome",
    "field_messages",
    "get_ci",
    "order_snapshot",
    "parse_error_body",
    "parse_vendor_datetime",
    "read_evaluate_status",
    "read_order_status",
    "read_token",
]

log = logging.getLogger(__name__)

# Reasons for a reconciliation exception, as stored in `needs_attention`.
ATTENTION_CAPTURE_REQUIRED: Final = "CAPTURE_REQUIRED"
ATTENTION_PROBLEM: Final = "PROBLEM"
ATTENTION_RETURNED: Final = "REFUNDED"

_NON_JSON_KEEP_CHARS: Final = 500

# --- /evaluate statuses (contract 5.6) -------------------------------------------------------------

EVALUATE_STATUSES: Final[Mapping[VendorStatus, tuple[State, str | None]]] = {
    VendorStatus.APPROVED: (State.APPROVED, None),
    VendorStatus.DECLINED: (State.DECLINED, None),
    VendorStatus.CHALLENGE: (State.SUBMITTED, None),
    VendorStatus.SUBMITTED: (State.SUBMITTED, None),
    VendorStatus.PROCESSING: (State.SUBMITTED, None),
    # We never capture; FlexFactor voids it in time, but billing must know an authorization is held.
    VendorStatus.CAPTUREREQUIRED: (State.SUBMITTED, ATTENTION_CAPTURE_REQUIRED),
    VendorStatus.EXPIRED: (State.EXPIRED, None),
    VendorStatus.CANCELLED: (State.CANCELLED, None),
}


def read_evaluate_status(name: str) -> tuple[VendorStatus, State, str | None]:
    """An /evaluate `status` (any case) -> (VendorStatus, our State, needs_attention).

    Raises FlexFactorProtocolError naming an unknown status: a guess could settle money wrongly."""
    try:
        vendor_status = VendorStatus(name.strip().upper())
    except ValueError:
        raise FlexFactorProtocolError(f"unknown FlexFactor evaluate status {name[:40]!r}") from None
    state, attention = EVALUATE_STATUSES[vendor_status]
    return vendor_status, state, attention


def evaluate_answer(body: Mapping[str, Any]) -> EvaluateAnswer:
    """Read a 200 /evaluate body: orderSessionKey (else orderId) and its status.

    Raises FlexFactorProtocolError when either is missing or the status is unknown."""
    order_id = get_ci(body, "orderSessionKey") or get_ci(body, "orderId")
    if not isinstance(order_id, str) or not order_id.strip():
        raise FlexFactorProtocolError("evaluate answer carries no orderSessionKey or orderId")
    status = get_ci(body, "status")
    if not isinstance(status, str):
        raise FlexFactorProtocolError(f"evaluate answer for order {order_id} carries no status")
    vendor_status, state, attention = read_evaluate_status(status)
    return EvaluateAnswer(
        flexfactor_order_id=order_id.strip(),
        vendor_status=vendor_status,
        state=state,
        needs_attention=attention,
    )


# --- order statuses (contract section 6) -----------------------------------------------------------


@dataclass(frozen=True)
class OrderStatus:
    """One documented order status: its number, name and what it means for the hand-off."""

    code: int
    name: str
    state: State | None  # the final state it implies; None while FlexFactor is still working
    needs_attention: str | None


ORDER_STATUSES: Final[Mapping[int, OrderStatus]] = {
    0: OrderStatus(0, "DRAFT", None, None),
    1: OrderStatus(1, "ONHOLD", None, None),
    # State decided by read_order_status: EXPIRED if the window has closed, else CANCELLED (A8).
    2: OrderStatus(2, "CANCELLED", State.CANCELLED, None),
    3: OrderStatus(3, "PROBLEM", None, ATTENTION_PROBLEM),
    4: OrderStatus(4, "PROCESSING", None, None),
    5: OrderStatus(5, "CAPTUREREQUIRED", None, ATTENTION_CAPTURE_REQUIRED),
    6: OrderStatus(6, "RETURNED", State.APPROVED, ATTENTION_RETURNED),
    7: OrderStatus(7, "COMPLETED", State.APPROVED, None),
}
# Look-ups name statuses in the vendor's words as well as the portal's: recorded traffic and the
# clients built on it use APPROVED, CHALLENGE, SUBMITTED, SUCCESS, PROCESSING, CAPTUREREQUIRED
# (docs/sandbox-vendor-answers.md). Each word maps to the number it goes with.
_ORDER_STATUS_BY_NAME: Final = {
    **{s.name: s for s in ORDER_STATUSES.values()},
    "CHALLENGE": ORDER_STATUSES[0],
    "DECLINED": ORDER_STATUSES[2],
    "EXPIRED": ORDER_STATUSES[2],
    "SUBMITTED": ORDER_STATUSES[4],
    "REFUNDED": ORDER_STATUSES[6],
    "APPROVED": ORDER_STATUSES[7],
    "SUCCESS": ORDER_STATUSES[7],
}


def read_order_status(
    code: object, name: object, *, expiry_at: datetime | None, now: datetime
) -> tuple[OrderStatus, State | None]:
    """An order's `status` int and `statusName` -> (documented status, implied final state or None).

    The integer wins over a disagreeing name (logged); the name is used only when the integer is
    missing. Status 2 reads EXPIRED when so named or once `expiry_at` is at or before `now`, else
    CANCELLED.
    Raises FlexFactorProtocolError for a status neither part identifies."""
    by_code = ORDER_STATUSES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
    if by_code is None and isinstance(code, str) and code.strip().isdigit():
        by_code = ORDER_STATUSES.get(int(code))
    by_name = _ORDER_STATUS_BY_NAME.get(name.strip().upper()) if isinstance(name, str) else None
    status = by_code or by_name
    if status is None:
        raise FlexFactorProtocolError(f"unknown FlexFactor order status {code!r} / {str(name)[:40]!r}")
    if by_code is not None and by_name is not None and by_code is not by_name:
        log.warning(
            "FlexFactor order status number and name disagree; the number wins",
            extra={"status_code": by_code.code, "status_name": str(name)[:40]},
        )
    state = status.state
    named_expired = by_name is not None and str(name).strip().upper() == "EXPIRED"
    if status.code == 2 and (named_expired or (expiry_at is not None and expiry_at <= now)):
        state = State.EXPIRED
    return status, state


def order_snapshot(body: Mapping[str, Any], *, now: datetime) -> OrderSnapshot:
    """Read one order as GET /orders/{id} or an item of GET /orders shows it; `now` decides A8."""
    order_id = get_ci(body, "id")
    if not isinstance(order_id, str) or not order_id.strip():
        raise FlexFactorProtocolError("order body carries no id")
    expiry_at = parse_vendor_datetime(get_ci(body, "expiryDate"))
    status, state = read_order_status(
        get_ci(body, "status"), get_ci(body, "statusName"), expiry_at=expiry_at, now=now
    )
    external = get_ci(body, "externalOrderId")
    amount = get_ci(body, "amount")
    currency = get_ci(body, "currencyCode")
    return OrderSnapshot(
        flexfactor_order_id=order_id.strip(),
        external_order_id=external if isinstance(external, str) and external else None,
        status_code=status.code,
        status_name=status.name,
        state=state,
        needs_attention=status.needs_attention,
        order_placed_at=parse_vendor_datetime(get_ci(body, "orderPlacedDate")),
        expiry_at=expiry_at,
        amount_minor=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        currency=currency if isinstance(currency, str) and currency else None,
    )


# --- token, dates, case-insensitive names ----------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def read_token(body: Mapping[str, Any]) -> tuple[str, datetime]:
    """A /oauth2/token body -> (accessToken, absolute expiry as aware UTC from `expires` epoch ms)."""
    token = get_ci(body, "accessToken")
    expires = get_ci(body, "expires")
    if not isinstance(token, str) or not token:
        raise FlexFactorProtocolError("token answer carries no accessToken")
    if isinstance(expires, str) and expires.strip().isdigit():
        expires = int(expires)
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise FlexFactorProtocolError("token answer carries no numeric expires")
    # Integer milliseconds keep .565 exact, where a float division would not.
    return token, _EPOCH + timedelta(milliseconds=int(expires))


def parse_vendor_datetime(value: object) -> datetime | None:
    """Any ISO 8601 text -> aware UTC datetime (no offset means UTC); None or empty -> None.

    Raises FlexFactorProtocolError for text that is not a date."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise FlexFactorProtocolError(f"expected an ISO 8601 date, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FlexFactorProtocolError(f"not an ISO 8601 date: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def get_ci(body: Mapping[str, Any], name: str) -> Any:
    """body[name] matched case-insensitively (FlexFactor binds names that way); None if absent."""
    if name in body:
        return body[name]
    wanted = name.lower()
    for key, value in body.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value
    return None


# --- error bodies (contract 10.1) ------------------------------------------------------------------


def parse_error_body(http_status: int, raw: bytes | str | Mapping[str, Any] | None) -> FlexFactorErrorBody:
    """Normalise any FlexFactor error body: problem details, nested, flat, HTTP-200 business failure.

    An object `errors` is the field map, else every top-level list of strings is a field; a TraceId
    (top level or inside `errors`) is lifted out; item1..item4 tuples become messages and codes; a
    non-JSON body keeps its first 500 characters. Anything that looks like a card number is masked."""
    if raw is None:
        return FlexFactorErrorBody(http_status=http_status)
    data: object
    if isinstance(raw, Mapping):
        data = raw
    else:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            return FlexFactorErrorBody(http_status=http_status)
        try:
            data = json.loads(text)
        except ValueError:
            return FlexFactorErrorBody(http_status, messages=(_scrub(text[:_NON_JSON_KEEP_CHARS]),))
        if not isinstance(data, dict):
            return FlexFactorErrorBody(http_status, messages=(_scrub(text[:_NON_JSON_KEEP_CHARS]),))
    return _normalise(http_status, data)


def _normalise(http_status: int, data: Mapping[str, Any]) -> FlexFactorErrorBody:
    trace_id: str | None = None
    fields: dict[str, tuple[str, ...]] = {}
    messages: list[str] = []
    codes: list[str] = []
    errors = get_ci(data, "errors")
    source: Mapping[str, Any] = errors if isinstance(errors, Mapping) else data
    for key, value in source.items():
        if not isinstance(key, str):
            continue
        strings = _strings(value, allow_single=source is errors)
        if strings is None:
            continue
        if key.lower() == "traceid":
            trace_id = trace_id or (strings[0] if strings else None)
        elif key.lower() != "errors":
            fields[key] = tuple(_scrub(s) for s in strings)
    if isinstance(errors, list):  # business failure: (message, code, code, flag) tuples
        for item in errors:
            if isinstance(item, Mapping):
                message, code = get_ci(item, "item1"), get_ci(item, "item2")
                if isinstance(message, str) and message:
                    messages.append(_scrub(message))
                if isinstance(code, str | int) and str(code) and str(code) not in codes:
                    codes.append(str(code))
            elif isinstance(item, str):
                messages.append(_scrub(item))
    top_trace = _strings(get_ci(data, "traceId"), allow_single=True)
    if trace_id is None and top_trace:
        trace_id = top_trace[0]
    for name in ("title", "detail", "message", "responseMessage"):
        value = get_ci(data, name)
        if isinstance(value, str) and value and _scrub(value) not in messages:
            messages.append(_scrub(value))
    response_code = get_ci(data, "responseCode")
    if isinstance(response_code, str | int) and str(response_code) and str(response_code) not in codes:
        codes.append(str(response_code))
    return FlexFactorErrorBody(
        http_status=http_status,
        trace_id=trace_id,
        field_errors=fields,
        messages=tuple(messages),
        codes=tuple(codes),
    )


def _strings(value: object, *, allow_single: bool) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    if allow_single and isinstance(value, str):
        return (value,)
    return None


def envelope_failure(body: Mapping[str, Any]) -> FlexFactorErrorBody | None:
    """The business failure in an HTTP 200 envelope (`status` FAILED, any case), or None.

    `success` is deliberately ignored (A17): only `status` decides an outcome."""
    status = get_ci(body, "status")
    if isinstance(status, str) and status.strip().upper() == "FAILED":
        return parse_error_body(200, body)
    return None


def field_messages(body: FlexFactorErrorBody, path: str) -> tuple[str, ...]:
    """The messages for a field path such as `Transaction.ResponseCode`, compared case-insensitively."""
    wanted = path.lower()
    found: list[str] = []
    for key, messages in body.field_errors.items():
        if key.lower() == wanted:
            found.extend(messages)
    return tuple(found)


def _scrub(text: str) -> str:
    # A vendor message may echo what we sent; a card number must still never reach a log line.
    return mask_pans(text)


# --- webhook events (contract 9.1) -----------------------------------------------------------------

WEBHOOK_EVENTS: Final[Mapping[str, Event | None]] = {
    "order.completed": Event.APPROVED,
    "order.expired": Event.EXPIRED,
    "order.cancelled": Event.CANCELLED,
    # Recorded and reported, but they do not move a hand-off.
    "order.refunded": None,
    "payment.chargeback.received": None,
    "order.capturerequired": None,
    "challenge.presented": None,
    "challenge.attempted": None,
    "challenge.passed": None,
    "challenge.failed": None,
    "payout.created": None,
    "payout.updated": None,
}


def event_outcome(event_name: str) -> Event | None:
    """The hand-off event a webhook event name (any case) implies; None for the rest and unknowns."""
    return WEBHOOK_EVENTS.get(event_name.strip().lower())


# --- transport errors ------------------------------------------------------------------------------

# Keyed by qualified class name so that this module needs no `requests` import (ruff TID251).
TRANSPORT_ERRORS: Final[Mapping[str, type[FlexFactorError]]] = {
    # The TCP or TLS connection never completed, so no request byte reached FlexFactor.
    "requests.exceptions.ConnectTimeout": FlexFactorNotSent,
    "requests.exceptions.ProxyError": FlexFactorNotSent,
    "requests.exceptions.SSLError": FlexFactorNotSent,
    # Generic: a reset or a dropped connection after sending. error_for_transport narrows it to
    # FlexFactorNotSent when the cause is a failed connect.
    "requests.exceptions.ConnectionError": FlexFactorUnknownOutcome,
    # The request left; the answer did not arrive whole.
    "requests.exceptions.ReadTimeout": FlexFactorUnknownOutcome,
    "requests.exceptions.Timeout": FlexFactorUnknownOutcome,
    "requests.exceptions.ChunkedEncodingError": FlexFactorUnknownOutcome,
    "requests.exceptions.RetryError": FlexFactorUnknownOutcome,
    "requests.exceptions.RequestException": FlexFactorUnknownOutcome,
    # An answer arrived that we cannot read.
    "requests.exceptions.ContentDecodingError": FlexFactorProtocolError,
    "requests.exceptions.HTTPError": FlexFactorProtocolError,
    "requests.exceptions.JSONDecodeError": FlexFactorProtocolError,
    "requests.exceptions.TooManyRedirects": FlexFactorProtocolError,
    # The request could not even be built: base_url or our call shape is wrong; retrying cannot help.
    "requests.exceptions.InvalidJSONError": FlexFactorConfigError,
    "requests.exceptions.URLRequired": FlexFactorConfigError,
    "requests.exceptions.MissingSchema": FlexFactorConfigError,
    "requests.exceptions.InvalidSchema": FlexFactorConfigError,
    "requests.exceptions.InvalidURL": FlexFactorConfigError,
    "requests.exceptions.InvalidProxyURL": FlexFactorConfigError,
    "requests.exceptions.InvalidHeader": FlexFactorConfigError,
    "requests.exceptions.StreamConsumedError": FlexFactorConfigError,
    "requests.exceptions.UnrewindableBodyError": FlexFactorConfigError,
}

# urllib3 causes inside a requests ConnectionError that prove the request was never written.
_CONNECT_PHASE_CAUSES: Final = frozenset(
    {
        "urllib3.exceptions.NewConnectionError",
        "urllib3.exceptions.NameResolutionError",
        "urllib3.exceptions.ConnectTimeoutError",
        "urllib3.exceptions.ClosedPoolError",
        "urllib3.exceptions.EmptyPoolError",
        "urllib3.exceptions.ProxyError",
        "builtins.ConnectionRefusedError",
    }
)


def _names(exc_type: type[BaseException]) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in exc_type.__mro__]


def error_for_transport(exc: BaseException) -> type[FlexFactorError]:
    """Our error class for an exception `requests` raised: NotSent, UnknownOutcome, Protocol or Config.

    Walks the class hierarchy to the nearest mapped class; an unmapped exception counts as unknown
    outcome, the only safe reading once a request may have left."""
    for name in _names(type(exc)):
        mapped = TRANSPORT_ERRORS.get(name)
        if mapped is None:
            continue
        if mapped is FlexFactorUnknownOutcome and name == "requests.exceptions.ConnectionError":
            return FlexFactorNotSent if _failed_to_connect(exc) else FlexFactorUnknownOutcome
        return mapped
    return FlexFactorUnknownOutcome


def _failed_to_connect(exc: BaseException) -> bool:
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if _CONNECT_PHASE_CAUSES.intersection(_names(type(current))):
            return True
        pending.extend(current.args)
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
    return False
