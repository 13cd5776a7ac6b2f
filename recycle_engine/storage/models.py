"""The schema: mapped tables; amounts are integer minor units beside an ISO 4217 currency."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from recycle_engine.storage.types import UTCDateTime

__all__ = [
    "Attempt",
    "Base",
    "BreakdownRollup",
    "Change",
    "CrmCursor",
    "CrmDelivery",
    "CrmReject",
    "CohortRollup",
    "Customer",
    "Decline",
    "FlexFactorTokenCache",
    "Fulfillment",
    "Handoff",
    "HandoffEvent",
    "HoldoutAssignment",
    "HoldoutChange",
    "HoldoutRollup",
    "JobRun",
    "NightAnomaly",
    "Order",
    "OutcomeQueue",
    "ProcessorCharge",
    "ReportDelivery",
    "RecycleProfileVersion",
    "RollupChange",
    "RecoveryRollup",
    "RollupState",
    "SchedulerLease",
    "Subscription",
    "WebhookDelivery",
    "WebhookInbox",
    "WebhookNonce",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

ID = String(64)
CCY = String(3)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(128))
    last_name: Mapped[str | None] = mapped_column(String(128))
    address1: Mapped[str | None] = mapped_column(String(256))
    address2: Mapped[str | None] = mapped_column(String(256))
    city: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str | None] = mapped_column(String(64))
    zip: Mapped[str | None] = mapped_column(String(32))
    country: Mapped[str | None] = mapped_column(String(2))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Order(Base):
    """A CRM order; status follows domain.md section 5."""

    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    order_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    customer_id: Mapped[str | None] = mapped_column(ID)
    campaign_id: Mapped[str | None] = mapped_column(ID)
    product_id: Mapped[str | None] = mapped_column(ID)
    purchase_id: Mapped[str | None] = mapped_column(ID, index=True)
    billing_cycle: Mapped[int] = mapped_column(Integer)
    completes_trial: Mapped[bool] = mapped_column(Boolean, default=False)
    recurring_product: Mapped[bool] = mapped_column(Boolean, default=False)
    shippable: Mapped[bool] = mapped_column(Boolean, default=False)
    gateway_id: Mapped[str] = mapped_column(ID)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CCY)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    latest_transaction_id: Mapped[str | None] = mapped_column(ID)
    has_payment_token: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (Index(None, "status", "order_type"),)


class Subscription(Base):
    """A purchase (subscription) and, while it recycles, where it stands on its ladder."""

    __tablename__ = "subscriptions"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(ID)
    order_id: Mapped[str | None] = mapped_column(ID)  # the order of the cycle being billed
    campaign_id: Mapped[str | None] = mapped_column(ID)
    product_id: Mapped[str | None] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(32))
    billing_cycle: Mapped[int] = mapped_column(Integer)
    billing_interval_days: Mapped[int | None] = mapped_column(Integer)
    shippable: Mapped[bool] = mapped_column(Boolean, default=False)
    price_minor: Mapped[int] = mapped_column(BigInteger)  # recurring price
    currency: Mapped[str] = mapped_column(CCY)
    gateway_id: Mapped[str] = mapped_column(ID)  # gateway of the next scheduled billing
    next_bill_on: Mapped[date | None] = mapped_column(Date)
    has_payment_token: Mapped[bool] = mapped_column(Boolean, default=True)
    # Recycle state: set when a rebill soft-declines, cleared when recycling ends.
    recycle_profile_id: Mapped[str | None] = mapped_column(ID)
    # The schedule version it entered with (recycle_profile_versions); NULL: entered before versions
    # were recorded, and follows the profile in settings.yaml.
    recycle_profile_version: Mapped[str | None] = mapped_column(String(16))
    recycle_transaction_id: Mapped[str | None] = mapped_column(ID)  # the decline being recycled
    recycle_declined_gateway_id: Mapped[str | None] = mapped_column(ID)
    recycle_original_minor: Mapped[int | None] = mapped_column(BigInteger)
    recycle_last_attempt: Mapped[int] = mapped_column(Integer, default=0)
    recycle_last_ran_on: Mapped[date | None] = mapped_column(Date)  # local date (settings timezone)
    next_attempt: Mapped[int | None] = mapped_column(Integer)
    next_attempt_on: Mapped[date | None] = mapped_column(Date)
    open_handoff_id: Mapped[str | None] = mapped_column(ID)
    failure_cause: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The nightly selection: recycling subscriptions by due date, read in (due date, id) page order.
    __table_args__ = (Index(None, "status", "next_attempt_on", "id"),)


class Decline(Base):
    """One declined card transaction from the CRM feed, as imported (never a full card number)."""

    __tablename__ = "declines"
    transaction_id: Mapped[str] = mapped_column(ID, primary_key=True)
    declined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    utc_offset_minutes: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[str] = mapped_column(ID, index=True)
    order_type: Mapped[str] = mapped_column(String(16))
    purchase_id: Mapped[str | None] = mapped_column(ID, index=True)
    billing_cycle: Mapped[int] = mapped_column(Integer)
    billing_interval_days: Mapped[int | None] = mapped_column(Integer)
    completes_trial: Mapped[bool] = mapped_column(Boolean)
    recurring_product: Mapped[bool] = mapped_column(Boolean)
    shippable: Mapped[bool] = mapped_column(Boolean)
    campaign_id: Mapped[str | None] = mapped_column(ID)
    product_id: Mapped[str | None] = mapped_column(ID)
    gateway_id: Mapped[str] = mapped_column(ID)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CCY)
    response_type: Mapped[str] = mapped_column(String(16))  # as the CRM classified it
    decline_type: Mapped[str] = mapped_column(String(8))  # SOFT or HARD after mapping
    mapping_rule: Mapped[str | None] = mapped_column(String(256))
    display_message: Mapped[str | None] = mapped_column(Text)
    response_code: Mapped[str | None] = mapped_column(String(64))
    response_text: Mapped[str | None] = mapped_column(Text)
    avs_result: Mapped[str | None] = mapped_column(String(16))
    cvv_result: Mapped[str | None] = mapped_column(String(16))
    cavv_result: Mapped[str | None] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(ID)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(128))
    last_name: Mapped[str | None] = mapped_column(String(128))
    address1: Mapped[str | None] = mapped_column(String(256))
    address2: Mapped[str | None] = mapped_column(String(256))
    city: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str | None] = mapped_column(String(64))
    zip: Mapped[str | None] = mapped_column(String(32))
    country: Mapped[str | None] = mapped_column(String(2))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    card_token: Mapped[str | None] = mapped_column(String(128))  # vault token, never a card number
    card_bin: Mapped[str | None] = mapped_column(String(8))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_exp_month: Mapped[int | None] = mapped_column(Integer)
    card_exp_year: Mapped[int | None] = mapped_column(Integer)
    card_brand: Mapped[str | None] = mapped_column(String(32))
    card_type: Mapped[str | None] = mapped_column(String(32))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Attempt(Base):
    """A re-attempt the engine charged on an ordinary processor gateway (a transaction row)."""

    __tablename__ = "transactions"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ID, index=True)
    decline_transaction_id: Mapped[str] = mapped_column(ID)
    attempt: Mapped[int] = mapped_column(Integer)
    gateway_id: Mapped[str] = mapped_column(ID)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CCY)
    result: Mapped[str] = mapped_column(String(16))
    response_text: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ID)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("subscription_id", "decline_transaction_id", "attempt"),
        # The report's ladder reads approved retries by day from this index alone (migration 0011).
        Index(
            "ix_transactions_recovered_cover", "result", "occurred_at", "attempt", "currency", "amount_minor"
        ),
    )


class ProcessorCharge(Base):
    """One attempt on a processor that can be asked about its charges (NMI), recorded and committed
    before the call: its id is the order id sent, so a lost answer is looked up before any resend."""

    __tablename__ = "processor_charges"
    id: Mapped[str] = mapped_column(ID, primary_key=True)  # our order id, sent as NMI's orderid
    subscription_id: Mapped[str] = mapped_column(ID)
    decline_transaction_id: Mapped[str] = mapped_column(ID)
    attempt: Mapped[int] = mapped_column(Integer)
    gateway_id: Mapped[str] = mapped_column(ID)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CCY)
    state: Mapped[str] = mapped_column(String(12))  # PENDING until an answer is recorded, then ANSWERED
    result: Mapped[str | None] = mapped_column(String(16))
    response_text: Mapped[str | None] = mapped_column(Text)
    # Where the ladder stood before the charge was claimed, to put it back for a rerun after a crash.
    resume_attempt: Mapped[int | None] = mapped_column(Integer)
    resume_on: Mapped[date | None] = mapped_column(Date)
    sends: Mapped[int] = mapped_column(Integer, default=0)
    lookups: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ID)
    claimed_by: Mapped[str | None] = mapped_column(ID)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint(
            "subscription_id", "decline_transaction_id", "attempt", name="uq_processor_charges_attempt"
        ),
        Index(None, "state", "claimed_until"),
    )


class Handoff(Base):
    """One submission to FlexFactor (export: SPEC section 6)."""

    __tablename__ = "handoffs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)  # submission_id, sent as orderId
    source: Mapped[str] = mapped_column(String(8))
    order_id: Mapped[str] = mapped_column(ID, index=True)
    purchase_id: Mapped[str | None] = mapped_column(ID, index=True)
    transaction_id: Mapped[str] = mapped_column(ID)
    gateway_id: Mapped[str] = mapped_column(ID)  # the FlexFactor gateway
    declining_gateway_id: Mapped[str] = mapped_column(ID)
    slot: Mapped[str | None] = mapped_column(String(8))
    attempt: Mapped[int | None] = mapped_column(Integer)
    billing_cycle: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CCY)
    idempotency_key: Mapped[str] = mapped_column(String(36), unique=True)
    request_body: Mapped[str] = mapped_column(Text)  # exact JSON sent, so a resend is byte-identical
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)  # one hand-off per attempt
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    send_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When first sent: FlexFactor's window (expires_at, the body's expiryDateUtc) counts from it.
    first_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    flexfactor_order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    vendor_status: Mapped[str | None] = mapped_column(String(24))
    outcome_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome_source: Mapped[str | None] = mapped_column(String(8))
    late_outcome: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    attention: Mapped[str | None] = mapped_column(String(64))
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    poll_count: Mapped[int] = mapped_column(Integer, default=0)
    resend_count: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(ID)
    claimed_by: Mapped[str | None] = mapped_column(ID)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        Index(None, "state", "next_poll_at"),
        Index(None, "created_at"),
        # The report: FAILED hand-offs of its range, open ones by expiry, late approvals (migration 0006).
        Index(None, "state", "created_at"),
        Index(None, "late_outcome", "outcome_at"),
        # The report's open hand-offs by age and the day's outcomes read these indexes alone, not the
        # table: each holds every column those statements read (migration 0007). Reconcile's open
        # hand-offs past expiry and the report's nearing expiry use the first two columns.
        Index(
            "ix_handoffs_state_expires_at_cover",
            "state",
            "expires_at",
            "submitted_at",
            "created_at",
            "currency",
            "amount_minor",
        ),
        Index(
            "ix_handoffs_outcome_at_cover", "outcome_at", "state", "currency", "late_outcome", "amount_minor"
        ),
        # The report's ladder: approved hand-offs by day of outcome, source and attempt (migration 0011);
        # its open hand-offs by age: PENDING and SUBMITTED ones by submission time (migration 0019).
        Index(
            "ix_handoffs_recovered_cover",
            "state",
            "outcome_at",
            "source",
            "attempt",
            "currency",
            "amount_minor",
            "submitted_at",
            "created_at",
        ),
        Index(
            "ix_handoffs_flagged_created_at",
            "created_at",
            "id",
            postgresql_where=text("attention IS NOT NULL"),
            sqlite_where=text("attention IS NOT NULL"),
        ),
        # The report's count of flags by kind up to its day reads this alone (migration 0019).
        Index("ix_handoffs_attention_created_at", "attention", "created_at"),
        # The rollups' day: a range of local submission days, as report_sql.submitted() (migration 0013).
        Index("ix_handoffs_submitted_or_created", text("coalesce(submitted_at, created_at)")),
    )


class OutcomeQueue(Base):
    """A hand-off's final outcome waiting to be applied to its order and purchase (services.outcomes.applying).

    Written in the transaction that records the outcome, deleted in the one that applies it. "Not yet
    applied" lives on this narrow row rather than on the wide, heavily indexed hand-off row, so applying
    rewrites no hand-off: a hand-off in a final state with no row here has had its outcome applied.
    The row carries the news and the hand-off's own facts that applying needs (copied from the hand-off,
    which never changes them), so applying reads no hand-off either."""

    __tablename__ = "outcome_queue"
    handoff_id: Mapped[str] = mapped_column(ID, ForeignKey("handoffs.id"), primary_key=True)
    # The news, as the hand-off records it; a late APPROVED replaces a queued EXPIRED.
    state: Mapped[str] = mapped_column(String(12))
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime)  # applied oldest first
    outcome_source: Mapped[str | None] = mapped_column(String(8))
    # The hand-off's facts.
    source: Mapped[str] = mapped_column(String(8))
    order_id: Mapped[str] = mapped_column(ID)
    purchase_id: Mapped[str | None] = mapped_column(ID)
    declining_gateway_id: Mapped[str] = mapped_column(ID)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    billing_cycle: Mapped[int] = mapped_column(Integer)


class HandoffEvent(Base):
    """Append-only history of one hand-off: each request, answer, webhook, poll and settlement."""

    __tablename__ = "handoff_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    handoff_id: Mapped[str] = mapped_column(ID, ForeignKey("handoffs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(8))
    state_after: Mapped[str] = mapped_column(String(12))
    flexfactor_order_id: Mapped[str | None] = mapped_column(String(64))
    vendor_status: Mapped[str | None] = mapped_column(String(24))
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        # The report's exceptions of one kind (amount mismatches) over its range (migration 0006).
        Index(None, "kind", "occurred_at"),
        # The report's hand-offs touched on a day, from this index alone (migration 0007).
        Index(None, "occurred_at", "handoff_id"),
    )


class WebhookDelivery(Base):
    """Every webhook delivery, accepted or refused, with the reason."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gateway_id: Mapped[str] = mapped_column(ID)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    http_status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(200))
    event: Mapped[str | None] = mapped_column(String(64))
    flexfactor_order_id: Mapped[str | None] = mapped_column(String(64))
    external_order_id: Mapped[str | None] = mapped_column(String(64))
    nonce: Mapped[str | None] = mapped_column(String(64))
    is_resent: Mapped[bool] = mapped_column(Boolean, default=False)
    is_duplicate: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)  # (OrderId, Event) once
    handoff_id: Mapped[str | None] = mapped_column(ID)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (Index(None, "accepted", "applied_at"),)


