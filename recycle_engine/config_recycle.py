"""Recycle profiles (covered gateways, attempt ladder, slots) and decline-mapping rules: keys and checks."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from recycle_engine.config_refs import _FF_DECLINING, _gateway_ref, _id
from recycle_engine.config_sections import Key, _apply, _complete, _list, _optional, _section
from recycle_engine.config_values import _bool, _decimal, _enum, _int, _text
from recycle_engine.config_yaml import INVALID, REQUIRED, _join, _kind, _parent, _Reader
from recycle_engine.domain.declines import DeclineType, MappingRule, MappingScope, RuleOrderType
from recycle_engine.domain.profiles import (
    FINAL,
    AttemptRule,
    RecycleProfile,
    ReductionType,
    Slot,
    attempt_label,
)
from recycle_engine.settings import GatewayType

__all__ = ["_decline_mapping", "_recycle_profile"]


def _recycle_gateway(r: _Reader, path: str, value: Any) -> Any:
    gateway_id = _gateway_ref(_FF_DECLINING)(r, path, value)
    if gateway_id is INVALID:
        return INVALID
    first = r.recycle_owner.setdefault(gateway_id, path)
    if first == path:
        return gateway_id
    owner = _parent(_parent(first))
    if owner == _parent(_parent(path)):
        r.add(path, f"gateway {gateway_id!r} is listed twice in this profile (line {r.line_of(first)})")
    else:
        r.add(
            path,
            f"gateway {gateway_id!r} is already in recycle profile {r.id_at(owner, 'recycle_profiles')!r} "
            f"(line {r.line_of(first)}); a gateway belongs to at most one recycle profile",
        )
    return INVALID


def _attempt_number(r: _Reader, path: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "final":
        return FINAL
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 9:
        r.add(path, f"must be 1..9 or final; got {r.show(path, value)}")
        return INVALID
    return number


_ATTEMPT_KEYS: Final = {
    "attempt": Key(_attempt_number, REQUIRED, "1..9 or final"),
    "days": Key(
        _int(0, 365), REQUIRED, "days after the previous attempt that ran (attempt 1: after the decline)"
    ),
    "reduction": Key(_decimal(), "0", "added to the reduction so far: percent of the original, or an amount"),
    "skip": Key(_bool, False, "true: never charged; adds no days and no reduction"),
}


def _attempts(r: _Reader, path: str, raw: Any) -> Any:
    """The ladder as (path, AttemptRule) pairs, so the profile can point at a bad reduction."""
    if not isinstance(raw, list) or not raw:
        r.add(path, 'must list at least one attempt, e.g. - {attempt: 1, days: 2, reduction: "0"}')
        return INVALID
    rules: list[tuple[str, AttemptRule]] = []
    first_path: dict[int, str] = {}
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        values = _section(r, item_path, item, _ATTEMPT_KEYS)
        number = values.get("attempt")
        if number in first_path:
            first = first_path[number]
            r.add(
                _join(item_path, "attempt"),
                f"attempt {attempt_label(number)} is listed twice (also {first}, line {r.line_of(first)})",
            )
            continue
        if number is not None:
            first_path[number] = item_path
        if _complete(values, _ATTEMPT_KEYS):
            rules.append((item_path, AttemptRule(**values)))
    numbered = sum(
        1 for item in raw if not (isinstance(item, dict) and str(item.get("attempt")).lower() == "final")
    )
    if numbered > 9:
        r.add(path, f"at most nine numbered attempts plus final; found {numbered} numbered")
    return tuple(rules)


_SLOT_NAMES: Final = {"4-6": Slot.S4_6, "7-9": Slot.S7_9, "final": Slot.FINAL}


def _slots(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        r.add(path, f"must map slots 4-6, 7-9 and final to a gateway or null, not {_kind(raw)}")
        return INVALID
    slots: dict[Slot, str | None] = dict.fromkeys(_SLOT_NAMES.values(), None)
    for name, value in raw.items():
        slot_path = _join(path, name)
        slot = _SLOT_NAMES.get(name.strip().lower())
        if slot is None:
            is_flexfactor = isinstance(value, str) and r.gateway_types.get(value) is GatewayType.FLEXFACTOR
            reason = (
                "FlexFactor can be chosen only for slots 4-6, 7-9 and final"
                if is_flexfactor
                else f"unknown slot {name!r}; slots: 4-6, 7-9, final"
            )
            r.add(slot_path, f"{reason}; attempts 1-3 always run on the declining gateway")
            continue
        gateway_id = _apply(_optional(_gateway_ref()), r, slot_path, value)
        if gateway_id is not INVALID:
            slots[slot] = gateway_id
    return slots


_RECYCLE_PROFILE_KEYS: Final = {
    "id": Key(_id("recycle profile"), REQUIRED, "unique name"),
    "gateways": Key(
        _list(_recycle_gateway), REQUIRED, "declining gateways it covers; each in one profile at most"
    ),
    "reduction_type": Key(_enum(ReductionType, "reduction type"), "percent", "percent or flat"),
    "minimum_price": Key(_decimal(), "0", "a reduced price never goes below this"),
    "bill_on_saturday": Key(_bool, False, "move every attempt forward to a Saturday"),
    "hold_recycle_price": Key(
        _bool, False, "an approval at a reduced price keeps that price for later rebills"
    ),
    "attempts": Key(_attempts, REQUIRED, "re-attempts 1..9 and final"),
    "slots": Key(_slots, {}, "gateway of slots 4-6, 7-9, final; null or absent: the declining gateway"),
    "holdout_percent": Key(
        _decimal(Decimal(100)),
        "0",
        "percent of subscriptions kept on the declining gateway at FlexFactor slots (holdout), to measure lift",
    ),
}


def _recycle_profile(r: _Reader, path: str, raw: Any) -> Any:
    values = _section(r, path, raw, _RECYCLE_PROFILE_KEYS)
    if values.get("reduction_type") is ReductionType.PERCENT:
        for item_path, rule in values.get("attempts", ()):
            if rule.reduction > 100:
                r.add(
                    _join(item_path, "reduction"), f"a percent reduction must be 0..100; got {rule.reduction}"
                )
    if not _complete(values, _RECYCLE_PROFILE_KEYS):
        return INVALID
    attempts = tuple(sorted((rule for _, rule in values.pop("attempts")), key=lambda rule: rule.attempt))
    return RecycleProfile(attempts=attempts, **values)


_MAPPING_KEYS: Final = {
    "gateway": Key(_optional(_gateway_ref()), None, "one gateway by id (MID scope)"),
    "gateway_type": Key(_optional(_enum(GatewayType, "gateway type")), None, "every gateway of a type"),
    "order_type": Key(_enum(RuleOrderType, "order type"), "ALL", "ALL, NEW_SALE (and upsales) or RECURRING"),
    "contains": Key(_text(), REQUIRED, "text the processor's message contains (case-insensitive)"),
    "map_to": Key(_enum(DeclineType, "decline type"), REQUIRED, "SOFT or HARD"),
    "display_message": Key(_optional(_text()), None, "text shown instead of the processor's"),
}


def _decline_mapping(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.add(path, f"must be a list of rules, not {_kind(raw)}")
        return INVALID
    rules: list[MappingRule] = []
    for position, item in enumerate(raw):
        item_path = f"{path}[{position}]"
        values = _section(r, item_path, item, _MAPPING_KEYS)
        written = [name for name in ("gateway", "gateway_type") if isinstance(item, dict) and item.get(name)]
        if len(written) != 1:
            r.add(
                item_path,
                "needs exactly one of gateway (one gateway by id: MID scope) "
                "or gateway_type (every gateway of a type: Gateway scope)",
            )
            continue
        if not _complete(values, _MAPPING_KEYS):
            continue
        by_gateway = values["gateway"] is not None
        rules.append(
            MappingRule(
                scope=MappingScope.MID if by_gateway else MappingScope.GATEWAY,
                target=values["gateway"] if by_gateway else values["gateway_type"].value,
                order_type=values["order_type"],
                contains=values["contains"],
                map_to=values["map_to"],
                display_message=values["display_message"],
                position=position,
            )
        )
    return tuple(rules)
