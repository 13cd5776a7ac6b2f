"""Soft or hard: a decline's classification after the decline-mapping rules (domain.md 2.2)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DeclineType", "MappingRule", "MappingScope", "OrderType", "RuleOrderType"]


class OrderType(enum.StrEnum):
    NEW_SALE = "NEW_SALE"
    UPSALE = "UPSALE"
    REBILL = "REBILL"


class DeclineType(enum.StrEnum):
    SOFT = "SOFT"
    HARD = "HARD"


class RuleOrderType(enum.StrEnum):
    ALL = "ALL"
    NEW_SALE = "NEW_SALE"  # covers NEW_SALE and UPSALE
    RECURRING = "RECURRING"  # covers REBILL


class MappingScope(enum.StrEnum):
    MID = "MID"  # one configured gateway, by id
    GATEWAY = "GATEWAY"  # every gateway of a processor type


@dataclass(frozen=True)
class MappingRule:
    """Re-classify a decline whose processor text contains `contains` (case-insensitive)."""

    scope: MappingScope
    target: str  # gateway id (MID scope) or gateway type (GATEWAY scope)
    order_type: RuleOrderType
    contains: str
    map_to: DeclineType
    display_message: str | None = None
    position: int = 0  # order in settings, for the last tie-break