class WebhookInbox(Base):
    """An accepted delivery acknowledged to FlexFactor and not yet applied to its hand-off.

    Written with its delivery before the 200, deleted in the transaction that applies it (the service's
    single writer, services.outcomes.inbox_writer): a crash in between leaves it here for the next start."""

    __tablename__ = "webhook_inbox"
    delivery_id: Mapped[int] = mapped_column(Integer, ForeignKey("webhook_deliveries.id"), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(ID)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookNonce(Base):
    """Nonces seen inside the freshness window, shared by every service process."""

    __tablename__ = "webhook_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(ID)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Fulfillment(Base):
    """A fulfillment record created on a salvage; starts in HOLD (domain.md section 7)."""

    __tablename__ = "fulfillments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ID)
    purchase_id: Mapped[str | None] = mapped_column(ID)
    billing_cycle: Mapped[int] = mapped_column(Integer)
    product_id: Mapped[str] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(24))
    handoff_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("order_id", "product_id", "billing_cycle"),)


class Change(Base):
    """Append-only history of order and subscription changes; also the CRM outbox."""

    __tablename__ = "changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity: Mapped[str] = mapped_column(String(16))  # ORDER, SUBSCRIPTION, FULFILLMENT
    entity_id: Mapped[str] = mapped_column(ID)
    field: Mapped[str] = mapped_column(String(64))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(16))
    handoff_id: Mapped[str | None] = mapped_column(ID)
    run_id: Mapped[str | None] = mapped_column(ID)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    __table_args__ = (Index(None, "entity", "entity_id"),)


