"""Soft or hard: a decline's classification after the decline-mapping rules (domain.md 2.2)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_INSUFFICIENT_FUNDS_PHRASES",
    "Classification",
    "DeclineType",
    "MappingRule",
    "MappingScope",
    "OrderType",
    "RuleOrderType",
    "classify",
    "is_insufficient_funds",
]

DEFAULT_INSUFFICIENT_FUNDS_PHRASES: Final[tuple[str, ...]] = ("insufficient funds",)


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


@dataclass(frozen=True)
class Classification:
    """A decline after mapping: its type, the rule that decided it (None = the feed's type stands)."""

    decline_type: DeclineType
    rule: MappingRule | None
    display_message: str | None  # the rule's replacement text, if it has one


_COVERED_ORDER_TYPES: Final[dict[RuleOrderType, frozenset[OrderType]]] = {
    RuleOrderType.ALL: frozenset(OrderType),
    RuleOrderType.NEW_SALE: frozenset({OrderType.NEW_SALE, OrderType.UPSALE}),
    RuleOrderType.RECURRING: frozenset({OrderType.REBILL}),
}


def classify(
    *,
    response_type: DeclineType,
    response_text: str,
    order_type: OrderType,
    gateway_id: str,
    gateway_type: str,
    rules: Sequence[MappingRule],
) -> Classification:
    """Soft or hard after the decline-mapping rules (domain.md 2.2).

    A rule matches when its scope names this gateway (MID: by id) or its processor type (GATEWAY),
    its order type covers `order_type`, and its non-empty `contains` occurs in `response_text`,
    case-insensitively. Among matches: MID before GATEWAY, a specific order type before ALL, the
    longer `contains` first, then the lower `position`, then the earlier rule in `rules`.
    With no match the feed's `response_type` stands.
    """
    text = response_text.casefold()
    matches = [
        (index, rule)
        for index, rule in enumerate(rules)
        if _rule_matches(
            rule, text=text, order_type=order_type, gateway_id=gateway_id, gateway_type=gateway_type
        )
    ]
    if not matches:
        return Classification(decline_type=response_type, rule=None, display_message=None)
    _, winner = min(matches, key=_precedence)
    return Classification(decline_type=winner.map_to, rule=winner, display_message=winner.display_message)


def is_insufficient_funds(
    response_text: str, phrases: Iterable[str] = DEFAULT_INSUFFICIENT_FUNDS_PHRASES
) -> bool:
    """True if the processor text contains any of `phrases`, case-insensitively (blank phrases ignored)."""
    text = response_text.casefold()
    return any(phrase.strip() and phrase.strip().casefold() in text for phrase in phrases)


def _rule_matches(
    rule: MappingRule, *, text: str, order_type: OrderType, gateway_id: str, gateway_type: str
) -> bool:
    if rule.scope is MappingScope.MID:
        in_scope = rule.target == gateway_id
    else:
        in_scope = rule.target.casefold() == gateway_type.casefold()
    # An empty `contains` would match every decline; treat it as matching none rather than all.
    needle = rule.contains.casefold()
    return (
        in_scope and order_type in _COVERED_ORDER_TYPES[rule.order_type] and bool(needle) and needle in text
    )


def _precedence(indexed: tuple[int, MappingRule]) -> tuple[int, int, int, int, int]:
    index, rule = indexed
    return (
        0 if rule.scope is MappingScope.MID else 1,
        1 if rule.order_type is RuleOrderType.ALL else 0,
        -len(rule.contains),
        rule.position,
        index,
    )
