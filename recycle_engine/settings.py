"""The frozen settings object that `config.load_settings` builds from settings.yaml."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from recycle_engine.domain.anomalies import AnomalyThresholds
from recycle_engine.domain.declines import MappingRule
from recycle_engine.domain.profiles import RecycleProfile

__all__ = [
    "AnomalyThresholds",
    "AtriProfile",
    "BatchingSettings",
    "Campaign",
    "CampaignProduct",
    "CascadeProfile",
    "FlexFactorSettings",
    "GatewaySettings",
    "GatewayType",
    "HttpSettings",
    "JobSettings",
    "NmiSettings",
    "ReportSettings",
    "ServeSettings",
    "Settings",
    "SimulatedSettings",
]


class GatewayType(enum.StrEnum):
    SIMULATED = "simulated"
    FLEXFACTOR = "flexfactor"
    NMI = "nmi"


@dataclass(frozen=True)
class SimulatedSettings:
    """The bundled processor: a default result plus overrides by card last 4."""

    default: str = "SOFT_DECLINE"  # APPROVED, SOFT_DECLINE or HARD_DECLINE
    by_card_last4: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, repr=False)
class NmiSettings:
    """One NMI gateway (Payment API): where it lives, its key and how long to wait. Key never in repr."""

    security_key: str
    base_url: str = "https://secure.nmi.com"  # transact.php and query.php live under {base_url}/api/
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    dup_seconds: int = 0  # NMI's duplicate window; 0: off, since each attempt carries its own orderid

    def __repr__(self) -> str:
        return f"NmiSettings(base_url={self.base_url!r}, security_key=<hidden>)"


@dataclass(frozen=True, repr=False)
class FlexFactorSettings:
    """Credentials and behaviour of one FlexFactor gateway. Secrets never appear in repr."""

    base_url: str
    app_key: str
    app_secret: str
    mid: str
    site_id: str
    environment_key: str
    hmac_signing_key: str  # base64 text, as the portal shows it
    expiry_days: int = 21
    cascade_all: bool = False
    webhook_tolerance_seconds: int = 300
    webhook_public_host: str | None = None  # stands in for Host behind a proxy

    def __repr__(self) -> str:
        return f"FlexFactorSettings(base_url={self.base_url!r}, mid=<set>, secrets=<hidden>)"


@dataclass(frozen=True)
class GatewaySettings:
    id: str
    type: GatewayType
    processor_type: str  # responseCodeSource sent to FlexFactor (e.g. "nmi"); the type for simulated
    simulated: SimulatedSettings | None = None
    flexfactor: FlexFactorSettings | None = None
    nmi: NmiSettings | None = None

    @property
    def is_flexfactor(self) -> bool:
        return self.type is GatewayType.FLEXFACTOR


@dataclass(frozen=True)
class CampaignProduct:
    id: str
    gateway: str


@dataclass(frozen=True)
class Campaign:
    id: str
    products: tuple[CampaignProduct, ...]
    disable_recycle_billing: bool = False


@dataclass(frozen=True)
class AtriProfile:
    id: str
    gateways: tuple[str, ...]
    cascade_profile: str | None = None


@dataclass(frozen=True)
class CascadeProfile:
    id: str
    gateways: tuple[str, ...]


@dataclass(frozen=True)
class BatchingSettings:
    batch_size: int = 500
    concurrency: int = 32
    rate_limit_per_second: float = 100.0


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class JobSettings:
    name: str
    cron: str
    misfire_grace_seconds: int = 3600


@dataclass(frozen=True)
class ReportSettings:
    output_dir: Path = Path("reports/out")
    fee_percent: float | None = None


@dataclass(frozen=True, repr=False)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # bearer key for POST /cascade
    max_body_bytes: int = 64 * 1024

    def __repr__(self) -> str:
        return f"ServeSettings(host={self.host!r}, port={self.port}, api_key=<hidden>)"


@dataclass(frozen=True)
class Settings:
    """Everything settings.yaml says, converted and checked. Built only by config.load_settings."""

    timezone: ZoneInfo
    database_url: str
    gateways: dict[str, GatewaySettings]
    campaigns: dict[str, Campaign]
    atri_profiles: dict[str, AtriProfile]
    cascade_profiles: dict[str, CascadeProfile]
    recycle_profiles: dict[str, RecycleProfile]
    decline_mapping: tuple[MappingRule, ...]
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    jobs: dict[str, JobSettings] = field(default_factory=dict)
    reports: ReportSettings = field(default_factory=ReportSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    anomalies: AnomalyThresholds = field(default_factory=AnomalyThresholds)
    insufficient_funds_phrases: tuple[str, ...] = ("insufficient funds",)
    alert_command: str | None = None
    source_path: Path | None = None

    def profile_for_gateway(self, gateway_id: str) -> RecycleProfile | None:
        """The recycle profile covering a declining gateway, if any."""
        for profile in self.recycle_profiles.values():
            if gateway_id in profile.gateways:
                return profile
        return None

    def flexfactor_gateways(self) -> list[GatewaySettings]:
        return [g for g in self.gateways.values() if g.is_flexfactor]
