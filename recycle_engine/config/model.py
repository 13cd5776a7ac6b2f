"""The settings objects and the shape of settings.yaml, as pydantic models: each key once, with its default.

Every mapping of the file is a `Section` (a frozen pydantic dataclass): its fields are the keys in the
order the file documents them, each with its check (`values`), its default and its description. The
objects the engine uses (FlexFactorSettings, HttpSettings, ...) are these sections themselves; where the
file's shape differs from what the engine wants (lists of entries with ids, a gateway's flat keys, a
recycle ladder), an entry class converts with its `settings()` method.

Adding a gateway type (say `acme`) is local to this module:
  1. a member `ACME = "acme"` of GatewayType;
  2. a Section `AcmeSettings` with its keys (a secret as `credential(Need.X, secret)`, so only the
     commands that use it need its variable; add a Need if none fits);
  3. an entry `class AcmeGateway(AcmeSettings, GatewayEntry)` whose `settings()` returns
     `GatewaySettings(self.id, self.type, processor_type=..., acme=<the AcmeSettings part>)`, and a field
     `acme: AcmeSettings | None = None` on GatewaySettings;
  4. `| Annotated[AcmeGateway, Tag("acme")]` in `GatewayEntries`.
The loader, the key checks and `config check` need no change.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator as V
from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from recycle_engine.config.source import YamlMap, kind
from recycle_engine.config.values import (
    DEFAULT_DATABASE_URL,
    Need,
    Section,
    amount,
    boolean,
    choice,
    credential,
    crontab,
    database_url,
    decimal,
    email_address,
    fail,
    folder,
    http_url,
    ident,
    listed,
    number,
    optional,
    secret,
    signing_key,
    text,
    time_zone,
    whole,
)
from recycle_engine.domain.anomalies import AnomalyThresholds
from recycle_engine.domain.declines import DeclineType, MappingRule, MappingScope, RuleOrderType
from recycle_engine.domain.profiles import FINAL, AttemptRule, RecycleProfile, ReductionType, Slot

__all__ = [
    "JOB_DEFAULTS",
    "AnomalyThresholds",
    "AtriProfile",
    "BatchingSettings",
    "Campaign",
    "CampaignProduct",
    "CascadeProfile",
    "EmailSettings",
    "CrmPullSettings",
    "CrmPushSettings",
    "CrmSettings",
    "CrmType",
    "FlexFactorSettings",
    "GatewaySettings",
    "GatewayType",
    "HttpSettings",
    "JobSettings",
    "ReportSettings",
    "ServeSettings",
    "Settings",
    "SettingsFile",
    "SimulatedSettings",
    "UnsetCredential",
]

Id = Annotated[str, V(ident)]
Text = Annotated[str, V(text)]
Flag = Annotated[bool, V(boolean)]


class GatewayType(enum.StrEnum):
    SIMULATED = "simulated"
    FLEXFACTOR = "flexfactor"
    NMI = "nmi"


# Gateways


SIMULATED_RESULTS: Final = {
    "APPROVED": "APPROVED",
    "SOFT_DECLINE": "SOFT_DECLINE",
    "HARD_DECLINE": "HARD_DECLINE",
}


def _last4(value: Any, info: ValidationInfo) -> str:
    if not (isinstance(value, str) and len(value) == 4 and value.isdigit()):
        fail(f"{value!r} is not the last 4 digits of a card")
    return value


def _card_results(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"must map card last 4 digits to a result, not {kind(value)}")
    return value


@pydantic_dataclass(frozen=True)
class SimulatedSettings(Section):
    """The bundled processor: a default result plus overrides by card last 4."""

    default: Annotated[str, V(choice(SIMULATED_RESULTS, "result"))] = Field(
        "SOFT_DECLINE",
        description="result of every charge not overridden: APPROVED, SOFT_DECLINE or HARD_DECLINE",
    )
    by_card_last4: Annotated[
        dict[Annotated[str, V(_last4)], Annotated[str, V(choice(SIMULATED_RESULTS, "result"))]],
        V(_card_results),
    ] = Field(default_factory=dict, description='results by card last 4, e.g. {"0000": APPROVED}')


@pydantic_dataclass(frozen=True, repr=False)
class FlexFactorSettings(Section):
    """Credentials and behaviour of one FlexFactor gateway. Secrets never appear in repr."""

    base_url: Annotated[str, V(http_url)] = Field(
        description="FlexFactor API root, e.g. https://api-sandbox.flexfactor.io/v1"
    )
    app_key: Annotated[str, V(credential(Need.FLEXFACTOR))] = Field(description="API key (AppKey)")
    app_secret: Annotated[str, V(credential(Need.FLEXFACTOR, secret))] = Field(
        description="API secret (AppSecret); only as ${NAME}"
    )
    mid: Annotated[str, V(credential(Need.FLEXFACTOR))] = Field(description="FlexFactor merchant id")
    site_id: Annotated[str, V(credential(Need.FLEXFACTOR))] = Field(description="FlexFactor site id")
    hmac_signing_key: Annotated[str, V(credential(Need.WEBHOOKS, signing_key))] = Field(
        description="base64 webhook signing key, as the portal shows it; only as ${NAME}"
    )
    environment_key: Annotated[str | None, V(credential(None, optional(text)))] = Field(
        None, description="tokenization key (EnvironmentKey); optional, the engine does not use it"
    )
    expiry_days: Annotated[int, V(whole(1, 21, why=" (FlexFactor retries for at most 21 days)"))] = Field(
        21, description="days FlexFactor keeps retrying"
    )
    cascade_all: Flag = Field(
        False, description="send every soft-declined initial sale here, over all cascade profiles"
    )
    webhook_tolerance_seconds: Annotated[int, V(whole(1, 86_400))] = Field(
        300, description="how old a signed webhook may be"
    )
    webhook_public_host: Annotated[str | None, V(optional(text))] = Field(
        None, description="Host that FlexFactor signs, when behind a proxy"
    )

    def __repr__(self) -> str:
        return f"FlexFactorSettings(base_url={self.base_url!r}, mid=<set>, secrets=<hidden>)"


@pydantic_dataclass(frozen=True, repr=False)
class NmiSettings(Section):
    """One NMI gateway (Payment API): where it lives, its key and how long to wait. Key never in repr."""

    security_key: Annotated[str, V(credential(Need.NMI, secret))] = Field(
        description="NMI Payment API security key; only as ${NAME}"
    )
    base_url: Annotated[str, V(http_url)] = Field(
        "https://secure.nmi.com", description="NMI root; transact.php and query.php are under /api/"
    )
    connect_timeout_s: Annotated[float, V(number(0, 600, above=True))] = Field(
        5.0, description="seconds to wait for a connection to NMI"
    )
    read_timeout_s: Annotated[float, V(number(0, 600, above=True))] = Field(
        30.0, description="seconds to wait for NMI's answer before looking it up"
    )
    # 0 (off) by default: each attempt carries its own orderid, which already prevents a double charge.
    dup_seconds: Annotated[int, V(whole(0, 7_862_400))] = Field(
        0, description="NMI duplicate-check window in seconds (0: off)"
    )

    def __repr__(self) -> str:
        return f"NmiSettings(base_url={self.base_url!r}, security_key=<hidden>)"


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


@pydantic_dataclass(frozen=True, kw_only=True)
class GatewayEntry(Section):
    """The keys every gateway has; a type's entry adds its own (see the module docstring)."""

    id: Id = Field(description="unique name other settings use for this gateway")
    type: Annotated[GatewayType, V(choice(GatewayType, "gateway type"))] = Field(
        description=" or ".join(GatewayType)
    )

    def settings(self) -> GatewaySettings:
        raise NotImplementedError