class JobRun(Base):
    """One run of a job (submit, reconcile, report, import) with its counts."""

    __tablename__ = "job_runs"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job: Mapped[str] = mapped_column(String(32))
    logical_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # RUNNING, SUCCEEDED, INCOMPLETE (left hand-offs unsent), FAILED, ABANDONED (its process died), MISSED
    status: Mapped[str] = mapped_column(String(12))
    counts: Mapped[str | None] = mapped_column(Text)  # JSON object
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)


class SchedulerLease(Base):
    """Who runs the scheduler: one active holder per name, expiring if it dies."""

    __tablename__ = "scheduler_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FlexFactorTokenCache(Base):
    """The FlexFactor bearer token shared by every process using one credential set, sealed.

    The token is Fernet-sealed under a key derived from the app secret, which is never stored, so
    a dump of this table yields no usable token; expiry is in clear so a reader knows when to renew.
    `version` moves on every write, so a process drops only the token it saw fail."""

    __tablename__ = "flexfactor_token_cache"
    base_url: Mapped[str] = mapped_column(String(512), primary_key=True)
    key_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RecycleProfileVersion(Base):
    """One content of a recycle profile, as first seen; in-flight subscriptions follow the one they entered with."""

    __tablename__ = "recycle_profile_versions"
    profile_id: Mapped[str] = mapped_column(ID, primary_key=True)
    version: Mapped[str] = mapped_column(String(16), primary_key=True)
    content: Mapped[str] = mapped_column(Text)  # canonical JSON: attempts, slots, prices, flags
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HoldoutAssignment(Base):
    """A recycling subscription reached a FlexFactor slot: handed off, or kept back as holdout."""

    __tablename__ = "holdout_assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ID)
    decline_transaction_id: Mapped[str] = mapped_column(ID)  # the decline being recycled
    billing_cycle: Mapped[int] = mapped_column(Integer)
    profile_id: Mapped[str] = mapped_column(ID)
    arm: Mapped[str] = mapped_column(String(12))  # FLEXFACTOR or HOLDOUT
    attempt: Mapped[int] = mapped_column(Integer)
    slot: Mapped[str] = mapped_column(String(8))
    gateway_id: Mapped[str] = mapped_column(ID)  # the FlexFactor gateway the slot names
    amount_minor: Mapped[int] = mapped_column(BigInteger)  # the attempt's price at that point
    currency: Mapped[str] = mapped_column(CCY)
    run_id: Mapped[str | None] = mapped_column(ID)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Its outcome once final (migration 0018), kept by storage/holdout_rollup_repo.py: "recovered" at the
    # last approval, with what was collected, or "lost" (no approval, off that ladder: final from its
    # assignment on). NULL while still recycling that decline.
    final_outcome: Mapped[str | None] = mapped_column(String(12))
    final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recovered_minor: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (
        # One assignment per recycled decline: the first FlexFactor slot reached decides the group.
        UniqueConstraint("subscription_id", "decline_transaction_id"),
        # The report counts the open ones from this index alone, and reads those that became final on
        # its day or later one by one.
        Index(
            "ix_holdout_assignments_open",
            "assigned_at",
            "arm",
            "currency",
            "amount_minor",
            postgresql_where=text("final_at IS NULL"),
            sqlite_where=text("final_at IS NULL"),
        ),
        Index(
            "ix_holdout_assignments_final_at",
            "final_at",
            postgresql_where=text("final_at IS NOT NULL"),
            sqlite_where=text("final_at IS NOT NULL"),
        ),
    )


