"""Entry ids and references: unique ids, known gateways and cascade profiles, FlexFactor refused."""

from __future__ import annotations

import re
from typing import Any, Final

from recycle_engine.config_sections import Converter
from recycle_engine.config_yaml import INVALID, _parent, _Reader
from recycle_engine.settings import GatewayType

__all__ = [
    "_FF_DECLINING",
    "_FF_IN_ATRI",
    "_FF_ON_PRODUCT",
    "_cascade_profile_ref",
    "_gateway_ref",
    "_id",
    "_id_text",
]

_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # gateway ids end up in webhook URL paths


def _id_text(r: _Reader, path: str, value: Any) -> Any:
    # CRM ids are often numbers (`id: 12`); they are names here all the same.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _ID_TEXT.fullmatch(value):
        r.add(path, f"must be an id of letters, digits, '.', '_' or '-'; got {r.show(path, value)}")
        return INVALID
    return value


def _id(what: str) -> Converter:
    """An entry's id, unique within its list (`gateways[2].id` is unique in `gateways`)."""

    def convert(r: _Reader, path: str, value: Any) -> Any:
        entry_id = _id_text(r, path, value)
        if entry_id is INVALID:
            return INVALID
        seen = r.ids.setdefault(_parent(_parent(path)), {})
        if entry_id in seen:
            first = seen[entry_id]
            r.add(
                path, f"duplicate {what} id {entry_id!r} (first at {_parent(first)}, line {r.line_of(first)})"
            )
            return INVALID
        seen[entry_id] = path
        return entry_id

    return convert


def _gateway_ref(flexfactor_refused: str | None = None) -> Converter:
    """A gateway id that must exist; `flexfactor_refused` says why a FlexFactor gateway cannot go here."""

    def convert(r: _Reader, path: str, value: Any) -> Any:
        gateway_id = _id_text(r, path, value)
        if gateway_id is INVALID:
            return INVALID
        known = r.ids.get("gateways", {})
        if gateway_id not in known:
            r.add(path, f"unknown gateway {gateway_id!r}; gateways: {', '.join(known) or 'none'}")
            return INVALID
        if flexfactor_refused and r.gateway_types.get(gateway_id) is GatewayType.FLEXFACTOR:
            r.add(path, f"{gateway_id!r} is a FlexFactor gateway: {flexfactor_refused}")
            return INVALID
        return gateway_id

    return convert


def _cascade_profile_ref(r: _Reader, path: str, value: Any) -> Any:
    profile_id = _id_text(r, path, value)
    if profile_id is INVALID:
        return INVALID
    known = r.ids.get("cascade_profiles", {})
    if profile_id not in known:
        r.add(path, f"unknown cascade profile {profile_id!r}; cascade profiles: {', '.join(known) or 'none'}")
        return INVALID
    return profile_id


_FF_ON_PRODUCT: Final = "FlexFactor is for decline salvage only and never sells a campaign product"
_FF_IN_ATRI: Final = "FlexFactor is never in an ATRI (routing) gateway profile"
_FF_DECLINING: Final = (
    "a recycle profile covers declining gateways and FlexFactor never is one; "
    "name it in a slot (4-6, 7-9 or final) instead"
)
