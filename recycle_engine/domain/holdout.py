"""Holdout assignment: a stable hash of the subscription id decides FlexFactor or the holdout group."""

from __future__ import annotations

import enum
import hashlib
from decimal import Decimal
from typing import Final

__all__ = ["BUCKETS", "Arm", "arm_for", "holdout_bucket", "in_holdout"]

BUCKETS: Final = 10_000  # 0.01-point resolution, so a share such as 12.5 % is exact
# A fixed salt keeps the assignment apart from any other hash of the same ids (ours or the CRM's).
# Changing it reshuffles every group: never change it while an experiment runs.
_SALT: Final = b"recycle-engine/holdout/v1:"


class Arm(enum.StrEnum):
    """Which group a subscription that reached a FlexFactor slot belongs to."""

    FLEXFACTOR = "FLEXFACTOR"  # handed off as the slot says
    HOLDOUT = "HOLDOUT"  # kept on the declining gateway, to measure what FlexFactor adds


def holdout_bucket(subscription_id: str) -> int:
    """The subscription's bucket, 0..BUCKETS-1: SHA-256 of salt + id, first 8 bytes, modulo BUCKETS."""
    digest = hashlib.sha256(_SALT + subscription_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_holdout(subscription_id: str, percent: Decimal | int | float) -> bool:
    """True when the subscription falls in the holdout share `percent` (0..100).

    The same id always gives the same answer, on every run and host; raising the share only adds
    subscriptions to the holdout (a bucket below 10 % is also below 20 %)."""
    share = Decimal(str(percent))
    if not 0 <= share <= 100:
        raise ValueError(f"holdout percent must be 0..100, got {share}")
    return holdout_bucket(subscription_id) < share * BUCKETS / 100


def arm_for(subscription_id: str, percent: Decimal | int | float) -> Arm:
    return Arm.HOLDOUT if in_holdout(subscription_id, percent) else Arm.FLEXFACTOR