class ReportDelivery(Base):
    """One day's report sent on one channel (e-mail): at most one row per day and channel, so a rerun of
    the report job finds the day SENT and does not send it again (migration 0010)."""

    __tablename__ = "report_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)  # the report's local day
    channel: Mapped[str] = mapped_column(String(16))  # "email"
    state: Mapped[str] = mapped_column(String(12))  # SENDING, SENT or FAILED
    recipients: Mapped[str] = mapped_column(Text)  # comma-separated addresses
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # sends tried, over every run
    last_error: Mapped[str | None] = mapped_column(Text)  # server and failure; never credentials
    run_id: Mapped[str | None] = mapped_column(ID)  # the report run it followed
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("day", "channel"),)


class NightAnomaly(Base):
    """An anomaly found after a nightly run, as alerted; the report lists those of its day."""

    __tablename__ = "anomalies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)  # the night's local date
    kind: Mapped[str] = mapped_column(String(24))
    subject: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    alerted: Mapped[bool] = mapped_column(Boolean, default=False)  # the alert hook said it got it
    run_id: Mapped[str | None] = mapped_column(ID)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# --- report rollups (migration 0006) -------------------------------------------------------------
# Hand-offs aggregated per local day of creation (settings.timezone), so the report reads a few
# thousand rows whatever the size of the history. Triggers on `handoffs` (in the migration) note the
# creation instant of every hand-off written in `report_rollup_changes`; services/reporting/rollups.py recomputes
# those days. The rows carry no natural key (several key columns may be NULL), hence the `id`.