@pydantic_dataclass(frozen=True, kw_only=True)
class SimulatedGateway(GatewayEntry):
    processor_type: Text = Field(
        "nmi", description="processor name reported to FlexFactor as responseCodeSource"
    )
    simulated: SimulatedSettings = Field(
        default_factory=dict, validate_default=True, description="how the bundled processor answers"
    )

    def settings(self) -> GatewaySettings:
        return GatewaySettings(self.id, self.type, self.processor_type, simulated=self.simulated)


@pydantic_dataclass(frozen=True, kw_only=True, repr=False)
class FlexFactorGateway(FlexFactorSettings, GatewayEntry):
    def settings(self) -> GatewaySettings:
        own = {f.name: getattr(self, f.name) for f in fields(FlexFactorSettings)}
        return GatewaySettings(self.id, self.type, "flexfactor", flexfactor=FlexFactorSettings(**own))


@pydantic_dataclass(frozen=True, kw_only=True)
class NmiGateway(GatewayEntry):
    nmi: NmiSettings = Field(description="NMI Payment API: key, address, timeouts")

    def settings(self) -> GatewaySettings:
        return GatewaySettings(self.id, self.type, "nmi", nmi=self.nmi)


def gateway_type_of(raw: Any) -> str | None:
    """The type a gateway entry says it is (any letter case), to choose its keys."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    return kind.strip().lower() if isinstance(kind, str) else None


GatewayEntries = Annotated[
    Annotated[SimulatedGateway, Tag(GatewayType.SIMULATED.value)]
    | Annotated[FlexFactorGateway, Tag(GatewayType.FLEXFACTOR.value)]
    | Annotated[NmiGateway, Tag(GatewayType.NMI.value)],
    Discriminator(gateway_type_of),
]


# Campaigns, routing and cascades


@pydantic_dataclass(frozen=True)
class CampaignProduct(Section):
    id: Id = Field(description="product id at the CRM")
    gateway: Id = Field(description="gateway that sells it; never FlexFactor")


@pydantic_dataclass(frozen=True)
class Campaign(Section):
    id: Id = Field(description="campaign id at the CRM")
    products: Annotated[tuple[CampaignProduct, ...], V(listed())] = Field(
        (), description="products and their gateways"
    )
    disable_recycle_billing: Flag = Field(
        False, description="true: soft declines of this campaign are not recycled"
    )


@pydantic_dataclass(frozen=True)
class AtriProfile(Section):
    id: Id = Field(description="unique name")
    gateways: Annotated[tuple[Id, ...], V(listed(min_items=1, what="gateway"))] = Field(
        description="gateways routed to"
    )
    cascade_profile: Annotated[str | None, V(optional(ident))] = Field(
        None, description="cascade profile for its soft declines"
    )


@pydantic_dataclass(frozen=True)
class CascadeProfile(Section):
    id: Id = Field(description="unique name")
    gateways: Annotated[tuple[Id, ...], V(listed(min_items=1, what="gateway"))] = Field(
        description="gateways tried in turn"
    )


# Recycle ladders and decline mapping

SLOT_NAMES: Final = {"4-6": Slot.S4_6, "7-9": Slot.S7_9, "final": Slot.FINAL}


def attempt_number(value: Any, info: ValidationInfo | None = None) -> int:
    if isinstance(value, str) and value.strip().lower() == "final":
        return FINAL
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 9:
        fail(f"must be 1..9 or final; got {value!r}")
    return number


@pydantic_dataclass(frozen=True)
class AttemptEntry(Section):
    attempt: Annotated[int, V(attempt_number)] = Field(description="1..9 or final")
    days: Annotated[int, V(whole(0, 365))] = Field(
        description="days after the previous attempt that ran (attempt 1: after the decline)"
    )
    reduction: Annotated[Decimal, V(amount())] = Field(
        Decimal(0), description="added to the reduction so far: percent of the original, or an amount"
    )
    skip: Flag = Field(False, description="true: never charged; adds no days and no reduction")


def _ladder(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, list) or not value:
        fail('must list at least one attempt, e.g. - {attempt: 1, days: 2, reduction: "0"}')
    return value


def _slots(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"must map slots 4-6, 7-9 and final to a gateway or null, not {kind(value)}")
    return value


@pydantic_dataclass(frozen=True, kw_only=True)
class RecycleProfileEntry(Section):
    id: Id = Field(description="unique name")
    gateways: Annotated[tuple[Id, ...], V(listed())] = Field(
        description="declining gateways it covers; each in one profile at most"
    )
    reduction_type: Annotated[ReductionType, V(choice(ReductionType, "reduction type"))] = Field(
        ReductionType.PERCENT, description="percent or flat"
    )
    minimum_price: Annotated[Decimal, V(amount())] = Field(
        Decimal(0), description="a reduced price never goes below this"
    )
    bill_on_saturday: Flag = Field(False, description="move every attempt forward to a Saturday")
    hold_recycle_price: Flag = Field(
        False, description="an approval at a reduced price keeps that price for later rebills"
    )
    attempts: Annotated[tuple[AttemptEntry, ...], V(_ladder)] = Field(
        description="re-attempts 1..9 and final"
    )
    slots: Annotated[dict[str, Annotated[str | None, V(optional(ident))]], V(_slots)] = Field(
        default_factory=dict,
        description="gateway of slots 4-6, 7-9, final; null or absent: the declining gateway",
    )
    holdout_percent: Annotated[Decimal, V(decimal(Decimal(100)))] = Field(
        Decimal(0),
        description="percent of subscriptions kept on the declining gateway at FlexFactor slots (holdout), "
        "to measure lift",
    )

    def settings(self) -> RecycleProfile:
        slots: dict[Slot, str | None] = dict.fromkeys(SLOT_NAMES.values(), None)
        for name, gateway in self.slots.items():
            slots[SLOT_NAMES[name.strip().lower()]] = gateway
        attempts = sorted(
            (AttemptRule(a.attempt, a.days, a.reduction, a.skip) for a in self.attempts),
            key=lambda a: a.attempt,
        )
        return RecycleProfile(
            id=self.id,
            gateways=self.gateways,
            reduction_type=self.reduction_type,
            minimum_price=self.minimum_price,
            bill_on_saturday=self.bill_on_saturday,
            hold_recycle_price=self.hold_recycle_price,
            attempts=tuple(attempts),
            slots=slots,
            holdout_percent=self.holdout_percent,
        )


@pydantic_dataclass(frozen=True)
class MappingRuleEntry(Section):
    gateway: Annotated[str | None, V(optional(ident))] = Field(
        None, description="one gateway by id (MID scope)"
    )
    gateway_type: Annotated[GatewayType | None, V(optional(choice(GatewayType, "gateway type")))] = Field(
        None, description="every gateway of a type"
    )
    order_type: Annotated[RuleOrderType, V(choice(RuleOrderType, "order type"))] = Field(
        RuleOrderType.ALL, description="ALL, NEW_SALE (and upsales) or RECURRING"
    )
    contains: Text = Field(description="text the processor's message contains (case-insensitive)")
    map_to: Annotated[DeclineType, V(choice(DeclineType, "decline type"))] = Field(description="SOFT or HARD")
    display_message: Annotated[str | None, V(optional(text))] = Field(
        None, description="text shown instead of the processor's"
    )

    def settings(self, position: int) -> MappingRule:
        by_gateway = self.gateway is not None
        target = self.gateway if self.gateway is not None else str(self.gateway_type)
        return MappingRule(
            scope=MappingScope.MID if by_gateway else MappingScope.GATEWAY,
            target=target,
            order_type=self.order_type,
            contains=self.contains,
            map_to=self.map_to,
            display_message=self.display_message,
            position=position,
        )


# Engine-wide sections


@pydantic_dataclass(frozen=True)
class DatabaseSection(Section):
    url: Annotated[str, V(database_url)] = Field(
        DEFAULT_DATABASE_URL,
        validate_default=True,
        description="SQLAlchemy URL; a relative SQLite path is beside settings.yaml",
    )


@pydantic_dataclass(frozen=True)
class BatchingSettings(Section):
    batch_size: Annotated[int, V(whole(1, 10_000))] = Field(500, description="hand-offs per batch")
    concurrency: Annotated[int, V(whole(1, 256))] = Field(
        32, description="requests to FlexFactor in flight at once"
    )
    rate_limit_per_second: Annotated[float, V(number(0, above=True))] = Field(
        100.0, description="most requests to FlexFactor per second"
    )


@pydantic_dataclass(frozen=True)
class HttpSettings(Section):
    connect_timeout_s: Annotated[float, V(number(0, 300, above=True))] = Field(
        5.0, description="seconds to open a connection"
    )
    read_timeout_s: Annotated[float, V(number(0, 600, above=True))] = Field(
        30.0, description="seconds to wait for an answer"
    )
    max_retries: Annotated[int, V(whole(0, 20))] = Field(
        4, description="retries of a request that never reached FlexFactor, or a 429"
    )
    backoff_base_s: Annotated[float, V(number(0, 60))] = Field(
        0.5, description="first wait between retries, doubled each time"
    )
    backoff_max_s: Annotated[float, V(number(0, 3600))] = Field(
        30.0, description="longest wait between retries"
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> HttpSettings:
        if self.backoff_max_s < self.backoff_base_s:
            fail("must be at least backoff_base_s", at="backoff_max_s")
        return self


# The CRM (Konnektive / Checkout Champ)


class CrmType(enum.StrEnum):
    KONNEKTIVE = "konnektive"


def _merchant_map(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"must map CRM merchant ids to gateway ids, not {kind(value)}")
    return {str(k): v for k, v in value.items()}


def _crm_credential(value: Any, info: ValidationInfo) -> str:
    # The CRM refuses longer login ids and passwords; say so before the first call does.
    written = secret(value, info)
    if len(written) > 32:
        fail("is longer than the CRM's 32 characters")
    return written


@pydantic_dataclass(frozen=True)
class CrmPullSettings(Section):
    lookback_minutes: Annotated[int, V(whole(0, 7 * 24 * 60))] = Field(
        60, description="each pull re-reads this many minutes before the last window read, for late rows"
    )
    settle_minutes: Annotated[int, V(whole(0, 24 * 60))] = Field(
        5, description="a window closes this many minutes before now (rows still being written are left)"
    )


@pydantic_dataclass(frozen=True)
class CrmPushSettings(Section):
    max_attempts: Annotated[int, V(whole(1, 100))] = Field(
        8, description="deliveries of one change before it is left FAILED for an operator"
    )
    retry_after_minutes: Annotated[int, V(whole(0, 7 * 24 * 60))] = Field(
        15, description="first wait before a failed change is tried again, doubled each time"
    )


@pydantic_dataclass(frozen=True, repr=False)
class CrmSettings(Section):
    """The merchant's CRM: where it is, its API user, pace and timeouts. Credentials never in repr."""

    type: Annotated[CrmType, V(choice(CrmType, "CRM type"))] = Field(description="konnektive")
    login_id: Annotated[str, V(credential(Need.CRM, _crm_credential))] = Field(
        description="API user's loginId; only as ${NAME}"
    )
    password: Annotated[str, V(credential(Need.CRM, _crm_credential))] = Field(
        description="API user's password; only as ${NAME}"
    )
    base_url: Annotated[str, V(http_url)] = Field(
        "https://api.konnektive.com",
        description="API root; endpoints such as /transactions/query/ are below it",
    )
    results_per_page: Annotated[int, V(whole(1, 200, why=" (the CRM's largest page)"))] = Field(
        200, description="rows per page of a query"
    )
    rate_limit_per_second: Annotated[float, V(number(0, 100_000, above=True))] = Field(
        5.0, description="most calls to the CRM per second"
    )
    connect_timeout_s: Annotated[float, V(number(0, 300, above=True))] = Field(
        5.0, description="seconds to open a connection to the CRM"
    )
    read_timeout_s: Annotated[float, V(number(0, 600, above=True))] = Field(
        60.0, description="seconds to wait for the CRM's answer"
    )
    max_retries: Annotated[int, V(whole(0, 20))] = Field(
        4, description="retries of a query that failed in transit, answered 5xx or timed out"
    )
    backoff_base_s: Annotated[float, V(number(0, 60))] = Field(
        1.0, description="first wait between retries, doubled each time"
    )
    backoff_max_s: Annotated[float, V(number(0, 3600))] = Field(
        60.0, description="longest wait between retries"
    )
    gateways: Annotated[dict[Text, Id], V(_merchant_map)] = Field(
        default_factory=dict,
        description="CRM merchantId -> gateway id of these settings (absent: the merchantId is the id)",
    )
    pull: CrmPullSettings = Field(
        default_factory=dict, validate_default=True, description="reading declines from the CRM"
    )
    push: CrmPushSettings = Field(
        default_factory=dict, validate_default=True, description="writing changes back to the CRM"
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> CrmSettings:
        if self.backoff_max_s < self.backoff_base_s:
            fail("must be at least backoff_base_s", at="backoff_max_s")
        return self

    def gateway_of(self, merchant_id: str) -> str:
        return self.gateways.get(merchant_id, merchant_id)

    def __repr__(self) -> str:
        return f"CrmSettings(type={self.type.value!r}, base_url={self.base_url!r}, credentials=<hidden>)"


# Job name -> (cron, misfire grace seconds) when settings.yaml does not say.
JOB_DEFAULTS: Final = {
    "pull": ("30 1 * * *", 14_400),  # read the CRM's declines before the night's submit (with crm: only)
    "submit": ("0 2 * * *", 14_400),  # the nightly run: due attempts, FlexFactor batches, reruns
    "reconcile": ("30 3 * * *", 14_400),  # apply outcomes, poll, settle expired windows
    "push": ("30 5 * * *", 14_400),  # deliver the night's changes to the CRM (with crm: only)
    "report": ("0 6 * * *", 21_600),  # the daily recovery report
}
CRM_JOBS: Final = ("pull", "push")  # scheduled only when settings.yaml has a crm: section


@dataclass(frozen=True)
class JobSettings:
    name: str
    cron: str
    misfire_grace_seconds: int


@pydantic_dataclass(frozen=True)
class JobSchedule(Section):
    cron: Annotated[str, V(crontab)] = Field(
        description="minute hour day-of-month month day-of-week, in the settings timezone"
    )
    misfire_grace_seconds: Annotated[int, V(whole(1, 7 * 86_400))] = Field(
        description="how late a missed run may start"
    )


def _job(name: str) -> Any:
    """The job's defaults under what the file writes."""
    default_cron, default_grace = JOB_DEFAULTS[name]

    def with_defaults(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return value
        merged = YamlMap({"cron": default_cron, "misfire_grace_seconds": default_grace, **value})
        merged.path = value.path if isinstance(value, YamlMap) else ""
        return merged

    return Field(default_factory=dict, validate_default=True, description=f"the {name} job"), V(with_defaults)


_SUBMIT, _SUBMIT_DEFAULTS = _job("submit")
_RECONCILE, _RECONCILE_DEFAULTS = _job("reconcile")
_REPORT, _REPORT_DEFAULTS = _job("report")
_PULL, _PULL_DEFAULTS = _job("pull")
_PUSH, _PUSH_DEFAULTS = _job("push")


@pydantic_dataclass(frozen=True)
class JobsSection(Section):
    submit: Annotated[JobSchedule, _SUBMIT_DEFAULTS] = _SUBMIT
    reconcile: Annotated[JobSchedule, _RECONCILE_DEFAULTS] = _RECONCILE
    report: Annotated[JobSchedule, _REPORT_DEFAULTS] = _REPORT
    pull: Annotated[JobSchedule, _PULL_DEFAULTS] = _PULL
    push: Annotated[JobSchedule, _PUSH_DEFAULTS] = _PUSH

    def settings(self, *, with_crm: bool) -> dict[str, JobSettings]:
        return {
            name: JobSettings(name, schedule.cron, schedule.misfire_grace_seconds)
            for name, schedule in ((n, getattr(self, n)) for n in JOB_DEFAULTS)
            if with_crm or name not in CRM_JOBS
        }


@pydantic_dataclass(frozen=True, repr=False)
class EmailSettings(Section):
    """Where the daily report is e-mailed after the report job: one SMTP server, its sender and readers."""

    host: Text = Field(description="SMTP server name or address")
    to: Annotated[tuple[Annotated[str, V(email_address)], ...], V(listed(min_items=1, what="recipient"))] = (
        Field(description="addresses the report goes to")
    )
    from_address: Annotated[str, V(email_address)] = Field(description="sender address of the report")
    port: Annotated[int, V(whole(1, 65_535))] = Field(587, description="SMTP port (587: submission)")
    starttls: Flag = Field(True, description="upgrade the connection with STARTTLS before logging in")
    username: Annotated[str | None, V(credential(Need.EMAIL, optional(secret)))] = Field(
        None, description="SMTP login; only as ${NAME} (none: no login)"
    )
    password: Annotated[str | None, V(credential(Need.EMAIL, optional(secret)))] = Field(
        None, description="SMTP password; only as ${NAME}"
    )
    timeout_s: Annotated[float, V(number(0, 600, above=True))] = Field(
        30.0, description="seconds to wait for the server at each step"
    )
    attempts: Annotated[int, V(whole(1, 10))] = Field(
        3, description="sends tried before the delivery is recorded as failed"
    )
    backoff_s: Annotated[float, V(number(0, 600))] = Field(
        30.0, description="wait before the second send, doubled before each later one (at most 600 s)"
    )

    @model_validator(mode="after")
    def _login_whole(self) -> EmailSettings:
        # A login needs both halves; one alone would log in with an empty password or none at all. (An
        # empty one is a variable left unset: it is reported where it is needed.)
        if self.username is None and self.password:
            fail("needs username too (an SMTP login is a username and a password)", at="password")
        if self.username and self.password is None:
            fail("needs password too (an SMTP login is a username and a password)", at="username")
        return self

    def __repr__(self) -> str:
        return f"EmailSettings(host={self.host!r}, port={self.port}, to={self.to!r}, credentials=<hidden>)"


@pydantic_dataclass(frozen=True)
class ReportSettings(Section):
    output_dir: Annotated[Path, V(folder)] = Field(
        Path("reports/out"),
        validate_default=True,
        description="folder of the HTML and CSV reports (relative: to settings.yaml)",
    )
    fee_percent: Annotated[float | None, V(optional(number(0, 100)))] = Field(
        None, description="FlexFactor fee in percent of recovered amounts"
    )
    email: EmailSettings | None = Field(None, description="e-mail the report after the report job")


@pydantic_dataclass(frozen=True, repr=False)
class ServeSettings(Section):
    host: Text = Field("127.0.0.1", description="address the webhook service listens on")
    port: Annotated[int, V(whole(1, 65_535))] = Field(8080, description="port the webhook service listens on")
    api_key: Annotated[str | None, V(credential(Need.CASCADE, optional(secret)))] = Field(
        None, description="bearer key for POST /cascade; only as ${NAME}"
    )
    max_body_bytes: Annotated[int, V(whole(1, 16 * 1024 * 1024))] = Field(
        64 * 1024, description="largest request body accepted"
    )

    def __repr__(self) -> str:
        return f"ServeSettings(host={self.host!r}, port={self.port}, api_key=<hidden>)"


_T = AnomalyThresholds  # the domain's dataclass holds the defaults


@pydantic_dataclass(frozen=True)
class AnomalySection(Section):
    history_nights: Annotated[int, V(whole(1, 366))] = Field(
        _T.history_nights, description="trailing nights tonight's hand-off count is compared with"
    )
    min_history_nights: Annotated[int, V(whole(1, 366))] = Field(
        _T.min_history_nights, description="nights with a submit run needed before the count is checked"
    )
    handoff_count_factor: Annotated[float, V(number(1, 1000, above=True))] = Field(
        _T.handoff_count_factor, description="normal count: between median / factor and median * factor"
    )
    max_error_rate_percent: Annotated[float, V(number(0, 100))] = Field(
        _T.max_error_rate_percent,
        description="most hand-offs FlexFactor refused or never answered, percent of those sent",
    )
    max_refused_webhooks: Annotated[int, V(whole(0))] = Field(
        _T.max_refused_webhooks, description="most webhook deliveries refused in 24 hours"
    )
    webhook_silence_hours: Annotated[int, V(whole(1, 24 * 30))] = Field(
        _T.webhook_silence_hours, description="hours without any webhook that raise an alert ..."
    )
    pending_age_hours: Annotated[int, V(whole(1, 24 * 30))] = Field(
        _T.pending_age_hours, description="... while hand-offs have been SUBMITTED this long"
    )


# The whole file


@dataclass(frozen=True)
class UnsetCredential:
    """A credential whose `${NAME}` variable is missing; only the commands that `need` it refuse to run."""

    variable: str
    path: str
    line: int | None
    need: Need | None  # None: no command uses it


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
    batching: BatchingSettings
    http: HttpSettings
    jobs: dict[str, JobSettings]
    reports: ReportSettings
    serve: ServeSettings
    anomalies: AnomalyThresholds
    insufficient_funds_phrases: tuple[str, ...]
    alert_command: str | None
    crm: CrmSettings | None = None
    source_path: Path | None = None
    unset: tuple[UnsetCredential, ...] = ()  # credentials left for the commands that need them

    def profile_for_gateway(self, gateway_id: str) -> RecycleProfile | None:
        """The recycle profile covering a declining gateway, if any."""
        for profile in self.recycle_profiles.values():
            if gateway_id in profile.gateways:
                return profile
        return None

    def flexfactor_gateways(self) -> list[GatewaySettings]:
        return [g for g in self.gateways.values() if g.is_flexfactor]

    def missing_for(self, *needs: Need) -> list[UnsetCredential]:
        """The credentials `needs` use whose variable is missing."""
        return [u for u in self.unset if u.need is not None and u.need in needs]


def _section(description: str) -> Any:
    """A section's field: absent in the file, its own defaults (checked, so relative paths resolve)."""
    return Field(default_factory=dict, validate_default=True, description=description)


@pydantic_dataclass(frozen=True, kw_only=True, config=ConfigDict(arbitrary_types_allowed=True))
class SettingsFile(Section):
    """settings.yaml as written. Gateways come before everything that names them."""

    timezone: Annotated[ZoneInfo, V(time_zone)] = Field(
        description="IANA zone of the merchant's day; 'due today' and the crons use it"
    )
    database: DatabaseSection = _section("where the engine keeps its state")
    gateways: Annotated[tuple[GatewayEntries, ...], V(listed())] = Field(
        description="ordinary processors and FlexFactor gateways"
    )
    cascade_profiles: Annotated[tuple[CascadeProfile, ...], V(listed())] = Field(
        (), description="real-time retries"
    )
    atri_profiles: Annotated[tuple[AtriProfile, ...], V(listed())] = Field(
        (), description="routing of initial sales"
    )
    campaigns: Annotated[tuple[Campaign, ...], V(listed())] = Field(
        (), description="campaigns and their product gateways"
    )
    recycle_profiles: Annotated[tuple[RecycleProfileEntry, ...], V(listed())] = Field(
        (), description="recycle ladders by declining gateway"
    )
    decline_mapping: Annotated[tuple[MappingRuleEntry, ...], V(listed())] = Field(
        (), description="rules that re-classify a decline as soft or hard"
    )
    insufficient_funds_phrases: Annotated[tuple[Text, ...], V(listed())] = Field(
        ("insufficient funds",), description="processor texts meaning insufficient funds (never cascaded)"
    )
    batching: BatchingSettings = _section("size and pace of FlexFactor batches")
    http: HttpSettings = _section("timeouts and retries of calls to FlexFactor")
    jobs: JobsSection = _section("cron schedules of pull, submit, reconcile, push and report")
    reports: ReportSettings = _section("where reports go")
    serve: ServeSettings = _section("the webhook and cascade HTTP service")
    anomalies: AnomalySection = _section("checks after each nightly run, alerted and reported")
    alert_command: Annotated[str | None, V(optional(text))] = Field(
        None, description="shell command run with a failed job's message"
    )
    crm: CrmSettings | None = Field(
        None, description="the merchant's CRM API (absent: declines come as CSV, changes go by export)"
    )

    def settings(self, source_path: Path | None, unset: tuple[UnsetCredential, ...]) -> Settings:
        return Settings(
            timezone=self.timezone,
            database_url=self.database.url,
            gateways={entry.id: entry.settings() for entry in self.gateways},
            campaigns={c.id: c for c in self.campaigns},
            atri_profiles={p.id: p for p in self.atri_profiles},
            cascade_profiles={p.id: p for p in self.cascade_profiles},
            recycle_profiles={p.id: p.settings() for p in self.recycle_profiles},
            decline_mapping=tuple(rule.settings(i) for i, rule in enumerate(self.decline_mapping)),
            batching=self.batching,
            http=self.http,
            jobs=self.jobs.settings(with_crm=self.crm is not None),
            reports=self.reports,
            serve=self.serve,
            anomalies=AnomalyThresholds(**asdict(self.anomalies)),
            insufficient_funds_phrases=self.insufficient_funds_phrases,
            alert_command=self.alert_command,
            crm=self.crm,
            source_path=source_path,
            unset=unset,
        )


def sections() -> list[type[Section]]:
    """Every Section of settings.yaml (for checks that walk them all)."""
    found: list[type[Section]] = []
    todo: list[type[Section]] = [Section]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found
