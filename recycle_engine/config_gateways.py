"""The gateways section: simulated processors and FlexFactor gateways, their key tables and checks."""

from __future__ import annotations

import re
from typing import Any, Final

from recycle_engine.config_refs import _id
from recycle_engine.config_sections import Key, _apply, _complete, _keyed, _mapping, _optional, _section
from recycle_engine.config_values import (
    _bool,
    _choice,
    _enum,
    _http_url,
    _int,
    _number,
    _secret,
    _signing_key,
    _text,
)
from recycle_engine.config_yaml import INVALID, REQUIRED, _join, _kind, _parent, _Reader
from recycle_engine.settings import (
    FlexFactorSettings,
    GatewaySettings,
    GatewayType,
    NmiSettings,
    SimulatedSettings,
)

__all__ = ["_gateways"]


_SIMULATED_RESULTS: Final = {
    "APPROVED": "APPROVED",
    "SOFT_DECLINE": "SOFT_DECLINE",
    "HARD_DECLINE": "HARD_DECLINE",
}


def _card_results(r: _Reader, path: str, raw: Any) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.add(path, f"must map card last 4 digits to a result, not {_kind(raw)}")
        return INVALID
    result_of = _choice(_SIMULATED_RESULTS, "result")
    results: dict[str, str] = {}
    for last4, value in raw.items():
        if not re.fullmatch(r"\d{4}", last4):
            r.add(_join(path, last4), f"{last4!r} is not the last 4 digits of a card")
            continue
        result = _apply(result_of, r, _join(path, last4), value)
        if result is not INVALID:
            results[last4] = result
    return results


_SIMULATED_KEYS: Final = {
    "default": Key(
        _choice(_SIMULATED_RESULTS, "result"), "SOFT_DECLINE", "result of every charge not overridden"
    ),
    "by_card_last4": Key(_card_results, {}, 'results by card last 4, e.g. {"0000": APPROVED}'),
}
_GATEWAY_KEYS: Final = {
    "id": Key(_id("gateway"), REQUIRED, "unique name other settings use for this gateway"),
    "type": Key(_enum(GatewayType, "gateway type"), REQUIRED, "simulated, nmi or flexfactor"),
}
_FLEXFACTOR_KEYS: Final = {
    "base_url": Key(_http_url, REQUIRED, "FlexFactor API root, e.g. https://api-sandbox.flexfactor.io/v1"),
    "app_key": Key(_text(), REQUIRED, "API key (AppKey)"),
    "app_secret": Key(_secret, REQUIRED, "API secret (AppSecret); only as ${NAME}"),
    "mid": Key(_text(), REQUIRED, "FlexFactor merchant id"),
    "site_id": Key(_text(), REQUIRED, "FlexFactor site id"),
    "environment_key": Key(_text(), REQUIRED, "tokenization key (EnvironmentKey)"),
    "hmac_signing_key": Key(_signing_key, REQUIRED, "base64 webhook signing key; only as ${NAME}"),
    "expiry_days": Key(
        _int(1, 21, why=" (FlexFactor retries for at most 21 days)"), 21, "days FlexFactor keeps retrying"
    ),
    "cascade_all": Key(_bool, False, "send every soft-declined initial sale here, over all cascade profiles"),
    "webhook_tolerance_seconds": Key(_int(1, 86_400), 300, "how old a signed webhook may be"),
    "webhook_public_host": Key(_optional(_text()), None, "Host that FlexFactor signs, when behind a proxy"),
}
_NMI_KEYS: Final = {
    "security_key": Key(_secret, REQUIRED, "NMI Payment API security key; only as ${NAME}"),
    "base_url": Key(
        _http_url, "https://secure.nmi.com", "NMI root; transact.php and query.php are under /api/"
    ),
    "connect_timeout_s": Key(_number(0, 600, above=True), 5.0, "seconds to wait for a connection to NMI"),
    "read_timeout_s": Key(
        _number(0, 600, above=True), 30.0, "seconds to wait for NMI's answer before looking it up"
    ),
    "dup_seconds": Key(_int(0, 7_862_400), 0, "NMI duplicate-check window in seconds (0: off)"),
}
_GATEWAY_KEYS_BY_TYPE: Final = {
    GatewayType.SIMULATED.value: {
        **_GATEWAY_KEYS,
        "processor_type": Key(_text(), "nmi", "processor name reported to FlexFactor as responseCodeSource"),
        "simulated": Key(
            _mapping(_SIMULATED_KEYS, SimulatedSettings), {}, "how the bundled processor answers"
        ),
    },
    GatewayType.FLEXFACTOR.value: {**_GATEWAY_KEYS, **_FLEXFACTOR_KEYS},
    GatewayType.NMI.value: {**_GATEWAY_KEYS, "nmi": Key(_mapping(_NMI_KEYS, NmiSettings), REQUIRED, "NMI")},
}


def _gateway(r: _Reader, path: str, raw: Any) -> Any:
    kind = raw.get("type") if isinstance(raw, dict) else None
    kind_text = kind.strip().lower() if isinstance(kind, str) else ""
    keys = _GATEWAY_KEYS_BY_TYPE.get(kind_text, _GATEWAY_KEYS)
    # With an unknown type we cannot tell which keys belong; report the type, not every other key.
    values = _section(r, path, raw, keys, strict=kind_text in _GATEWAY_KEYS_BY_TYPE)
    if "id" in values:
        r.gateway_types[values["id"]] = values.get("type")
    if not _complete(values, keys) or keys is _GATEWAY_KEYS:
        return INVALID
    if values["type"] is GatewayType.FLEXFACTOR:
        flexfactor = FlexFactorSettings(**{name: values[name] for name in _FLEXFACTOR_KEYS})
        return GatewaySettings(
            values["id"], values["type"], processor_type="flexfactor", flexfactor=flexfactor
        )
    if values["type"] is GatewayType.NMI:
        return GatewaySettings(values["id"], values["type"], processor_type="nmi", nmi=values["nmi"])
    return GatewaySettings(
        values["id"], values["type"], processor_type=values["processor_type"], simulated=values["simulated"]
    )


def _gateways(r: _Reader, path: str, raw: Any) -> Any:
    gateways = _keyed(_gateway)(r, path, raw)
    if gateways is INVALID:
        return INVALID
    cascading = [g.id for g in gateways.values() if g.flexfactor is not None and g.flexfactor.cascade_all]
    for gateway_id in cascading[1:]:
        where = _join(_parent(r.ids["gateways"][gateway_id]), "cascade_all")
        r.add(where, f"only one FlexFactor gateway may set cascade_all; {cascading[0]!r} already does")
    return gateways