class CohortRollup(Base):
    """Hand-offs submitted on one local day by decline day, state, currency, day of recovery, reversal
    and the local day their state became final (so a past day's report reads their state as it was)."""

    __tablename__ = "report_cohort_rollups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)  # local day the hand-offs were submitted
    decline_day: Mapped[date | None] = mapped_column(Date, index=True)  # local day of their decline
    state: Mapped[str] = mapped_column(String(12))
    currency: Mapped[str] = mapped_column(CCY)
    recovery_day: Mapped[int | None] = mapped_column(Integer)  # day of the window approved on
    reversal: Mapped[str | None] = mapped_column(String(12))  # REFUNDED or CHARGEBACK after approval
    outcome_day: Mapped[date | None] = mapped_column(Date)  # local day of outcome_at (migration 0013)
    handoffs: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # The dashboard's outcomes per day read this alone (migration 0017), not every day's rows; the
    # report's cohorts read a range of days from the second alone (migration 0019).
    __table_args__ = (
        Index(
            "ix_report_cohort_rollups_outcome_cover",
            "outcome_day",
            "state",
            "currency",
            "handoffs",
            "amount_minor",
        ),
        Index(
            "ix_report_cohort_rollups_day_cover",
            "day",
            "outcome_day",
            "state",
            "currency",
            "recovery_day",
            "reversal",
            "handoffs",
            "amount_minor",
        ),
    )


