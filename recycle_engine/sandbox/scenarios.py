"""Sandbox rules: what /evaluate accepts, which card gets which answer and when, and injectable faults.

Outcome triggers, decided by the card's last four digits (`paymentMethod.cardLast4Digits`, else the
last four of `cardNumber`), first match wins:

    last 4  | MIT, managed mode                      | MIT, sync mode       | CIT
    --------+----------------------------------------+----------------------+---------------------------
    0341    | DECLINED at once                       | DECLINED at once     | DECLINED at once
    (any)   | (rules below)                          | (rules below)        | without payer.phone:
            |                                        |                      | DECLINED at once
    3184    | SUBMITTED; completed 1 day later       | APPROVED at once     | APPROVED at once
    0119    | SUBMITTED; cancelled by FlexFactor     | as managed           | (other rules below)
            | 2 days later                           |                      |
    0259    | SUBMITTED; expires at expiryDateUtc    | as managed           | (other rules below)
    1111    | (other rules below)                    | (other rules below)  | CHALLENGE (order status 0)
    --------+----------------------------------------+----------------------+---------------------------
    any other card: h = SHA-256 of our orderId       |                      |
      MIT: rescued with probability approve_share,   | rescued: APPROVED at | APPROVED with probability
      on day 1 + (h % 20) after submission; else     | once; else as        | cit_approve_share, else
      expires at expiryDateUtc                       | managed              | DECLINED

The vendor sandbox answered DECLINED to a CIT without the payer's phone even on its CHALLENGE card, so
that rule comes before the card triggers. A sync-mode MIT may come without `expiryDateUtc` (the vendor
answered APPROVED to one); with no window, an MIT not rescued at once is DECLINED. Managed mode still
requires the window. `transactionType: "Authorization"` holds the money instead of charging it: an
answer that would be APPROVED is CAPTUREREQUIRED (order status 5, which cancel voids), and a later
rescue ends in status 5 with `order.capturerequired`.

Order statuses (contract section 6): in progress 4, challenge 0, capture required 5, rescued 7,
declined, cancelled or expired 2. An order's `statusName` is the vendor's word for how it got there
(docs/sandbox-vendor-answers.md): its /evaluate answer until it changes, then APPROVED, EXPIRED,
CANCELLED or CAPTUREREQUIRED. Answers given at once send no webhook; later changes send
order.completed, order.cancelled, order.expired or order.capturerequired when the sandbox clock
passes their time.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from recycle_engine.domain.cards import mask

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DRAFT",
    "EVENT_STATUS_NAMES",
    "FAULT_ACTIONS",
    "PROCESSING",
    "STATUS_NAMES",
    "Evaluation",
    "Faults",
    "Plan",
    "parse_time",
    "plan_outcome",
    "validate_evaluate",
]

DRAFT, ONHOLD, CANCELLED, PROBLEM, PROCESSING, CAPTUREREQUIRED, RETURNED, COMPLETED = range(8)
# One name per status code, for the order list's `statusNames` map: the vendor's words where a recorded
# client accepts them (ActiveMerchant's APPROVED, CHALLENGE, PROCESSING, CAPTUREREQUIRED), the portal's
# otherwise. A single order's `statusName` can be more precise (SUBMITTED, DECLINED, EXPIRED).
STATUS_NAMES: Final[Mapping[int, str]] = {
    DRAFT: "CHALLENGE",
    ONHOLD: "ONHOLD",
    CANCELLED: "CANCELLED",
    PROBLEM: "PROBLEM",
    PROCESSING: "PROCESSING",
    CAPTUREREQUIRED: "CAPTUREREQUIRED",
    RETURNED: "RETURNED",
    COMPLETED: "APPROVED",
}
# The statusName an order takes when a planned change or a cancel reaches it.
EVENT_STATUS_NAMES: Final[Mapping[str, str]] = {
    "order.completed": "APPROVED",
    "order.capturerequired": "CAPTUREREQUIRED",
    "order.expired": "EXPIRED",
    "order.cancelled": "CANCELLED",
}

CARD_RESCUED, CARD_DECLINED, CARD_CANCELLED, CARD_EXPIRES, CARD_CHALLENGE = (
    "3184",
    "0341",
    "0119",
    "0259",
    "1111",
)


@dataclass(frozen=True)
class Plan:
    """What /evaluate answers now, the order status it leaves, and the one change planned for later."""

    answer: str  # APPROVED, DECLINED, CHALLENGE or SUBMITTED
    status: int
    final_status: int | None = None
    final_event: str | None = None  # the webhook event sent when the change happens
    outcome_at: datetime | None = None


def _at_once(answer: str, status: int) -> Plan:
    return Plan(answer=answer, status=status, final_status=status)


def _later(status: int, final_status: int, event: str, at: datetime, expiry_at: datetime | None) -> Plan:
    # No rescue or cancellation can happen once the retry window has closed.
    if expiry_at is not None and at >= expiry_at:
        return Plan("SUBMITTED", status, CANCELLED, "order.expired", expiry_at)
    return Plan("SUBMITTED", status, final_status, event, at)


def _order_hash(order_id: str) -> int:
    return int.from_bytes(hashlib.sha256(order_id.encode("utf-8")).digest()[:8], "big")


def plan_outcome(
    *,
    is_mit: bool,
    sync_mit: bool,
    card_last4: str,
    has_payer_phone: bool,
    order_id: str,
    placed_at: datetime,
    expiry_at: datetime | None,
    approve_share: float,
    cit_approve_share: float,
    is_authorization: bool = False,
) -> Plan:
    """The outcome of one accepted /evaluate, following the trigger table of this module."""
    plan = _plan_purchase(
        is_mit=is_mit,
        sync_mit=sync_mit,
        card_last4=card_last4,
        has_payer_phone=has_payer_phone,
        order_id=order_id,
        placed_at=placed_at,
        expiry_at=expiry_at,
        approve_share=approve_share,
        cit_approve_share=cit_approve_share,
    )
    return _held(plan) if is_authorization else plan


def _held(plan: Plan) -> Plan:
    # An authorization holds what a purchase would have charged; nothing else changes.
    if plan.answer == "APPROVED":
        return _at_once("CAPTUREREQUIRED", CAPTUREREQUIRED)
    if plan.final_event == "order.completed":
        return Plan(plan.answer, plan.status, CAPTUREREQUIRED, "order.capturerequired", plan.outcome_at)
    return plan


def _plan_purchase(
    *,
    is_mit: bool,
    sync_mit: bool,
    card_last4: str,
    has_payer_phone: bool,
    order_id: str,
    placed_at: datetime,
    expiry_at: datetime | None,
    approve_share: float,
    cit_approve_share: float,
) -> Plan:
    if card_last4 == CARD_DECLINED:
        return _at_once("DECLINED", CANCELLED)
    if not is_mit:
        # Recorded: the vendor declines a CIT without the payer's phone before any card rule.
        if not has_payer_phone:
            return _at_once("DECLINED", CANCELLED)
        if card_last4 == CARD_RESCUED:
            return _at_once("APPROVED", COMPLETED)
        if card_last4 == CARD_CHALLENGE:
            if expiry_at is None:
                return Plan("CHALLENGE", DRAFT)
            return Plan("CHALLENGE", DRAFT, CANCELLED, "order.expired", expiry_at)
        share = (_order_hash(order_id) % 10_000) / 10_000
        return (
            _at_once("APPROVED", COMPLETED) if share < cit_approve_share else _at_once("DECLINED", CANCELLED)
        )

    if sync_mit and expiry_at is None:
        # No window to keep working in: a sync MIT is rescued at once or not at all.
        if card_last4 == CARD_RESCUED or (
            card_last4 not in (CARD_CANCELLED, CARD_EXPIRES)
            and (_order_hash(order_id) % 10_000) / 10_000 < approve_share
        ):
            return _at_once("APPROVED", COMPLETED)
        return _at_once("DECLINED", CANCELLED)
    if card_last4 == CARD_CANCELLED:
        return _later(PROCESSING, CANCELLED, "order.cancelled", placed_at + timedelta(days=2), expiry_at)
    if card_last4 == CARD_EXPIRES:
        return _later(PROCESSING, CANCELLED, "order.expired", expiry_at or placed_at, expiry_at)
    if card_last4 == CARD_RESCUED:
        rescued_at: datetime | None = placed_at + timedelta(days=1)
    else:
        h = _order_hash(order_id)
        rescued_at = (
            placed_at + timedelta(days=1 + (h // 10_000) % 20)
            if (h % 10_000) / 10_000 < approve_share
            else None
        )
    if rescued_at is None:
        return _later(PROCESSING, CANCELLED, "order.expired", expiry_at or placed_at, expiry_at)
    if sync_mit and (expiry_at is None or rescued_at < expiry_at):
        return _at_once("APPROVED", COMPLETED)
    return _later(PROCESSING, COMPLETED, "order.completed", rescued_at, expiry_at)


# --- faults -------------------------------------------------------------------------------------------

FAULT_ACTIONS: Final = frozenset({"503", "502", "500_after", "429", "timeout", "timeout_after", "malformed"})
_RATES = ("error_5xx_rate", "rate_429_rate", "timeout_rate", "drop_webhook_rate", "duplicate_webhook_rate")
RETRY_AFTER_FORMS: Final = ("seconds", "http-date")


@dataclass
class ScriptedFault:
    """Answer the next `count` requests to `path` (relative to /v1; None = any) with `action`."""

    action: str
    count: int = 1
    path: str | None = None


@dataclass
class FaultSettings:
    """Faults in force. Latency delays every answer of the API itself (401 and gateway faults come at once)."""

    latency_ms: int = 0
    error_5xx_rate: float = 0.0
    rate_429_rate: float = 0.0
    retry_after_s: int = 1
    # How a 429 says it: delta-seconds, or an HTTP date retry_after_s on from the sandbox clock.
    retry_after_as: str = "seconds"
    timeout_rate: float = 0.0
    timeout_hang_s: float = 30.0
    drop_webhook_rate: float = 0.0
    duplicate_webhook_rate: float = 0.0
    script: list[ScriptedFault] = field(default_factory=list)


def _normalise_path(path: str) -> str:
    path = "/" + path.strip().strip("/")
    return path[3:] if path.startswith("/v1/") else path


class Faults:
    """The faults now in force. Random rates draw from one RNG seeded by the config, so runs repeat."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.settings = FaultSettings()
        self.active = False  # checked on the hot path before taking the lock

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self._seed)
            self.settings = FaultSettings()
            self.active = False

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a POST /_sandbox/faults body; raises ValueError naming the first bad field."""
        if changes.get("reset"):
            self.reset()
        with self._lock:
            new = FaultSettings(**{k: v for k, v in asdict(self.settings).items() if k != "script"})
            new.script = list(self.settings.script)
            for key, value in changes.items():
                if key in ("reset", "script"):
                    continue
                if key == "retry_after_as":
                    if value not in RETRY_AFTER_FORMS:
                        raise ValueError(f"retry_after_as must be one of {list(RETRY_AFTER_FORMS)}")
                    new.retry_after_as = value
                    continue
                if not hasattr(new, key):
                    raise ValueError(f"unknown fault {key!r}")
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                if key in _RATES and value > 1:
                    raise ValueError(f"{key} must lie between 0 and 1")
                setattr(new, key, int(value) if key in ("latency_ms", "retry_after_s") else float(value))
            for entry in changes.get("script") or ():
                new.script.append(_scripted(entry))
            self.settings = new
            self.active = _is_active(new)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self.settings)

    def next_action(self, path: str, template: str) -> str | None:
        """The fault for this request: the first matching script entry, else a random draw, else None."""
        with self._lock:
            s = self.settings
            for entry in s.script:
                if entry.path is None or entry.path in (path, template):
                    entry.count -= 1
                    if entry.count <= 0:
                        s.script.remove(entry)
                    self.active = _is_active(s)
                    return entry.action
            roll = self._rng.random()
            if roll < s.error_5xx_rate:
                return self._rng.choice(("503", "502", "500_after"))
            if roll < s.error_5xx_rate + s.rate_429_rate:
                return "429"
            if roll < s.error_5xx_rate + s.rate_429_rate + s.timeout_rate:
                return "timeout"
            return None

    def webhook_fate(self) -> tuple[bool, bool]:
        """(drop it, send it twice) for one webhook event."""
        with self._lock:
            s = self.settings
            if not (s.drop_webhook_rate or s.duplicate_webhook_rate):
                return False, False
            return self._rng.random() < s.drop_webhook_rate, self._rng.random() < s.duplicate_webhook_rate


def _is_active(s: FaultSettings) -> bool:
    return bool(s.script or s.latency_ms or s.error_5xx_rate or s.rate_429_rate or s.timeout_rate)


def _scripted(entry: Any) -> ScriptedFault:
    if not isinstance(entry, Mapping) or entry.get("action") not in FAULT_ACTIONS:
        raise ValueError(f"script entries need an action among {sorted(FAULT_ACTIONS)}")
    count = entry.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("script count must be an integer >= 1")
    path = entry.get("path")
    return ScriptedFault(str(entry["action"]), count, _normalise_path(str(path)) if path else None)


# --- what /evaluate accepts (assumption A2) ------------------------------------------------------------

_TRANSACTION_FIELDS = (
    "Id",
    "Amount",
    "Currency",
    "ResponseCode",
    "ResponseCodeSource",
    "AvsResultCode",
    "CvvResultCode",
    "CavvResultCode",
)


@dataclass(frozen=True)
class Evaluation:
    """The parts of an accepted /evaluate body the sandbox acts on."""

    order_id: str
    idempotency_key: str
    mid: str
    is_mit: bool
    amount: int
    currency: str
    card_last4: str
    card_masked: str  # the most of the card number a log line may show
    has_payer_phone: bool
    expiry_at: datetime | None
    is_authorization: bool = False  # transactionType Authorization: hold, do not charge


_INVALID_EXPIRY: Final = ["The field ExpiryDateUtc is invalid."]  # the vendor's recorded words
_TRANSACTION_TYPES: Final = {"purchase": False, "authorization": True}


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 instant as aware UTC (no offset = UTC), or None if it does not parse."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _present(value: Any) -> bool:
    # The vendor treats an empty string as missing, so do we.
    return value is not None and not (isinstance(value, str) and not value.strip())


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _section(root: Mapping[str, Any], name: str, errors: dict[str, list[str]]) -> dict[str, Any] | None:
    value = root.get(name.lower())
    if not isinstance(value, Mapping):
        errors[name] = [f"The {name} field is required."]
        return None
    return {str(k).lower(): v for k, v in value.items()}


def validate_evaluate(
    root: Mapping[str, Any], *, mid: str, max_expiry_days: int, now: datetime, sync_mit: bool = False
) -> tuple[dict[str, list[str]], Evaluation | None]:
    """Field errors by path ("Transaction.ResponseCode") and, when there are none, the evaluation.

    `root` holds the body's top-level names in lower case; nested names are matched case-insensitively.
    `sync_mit` says the merchant's MIT mode is sync, where an MIT may come without `expiryDateUtc`.
    """
    errors: dict[str, list[str]] = {}

    def need(section: Mapping[str, Any], name: str, path: str) -> None:
        if not _present(section.get(name.lower())):
            errors[path] = [f"The {name} field is required."]

    for name in ("IsDeclined", "Mid", "IdempotencyKey"):
        need(root, name, name)
    if not _present(root.get("orderid")):
        errors["OrderId"] = ["Merchant's orderId is required"]
    if "IsDeclined" not in errors and _flag(root["isdeclined"]) is None:
        errors["IsDeclined"] = ["The IsDeclined field must be true or false."]
    if "Mid" not in errors and str(root["mid"]).strip().lower() != mid.lower():
        errors["Mid"] = ["The Mid is not a merchant of these credentials."]
    is_mit = _flag(root.get("ismit")) if _present(root.get("ismit")) else False
    if is_mit is None:
        errors["IsMIT"] = ["The IsMIT field must be true or false."]
    raw_type = root.get("transactiontype")
    is_authorization = _TRANSACTION_TYPES.get(str(raw_type).strip().lower()) if _present(raw_type) else False
    if is_authorization is None:
        errors["TransactionType"] = ["The TransactionType must be Purchase or Authorization."]

    transaction = _section(root, "Transaction", errors)
    if transaction is not None:
        for name in _TRANSACTION_FIELDS:
            need(transaction, name, f"Transaction.{name}")
        amount = transaction.get("amount")
        if "Transaction.Amount" not in errors and (type(amount) is not int or amount <= 0):
            errors["Transaction.Amount"] = ["The field Amount must be a whole number of minor units above 0."]
    payer = _section(root, "Payer", errors)
    if payer is not None:
        need(payer, "Email", "Payer.Email")
    _section(root, "BillingInformation", errors)
    method = _section(root, "PaymentMethod", errors)
    if method is not None:
        need(method, "CardNumber", "PaymentMethod.CardNumber")

    expiry_at = None
    raw_expiry = root.get("expirydateutc")
    if _present(raw_expiry):
        expiry_at = parse_time(raw_expiry)
        if expiry_at is None:
            errors["ExpiryDateUtc"] = _INVALID_EXPIRY
        elif expiry_at <= now:
            errors["ExpiryDateUtc"] = ["The ExpiryDateUtc must lie in the future."]
        elif expiry_at > now + timedelta(days=max_expiry_days):
            errors["ExpiryDateUtc"] = [f"The ExpiryDateUtc must be at most {max_expiry_days} days ahead."]
    elif is_mit and not sync_mit:
        # Managed mode needs the window to work in; sync mode answers at once (the vendor took null).
        errors["ExpiryDateUtc"] = _INVALID_EXPIRY

    if errors or transaction is None or payer is None or method is None:
        return errors, None
    last4 = str(method.get("cardlast4digits") or "").strip() or str(method["cardnumber"]).strip()
    return errors, Evaluation(
        order_id=str(root["orderid"]),
        idempotency_key=str(root["idempotencykey"]),
        mid=str(root["mid"]).strip(),
        is_mit=bool(is_mit),
        amount=int(transaction["amount"]),
        currency=str(transaction["currency"]).strip().upper(),
        card_last4=last4[-4:],
        card_masked=mask(str(method["cardnumber"]).strip()),
        has_payer_phone=_present(payer.get("phone")),
        expiry_at=expiry_at,
        is_authorization=bool(is_authorization),
    )
