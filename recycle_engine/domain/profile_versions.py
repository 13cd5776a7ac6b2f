"""Recycle schedule versions: a profile's ladder as canonical JSON and a short hash of it."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any, Final

from recycle_engine.domain.profiles import AttemptRule, RecycleProfile, ReductionType, Slot

__all__ = ["VERSION_CHARS", "profile_content", "profile_from_content", "profile_version", "version_of"]

VERSION_CHARS: Final = 12  # hex digits of SHA-256 kept: collisions among a profile's few versions are moot


def _amount(value: Decimal) -> str:
    # "5", "5.0" and "5.00" are the same reduction, so they must give the same version.
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def profile_content(profile: RecycleProfile) -> dict[str, Any]:
    """What decides an in-flight subscription's next attempt: the ladder, prices and slot gateways.

    Left out on purpose: the covered gateways (they decide who enters, not how a ladder runs) and
    holdout_percent (the experiment's share, applied when a FlexFactor slot is reached)."""
    return {
        "reduction_type": profile.reduction_type.value,
        "minimum_price": _amount(profile.minimum_price),
        "bill_on_saturday": profile.bill_on_saturday,
        "hold_recycle_price": profile.hold_recycle_price,
        "attempts": [
            {"attempt": a.attempt, "days": a.days, "reduction": _amount(a.reduction), "skip": a.skip}
            for a in sorted(profile.attempts, key=lambda rule: rule.attempt)
        ],
        "slots": {slot.value: profile.slots.get(slot) for slot in (Slot.S4_6, Slot.S7_9, Slot.FINAL)},
    }


def version_of(content: dict[str, Any]) -> str:
    """First VERSION_CHARS hex digits of SHA-256 over the canonical JSON of `content`."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:VERSION_CHARS]


def profile_version(profile: RecycleProfile) -> str:
    return version_of(profile_content(profile))


def profile_from_content(
    profile_id: str,
    content: dict[str, Any],
    *,
    gateways: tuple[str, ...] = (),
    holdout_percent: Decimal = Decimal(0),
) -> RecycleProfile:
    """The profile a stored version describes; raises KeyError or ValueError for content it cannot read."""
    slots = {Slot(name): gateway for name, gateway in content["slots"].items()}
    return RecycleProfile(
        id=profile_id,
        gateways=gateways,
        reduction_type=ReductionType(content["reduction_type"]),
        minimum_price=Decimal(content["minimum_price"]),
        bill_on_saturday=bool(content["bill_on_saturday"]),
        hold_recycle_price=bool(content["hold_recycle_price"]),
        attempts=tuple(
            AttemptRule(
                attempt=int(a["attempt"]),
                days=int(a["days"]),
                reduction=Decimal(a["reduction"]),
                skip=bool(a["skip"]),
            )
            for a in content["attempts"]
        ),
        slots=slots,
        holdout_percent=holdout_percent,
    )