class BreakdownRollup(Base):
    """Hand-offs submitted on one local day by one breakdown's key (slot, reason, gateway, card, cycle),
    state, currency and the local day their state became final."""

    __tablename__ = "report_breakdown_rollups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    breakdown: Mapped[str] = mapped_column(String(24))
    breakdown_key: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str | None] = mapped_column(String(64))  # the decline's response code (reasons only)
    state: Mapped[str] = mapped_column(String(12))
    currency: Mapped[str] = mapped_column(CCY)
    outcome_day: Mapped[date | None] = mapped_column(Date)  # local day of outcome_at (migration 0013)
    handoffs: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # The report's month of breakdowns reads this alone (migration 0019): a day's rows kept together.
    __table_args__ = (
        Index(
            "ix_report_breakdown_rollups_breakdown_day_cover",
            "breakdown",
            "day",
            "breakdown_key",
            "code",
            "state",
            "currency",
            "outcome_day",
            "handoffs",
            "amount_minor",
        ),
    )


class RecoveryRollup(Base):
    """Approved hand-offs submitted on one local day, by the local day of their approval, the ladder's
    method (flexfactor, rerun, cascade), attempt (recycle hand-offs only) and currency (migration 0020):
    the ladder's recoveries read the approval days' rows, not every approved hand-off."""

    __tablename__ = "report_recovery_rollups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # local day the hand-offs were submitted
    outcome_day: Mapped[date | None] = mapped_column(Date)  # local day of outcome_at
    method: Mapped[str] = mapped_column(String(12))
    attempt: Mapped[int | None] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(CCY)
    recoveries: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        Index(
            "ix_report_recovery_rollups_outcome_cover",
            "outcome_day",
            "method",
            "attempt",
            "currency",
            "recoveries",
            "amount_minor",
        ),
    )


