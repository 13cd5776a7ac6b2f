"""What a FlexFactor result does to orders and subscriptions: the outcome table of SPEC section 1 as data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Final

from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.states import Source
from recycle_engine.money import Money, is_known_currency

__all__ = [
    "OUTCOMES",
    "TRIAL_EXCEPTION",
    "FailureCause",
    "OrderKind",
    "OrderStatus",
    "OutcomeEffect",
    "PurchaseStatus",
    "amount_mismatch",
    "effect_of",
    "leaves_no_payment_token",
    "next_bill_date",
    "order_kind",
    "price_after_approval",
]


class OrderStatus(enum.StrEnum):
    """Order status, as the CRM spells it (domain.md 5)."""

    PARTIAL = "PARTIAL"  # checkout started, payment never submitted
    PENDING = "PENDING"  # held for quality review; becomes COMPLETE or DECLINED
    COMPLETE = "COMPLETE"  # payment succeeded
    DECLINED = "DECLINED"  # payment declined
    REFUNDED = "REFUNDED"  # succeeded, later refunded
    CANCELLED = "CANCELLED"  # succeeded, later cancelled
    COD_PENDING = "COD_PENDING"  # succeeded, awaiting cash on delivery


class PurchaseStatus(enum.StrEnum):
    """Purchase (subscription) status, as the CRM spells it (domain.md 5)."""

    TRIAL = "TRIAL"  # trial options on, no rebill yet
    ACTIVE = "ACTIVE"  # rebills on the next bill date
    PAUSED = "PAUSED"  # billing paused
    PAUSE_SCHEDULED = "PAUSE_SCHEDULED"  # pausing on a set date
    CANCELLED = "CANCELLED"  # bills no more
    CANCELLATION_SCHEDULED = "CANCELLATION_SCHEDULED"  # cancelling on a set date
    COMPLETE = "COMPLETE"  # every configured cycle of a purchase with a final cycle is billed
    RECYCLE_BILLING = "RECYCLE_BILLING"  # a rebill soft-declined; the recycle rules are running
    RECYCLE_FAILED = "RECYCLE_FAILED"  # hard decline, or every attempt or the hand-off failed


class FailureCause(enum.StrEnum):
    """Why a purchase ended in RECYCLE_FAILED (domain.md 3.5)."""

    ALL_ATTEMPTS_DECLINED = "ALL_ATTEMPTS_DECLINED"  # every attempt of the profile declined
    HARD_DECLINE = "HARD_DECLINE"  # the rebill or an attempt hard-declined
    NO_PROFILE = "NO_PROFILE"  # the declining gateway is in no recycle profile
    RECYCLE_DISABLED = "RECYCLE_DISABLED"  # the campaign disables recycle billing
    FLEXFACTOR_FAILED = "FLEXFACTOR_FAILED"  # the hand-off ended DECLINED, EXPIRED or CANCELLED


class OrderKind(enum.StrEnum):
    """The rows of the outcome table: an initial sale or a rebill."""

    NEW_SALE = "new sale"  # NEW_SALE and UPSALE orders
    RECURRING = "recurring"  # REBILL orders


@dataclass(frozen=True)
class OutcomeEffect:
    """The changes one final FlexFactor result makes; None means the status stays as it is."""

    order_status: OrderStatus | None
    subscription_status: PurchaseStatus | None
    # The purchase returns to ACTIVE (COMPLETE after its final cycle) and moves to the next cycle;
    # the caller knows the cycle count, so this is a flag rather than a status.
    advance_cycle: bool
    create_fulfillments: bool  # HOLD records, only for shippable items (the caller checks `shippable`)
    revert_gateway: bool  # the next scheduled rebill goes back to the gateway that declined
    failure_cause: FailureCause | None
    # FlexFactor keeps the card for itself: later rebills run without a stored payment token.
    no_payment_token: bool = False


_UNCHANGED_ON_FAILURE: Final = OutcomeEffect(
    order_status=None,
    subscription_status=None,
    advance_cycle=False,
    create_fulfillments=False,
    revert_gateway=False,
    failure_cause=None,
)

OUTCOMES: Final[Mapping[tuple[OrderKind, bool], OutcomeEffect]] = {
    (OrderKind.NEW_SALE, True): OutcomeEffect(
        order_status=OrderStatus.COMPLETE,
        subscription_status=None,
        advance_cycle=False,
        create_fulfillments=True,
        revert_gateway=False,
        failure_cause=None,
    ),
    (OrderKind.NEW_SALE, False): replace(_UNCHANGED_ON_FAILURE, order_status=OrderStatus.DECLINED),
    (OrderKind.RECURRING, True): OutcomeEffect(
        order_status=OrderStatus.COMPLETE,  # the declined rebill order is paid after all
        subscription_status=None,
        advance_cycle=True,
        create_fulfillments=True,
        revert_gateway=True,
        failure_cause=None,
    ),
    (OrderKind.RECURRING, False): replace(
        _UNCHANGED_ON_FAILURE,
        subscription_status=PurchaseStatus.RECYCLE_FAILED,
        failure_cause=FailureCause.FLEXFACTOR_FAILED,
    ),
}

# A failed salvage of the charge that completes a trial leaves the order's status as it is.
TRIAL_EXCEPTION: Final[Mapping[tuple[OrderKind, bool], OutcomeEffect]] = {
    (OrderKind.NEW_SALE, False): _UNCHANGED_ON_FAILURE,
}

_ORDER_KINDS: Final[Mapping[OrderType, OrderKind]] = {
    OrderType.NEW_SALE: OrderKind.NEW_SALE,
    OrderType.UPSALE: OrderKind.NEW_SALE,
    OrderType.REBILL: OrderKind.RECURRING,
}

# Which hand-off sources can carry which kind of order: recycling is for rebills only,
# reruns and cascades for initial sales only.
_SOURCE_KINDS: Final[Mapping[Source, OrderKind]] = {
    Source.RECYCLE: OrderKind.RECURRING,
    Source.RERUN: OrderKind.NEW_SALE,
    Source.CASCADE: OrderKind.NEW_SALE,
}


def order_kind(order_type: OrderType) -> OrderKind:
    """The outcome-table row of an order type: NEW_SALE and UPSALE are new sales, REBILL recurring."""
    return _ORDER_KINDS[order_type]


def effect_of(
    *, order_type: OrderType, completes_trial: bool, success: bool, recurring_product: bool, source: Source
) -> OutcomeEffect:
    """The changes a final FlexFactor result makes (success = APPROVED; DECLINED, EXPIRED, CANCELLED fail).

    Raises ValueError when `source` cannot carry `order_type` (a RECYCLE hand-off of a new sale, or a
    RERUN or CASCADE of a rebill).
    """
    kind = order_kind(order_type)
    if _SOURCE_KINDS[source] is not kind:
        raise ValueError(f"a {source} hand-off cannot carry a {order_type} order")
    effect = OUTCOMES[(kind, success)]
    if completes_trial:
        effect = TRIAL_EXCEPTION.get((kind, success), effect)
    if leaves_no_payment_token(kind=kind, success=success, recurring_product=recurring_product):
        effect = replace(effect, no_payment_token=True)
    return effect


def leaves_no_payment_token(*, kind: OrderKind, success: bool, recurring_product: bool) -> bool:
    """True when a FlexFactor recovery of a new sale with recurring products leaves no token for rebills."""
    return kind is OrderKind.NEW_SALE and success and recurring_product


def next_bill_date(approved_on: date, billing_interval_days: int) -> date:
    """The purchase's next bill date after a save: the local approval date plus the billing interval."""
    if billing_interval_days < 1:
        raise ValueError(f"billing interval must be at least one day, got {billing_interval_days}")
    return approved_on + timedelta(days=billing_interval_days)


def price_after_approval(*, hold_recycle_price: bool, approved_minor: int, regular_minor: int) -> int:
    """The recurring price after an approval, minor units: the approved one if the profile holds it."""
    return approved_minor if hold_recycle_price else regular_minor


def _shown(minor: int, currency: str) -> str:
    # FlexFactor's currency is not ours to trust: an unknown code is shown as it came, in minor units.
    if is_known_currency(currency):
        return Money(minor, currency).format()
    return f"{minor} minor units of {currency!r}"


def amount_mismatch(
    handed_off_minor: int, currency: str, vendor_minor: int | None, vendor_currency: str | None
) -> str | None:
    """A line for the billing team when FlexFactor's order shows another amount or currency than the
    attempt we handed off; None when they agree, or when FlexFactor shows neither (nothing to compare)."""
    theirs_currency = (vendor_currency or currency).strip().upper()
    theirs_minor = handed_off_minor if vendor_minor is None else vendor_minor
    if (theirs_minor, theirs_currency) == (handed_off_minor, currency.upper()):
        return None
    return (
        f"FlexFactor shows {_shown(theirs_minor, theirs_currency)}; "
        f"we handed off {_shown(handed_off_minor, currency)}"
    )
