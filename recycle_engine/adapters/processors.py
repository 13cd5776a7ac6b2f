"""Processor gateways for the re-attempts that stay off FlexFactor; `simulated` is bundled."""

from __future__ import annotations

from recycle_engine.config import GatewaySettings, GatewayType, SimulatedSettings
from recycle_engine.errors import ConfigError
from recycle_engine.ports import ChargeRequest, ChargeResult, ProcessorGateway

__all__ = ["SimulatedProcessor", "processor_for"]

_TEXT = {
    ChargeResult.APPROVED: "Approved",
    ChargeResult.SOFT_DECLINE: "Insufficient funds",
    ChargeResult.HARD_DECLINE: "Pick up card - stolen",
}


class SimulatedProcessor:
    """Decides each charge from settings: a default result plus overrides by card last 4."""

    def __init__(self, settings: SimulatedSettings) -> None:
        self._default = ChargeResult(settings.default)
        self._by_last4 = {k: ChargeResult(v) for k, v in settings.by_card_last4.items()}

    def charge(self, request: ChargeRequest) -> tuple[ChargeResult, str]:
        result = self._by_last4.get(request.card_last4, self._default)
        return result, _TEXT[result]


def processor_for(gateway: GatewaySettings, *, pool_size: int = 8) -> ProcessorGateway:
    """The processor adapter for an ordinary gateway; real processors plug in by type here."""
    if gateway.type is GatewayType.NMI and gateway.nmi is not None:
        from recycle_engine.adapters.nmi_http import NmiClient

        return NmiClient(gateway.id, gateway.nmi, pool_size=pool_size)
    if gateway.type is GatewayType.SIMULATED and gateway.simulated is not None:
        return SimulatedProcessor(gateway.simulated)
    raise ConfigError(f"gateway {gateway.id}: no processor adapter for type {gateway.type}")