class RollupChange(Base):
    """The submission instant (report_sql.submitted(), by migration 0013; the column keeps its first
    name) of hand-offs written since the rollups were last refreshed, noted by trigger."""

    __tablename__ = "report_rollup_changes"
    # One row per changed hand-off on PostgreSQL (its triggers cannot skip instants noted already).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class RollupState(Base):
    """One row: the timezone the rollups' days are in, and when they were last rebuilt and refreshed."""

    __tablename__ = "report_rollup_state"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))
    rebuilt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class HoldoutRollup(Base):
    """Holdout assignments whose outcome is final, by local day of assignment, arm, currency, outcome and
    the local day it became final (migration 0018): a report of an earlier day reads them as still open."""

    __tablename__ = "report_holdout_rollups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # local day of assigned_at
    arm: Mapped[str] = mapped_column(String(12))
    currency: Mapped[str] = mapped_column(CCY)
    outcome: Mapped[str] = mapped_column(String(12))  # recovered or lost
    outcome_day: Mapped[date] = mapped_column(Date)  # local day of final_at
    assignments: Mapped[int] = mapped_column(BigInteger)
    assigned_minor: Mapped[int] = mapped_column(BigInteger)
    recovered_minor: Mapped[int] = mapped_column(BigInteger)


class HoldoutChange(Base):
    """A recycled decline whose holdout outcome may have changed since the last refresh, noted by triggers
    on assignments, approvals (retries and hand-offs) and subscriptions entering or leaving the ladder;
    `assigned_at` is set by the assignment triggers, whose old row may be gone."""

    __tablename__ = "report_holdout_changes"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscription_id: Mapped[str | None] = mapped_column(ID)
    decline_transaction_id: Mapped[str | None] = mapped_column(ID)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CrmCursor(Base):
    """How far a CRM pull has read: the end of the last window read in full (the next starts there,
    less the lookback)."""

    __tablename__ = "crm_cursors"
    name: Mapped[str] = mapped_column(ID, primary_key=True)  # "declines"
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[str | None] = mapped_column(ID)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CrmReject(Base):
    """A CRM row the import checks refused, with why; the row as checked, card numbers already removed."""

    __tablename__ = "crm_rejects"
    transaction_id: Mapped[str] = mapped_column(ID, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    row: Mapped[str] = mapped_column(Text)  # JSON of the feed columns, masked
    run_id: Mapped[str | None] = mapped_column(ID)
    rejected_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class CrmDelivery(Base):
    """One change of the outbox on its way to the CRM: what is sent, how often, and the CRM's answer.

    SENDING is written and committed before each call, so a delivery found SENDING (or RETRY) by a
    later push may have been applied: the CRM's current value is read before anything is sent again."""

    __tablename__ = "crm_deliveries"
    change_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(ID)
    field: Mapped[str] = mapped_column(String(64))
    new_value: Mapped[str | None] = mapped_column(Text)
    endpoint: Mapped[str | None] = mapped_column(String(64))  # None: the CRM has no place for it
    params: Mapped[str | None] = mapped_column(Text)  # JSON form sent, credentials not included
    # PENDING, SENDING, RETRY, DELIVERED, REFUSED (an ERROR answer), UNSUPPORTED, FAILED (attempts spent)
    state: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    answer: Mapped[str | None] = mapped_column(Text)
    next_try_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    run_id: Mapped[str | None] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (Index(None, "state", "change_id"),)
