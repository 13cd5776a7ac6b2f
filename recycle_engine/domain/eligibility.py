"""May a decline go to FlexFactor (recycle slot, rerun or cascade), and if not, for which reason."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from recycle_engine.domain.declines import (
    DEFAULT_INSUFFICIENT_FUNDS_PHRASES,
    DeclineType,
    OrderType,
    is_insufficient_funds,
)
from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.domain.profiles import Slot

__all__ = [
    "FLEXFACTOR_SLOTS",
    "Eligibility",
    "Refusal",
    "cascade_eligibility",
    "cascade_refusal",
    "recycle_handoff_allowed",
    "rerun_eligibility",
    "rerun_refusal",
]

FLEXFACTOR_SLOTS: Final = frozenset({Slot.S4_6, Slot.S7_9, Slot.FINAL})


class Refusal(enum.StrEnum):
    """Why a decline may not go to FlexFactor (stable codes for logs, exports and CLI output)."""

    HARD_DECLINE = "HARD_DECLINE"
    BASIC_SLOT = "BASIC_SLOT"
    NOT_NEW_SALE = "NOT_NEW_SALE"
    ORDER_COMPLETE = "ORDER_COMPLETE"
    NOT_DECLINED = "NOT_DECLINED"
    VIA_ATRI = "VIA_ATRI"
    NOT_FLEXFACTOR = "NOT_FLEXFACTOR"
    OPEN_HANDOFF = "OPEN_HANDOFF"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    NO_IP_ADDRESS = "NO_IP_ADDRESS"
    NOT_IN_CASCADE_PATH = "NOT_IN_CASCADE_PATH"


@dataclass(frozen=True)
class Eligibility:
    """Yes, or no with a reason code and a short sentence for people."""

    eligible: bool
    reason_code: Refusal | None = None
    reason: str | None = None


ELIGIBLE: Final = Eligibility(eligible=True)


def _refused(code: Refusal, reason: str) -> Eligibility:
    return Eligibility(eligible=False, reason_code=code, reason=reason)


def recycle_handoff_allowed(decline_type: DeclineType, slot: Slot) -> Eligibility:
    """May a recycle attempt in `slot` go to FlexFactor: soft declines (after mapping), slots 4-6, 7-9, final."""
    if decline_type is DeclineType.HARD:
        return _refused(Refusal.HARD_DECLINE, "Hard declines are never sent to FlexFactor.")
    if slot not in FLEXFACTOR_SLOTS:
        return _refused(Refusal.BASIC_SLOT, f"Attempts of slot {slot} never go to FlexFactor.")
    return ELIGIBLE


def rerun_eligibility(
    *,
    order_type: OrderType,
    order_status: OrderStatus,
    decline_type: DeclineType,
    gateway_is_flexfactor: bool,
    named_via_atri: bool,
    has_open_handoff: bool,
) -> Eligibility:
    """May this order be rerun on FlexFactor (domain.md 9); the first failed check gives the reason.

    `decline_type` is the latest decline after mapping; `named_via_atri` is true when the gateway was
    reached through an ATRI profile rather than named directly.
    """
    if order_type is not OrderType.NEW_SALE:
        return _refused(
            Refusal.NOT_NEW_SALE, f"Only declined new sales can be rerun, not {order_type} orders."
        )
    if order_status is OrderStatus.COMPLETE:
        return _refused(Refusal.ORDER_COMPLETE, "The order is already COMPLETE.")
    if order_status is not OrderStatus.DECLINED:
        return _refused(Refusal.NOT_DECLINED, f"The order is {order_status}, not DECLINED.")
    if named_via_atri:
        return _refused(Refusal.VIA_ATRI, "FlexFactor must be named directly, never through an ATRI profile.")
    if not gateway_is_flexfactor:
        return _refused(Refusal.NOT_FLEXFACTOR, "The gateway is not a FlexFactor gateway.")
    if decline_type is DeclineType.HARD:
        return _refused(
            Refusal.HARD_DECLINE, "The latest decline is hard; a hard-declined sale cannot be rerun."
        )
    if has_open_handoff:
        return _refused(Refusal.OPEN_HANDOFF, "The order already has an open FlexFactor hand-off.")
    return ELIGIBLE


def rerun_refusal(
    *,
    order_type: OrderType,
    order_status: OrderStatus,
    decline_type: DeclineType,
    gateway_is_flexfactor: bool,
    named_via_atri: bool,
    has_open_handoff: bool,
) -> str | None:
    """Why this order may not be rerun on FlexFactor, as a short sentence; None when it may."""
    return rerun_eligibility(
        order_type=order_type,
        order_status=order_status,
        decline_type=decline_type,
        gateway_is_flexfactor=gateway_is_flexfactor,
        named_via_atri=named_via_atri,
        has_open_handoff=has_open_handoff,
    ).reason


def cascade_eligibility(
    *,
    order_type: OrderType,
    decline_type: DeclineType,
    response_text: str,
    insufficient_funds_phrases: Iterable[str] = DEFAULT_INSUFFICIENT_FUNDS_PHRASES,
    ip_address: str | None,
    gateway_in_cascade_path: bool,
    cascade_all: bool,
) -> Eligibility:
    """May this decline cascade to FlexFactor in real time (domain.md 4 and 8).

    Only soft-declined initial sales (NEW_SALE) with an `ip_address`, never insufficient funds, and only
    when a cascade profile leads the declining gateway to FlexFactor, unless `cascade_all` is set.
    """
    if order_type is not OrderType.NEW_SALE:
        return _refused(Refusal.NOT_NEW_SALE, f"Only initial sales cascade, not {order_type} orders.")
    if decline_type is DeclineType.HARD:
        return _refused(Refusal.HARD_DECLINE, "Hard declines never cascade.")
    if is_insufficient_funds(response_text, insufficient_funds_phrases):
        return _refused(Refusal.INSUFFICIENT_FUNDS, "Insufficient funds declines never cascade.")
    if not (ip_address or "").strip():
        return _refused(Refusal.NO_IP_ADDRESS, "A cascade needs the order's ip_address.")
    if not (cascade_all or gateway_in_cascade_path):
        return _refused(
            Refusal.NOT_IN_CASCADE_PATH, "No cascade profile leads from the declining gateway to FlexFactor."
        )
    return ELIGIBLE


def cascade_refusal(
    *,
    order_type: OrderType,
    decline_type: DeclineType,
    response_text: str,
    insufficient_funds_phrases: Iterable[str] = DEFAULT_INSUFFICIENT_FUNDS_PHRASES,
    ip_address: str | None,
    gateway_in_cascade_path: bool,
    cascade_all: bool,
) -> str | None:
    """Why this decline may not cascade to FlexFactor, as a short sentence; None when it may."""
    return cascade_eligibility(
        order_type=order_type,
        decline_type=decline_type,
        response_text=response_text,
        insufficient_funds_phrases=insufficient_funds_phrases,
        ip_address=ip_address,
        gateway_in_cascade_path=gateway_in_cascade_path,
        cascade_all=cascade_all,
    ).reason
