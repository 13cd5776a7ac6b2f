"""What imported declines do: soft or hard after mapping, the purchase's entry into recycling, and
the writes to declines, customers, orders, subscriptions and the change history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import pandas as pd

from recycle_engine.config import Settings
from recycle_engine.domain.declines import DeclineType, MappingRule, OrderType, classify
from recycle_engine.domain.ladder import PlannedAttempt, local_date, next_attempt
from recycle_engine.domain.outcomes import FailureCause, OrderStatus, PurchaseStatus
from recycle_engine.domain.profile_versions import profile_version
from recycle_engine.services.intake.feed_rows import CheckedChunk, check_chunk
from recycle_engine.storage import decline_repo as repo
from recycle_engine.storage.bulk_rows import BoundRows
from recycle_engine.storage.profile_versions import record_profile_versions

if TYPE_CHECKING:
    from sqlalchemy import Connection, Dialect

__all__ = ["ImportSession", "PreparedChunk", "RecycleEntry", "recycle_entry"]

_REASON: Final = "DECLINE_IMPORTED"
_SOURCE: Final = "IMPORT"
_REBILL: Final = OrderType.REBILL.value
_DECLINED: Final = OrderStatus.DECLINED.value
# Subscription columns copied from the decline
_COPIED: Final = (
    "customer_id", "order_id", "campaign_id", "product_id", "billing_cycle", "billing_interval_days",
    "shippable", "currency", "gateway_id",
)  # fmt: skip
# What the writes read besides the bound declines rows: keys, decline times, subscription columns
_KEPT: Final = frozenset({*_COPIED, "transaction_id", "purchase_id", "declined_at", "amount_minor"})


@dataclass(frozen=True)
class RecycleEntry:
    """Where a rebill decline puts its purchase: RECYCLE_BILLING at attempt 0, or RECYCLE_FAILED and why."""

    status: PurchaseStatus
    failure_cause: FailureCause | None = None
    profile_id: str | None = None
    planned: PlannedAttempt | None = None  # the first attempt, when recycling


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk's good rows ready to store: the declines rows bound for the database, the columns the
    writes still read (_KEPT), and per row its file line and, for rebills, the local decline date and
    recycle entry."""

    declines: BoundRows
    columns: dict[str, list[Any]]
    lines: list[int]
    declined_on: list[date | None]  # local date in the settings timezone; rebills only
    entries: list[RecycleEntry | None]  # rebills only

    def value(self, column: str, position: int) -> Any:
        return self.columns[column][position]


def recycle_entry(
    settings: Settings,
    *,
    decline_type: DeclineType,
    campaign_id: str | None,
    gateway_id: str,
    declined_on: date,
    amount_minor: int,
    currency: str,
) -> RecycleEntry:
    """How a rebill decline enters recycling (domain.md 3); raises ValueError if its profile cannot price it."""
    failed = PurchaseStatus.RECYCLE_FAILED
    if decline_type is DeclineType.HARD:
        return RecycleEntry(failed, FailureCause.HARD_DECLINE)
    campaign = settings.campaigns.get(campaign_id or "")
    if campaign is not None and campaign.disable_recycle_billing:
        return RecycleEntry(failed, FailureCause.RECYCLE_DISABLED)
    profile = settings.profile_for_gateway(gateway_id)
    if profile is None:
        return RecycleEntry(failed, FailureCause.NO_PROFILE)
    planned = next_attempt(
        profile, last_attempt=0, last_ran_on=declined_on, original_minor=amount_minor, currency=currency
    )
    if planned is None:
        return RecycleEntry(failed, FailureCause.ALL_ATTEMPTS_DECLINED, profile.id)
    return RecycleEntry(PurchaseStatus.RECYCLE_BILLING, None, profile.id, planned)


class ImportSession:
    """The steps of one import, sharing settings, caches, the seen transaction ids and the counts."""

    def __init__(self, settings: Settings, *, dialect: Dialect, run_id: str, now: datetime) -> None:
        self.settings, self.dialect, self.run_id, self.now = settings, dialect, run_id, now
        self.counts = {"accepted": 0, "rejected": 0, "duplicates": 0}
        self.seen: dict[str, int] = {}
        self.ordinary = [g.id for g in settings.gateways.values() if not g.is_flexfactor]
        self.flexfactor = [g.id for g in settings.flexfactor_gateways()]
        # Feeds repeat the same texts, gateways, dates and prices: classify and plan each once.
        self._classified: dict[tuple[Any, ...], tuple[DeclineType, str | None, str | None]] = {}
        self._entries: dict[tuple[Any, ...], RecycleEntry | str] = {}
        # The schedule each new entrant follows until it leaves the ladder or `ladder migrate` moves it.
        self.versions = {p.id: profile_version(p) for p in settings.recycle_profiles.values()}
        self.stamp = repo.ChangeStamp(_REASON, _SOURCE, run_id, now)

    def check_and_prepare(
        self, frame: pd.DataFrame, first_line: int, times: Sequence[datetime | None] | None = None
    ) -> tuple[CheckedChunk, PreparedChunk]:
        """Check a chunk and prepare its good rows; `times` as check_chunk takes them."""
        checked = check_chunk(
            frame,
            first_line=first_line,
            gateways=self.ordinary,
            flexfactor_gateways=self.flexfactor,
            seen_transactions=self.seen,
            times=times,
        )
        return checked, self.prepare(checked)

    def prepare(self, checked: CheckedChunk) -> PreparedChunk:
        """Classify each good row after decline mapping and plan rebills; a rebill its profile cannot
        price is rejected here."""
        tz, columns = self.settings.timezone, checked.columns
        classes = [
            self._classify(key)
            for key in zip(
                columns["response_type"],
                columns["response_text"],
                columns["order_type"],
                columns["gateway_id"],
                strict=True,
            )
        ]
        declined_on: list[date | None] = []
        entries: list[RecycleEntry | None] = []
        keep: list[int] = []
        rows = zip(
            checked.lines, classes, columns["order_type"], columns["declined_at"], columns["campaign_id"],
            columns["gateway_id"], columns["amount_minor"], columns["currency"], strict=True,
        )  # fmt: skip
        for position, (line, found, order_type, declined_at, *priced) in enumerate(rows):
            if order_type != _REBILL:
                keep.append(position)
                declined_on.append(None)
                entries.append(None)
                continue
            day = local_date(declined_at, tz)
            entry = self._entry(found[0], day, *priced)
            if isinstance(entry, str):
                checked.reject(line, entry)
                continue
            keep.append(position)
            declined_on.append(day)
            entries.append(entry)
        if len(keep) < len(classes):
            columns = {key: [values[p] for p in keep] for key, values in columns.items()}
            classes = [classes[p] for p in keep]
        columns["decline_type"] = [found[0].value for found in classes]
        columns["mapping_rule"] = [found[1] for found in classes]
        columns["display_message"] = [found[2] for found in classes]
        columns["imported_at"] = [self.now] * len(classes)
        return PreparedChunk(
            repo.bind_declines(self.dialect, columns),
            {key: values for key, values in columns.items() if key in _KEPT},
            [checked.lines[p] for p in keep],
            declined_on,
            entries,
        )

    def write(self, conn: Connection, prepared: PreparedChunk) -> None:
        repo.lock_for_import(conn)
        fresh = repo.insert_new_declines(conn, prepared.columns["transaction_id"], prepared.declines)
        self.counts["accepted"] += len(fresh)
        self.counts["duplicates"] += len(prepared.lines) - len(fresh)
        customers = _latest(prepared, fresh, "customer_id")
        repo.upsert_customers(conn, [prepared.value("transaction_id", p) for p in customers.values()])
        changes = repo.StatusChanges()
        created = self._write_orders(conn, prepared, fresh, changes)
        self._write_subscriptions(conn, prepared, fresh, changes)
        repo.append_orders_created(conn, created, self.stamp)
        repo.append_status_changes(conn, changes, self.stamp)

    def _write_orders(
        self, conn: Connection, prepared: PreparedChunk, fresh: Sequence[int], changes: repo.StatusChanges
    ) -> list[str]:
        """Upsert the orders of the fresh declines, noting status moves of known orders in `changes`;
        returns the transaction ids of the orders created."""
        latest = _latest(prepared, fresh, "order_id")
        known = repo.known_orders(conn, list(latest))
        transactions, created = [], []
        declined_at, transaction_id = prepared.columns["declined_at"], prepared.columns["transaction_id"]
        for order_id, position in latest.items():
            old = known.get(order_id)
            if old is None:
                created.append(transaction_id[position])
            elif old.latest_declined_at and old.latest_declined_at > declined_at[position]:
                continue  # a newer decline of this order is already applied
            elif old.status != _DECLINED:
                changes.add("ORDER", order_id, old.status, _DECLINED)
            transactions.append(transaction_id[position])
        repo.upsert_orders(conn, transactions, now=self.now)
        return created

    def _write_subscriptions(
        self, conn: Connection, prepared: PreparedChunk, fresh: Sequence[int], changes: repo.StatusChanges
    ) -> None:
        rebills = [p for p in fresh if prepared.entries[p] is not None]
        latest = _latest(prepared, rebills, "purchase_id")
        known = repo.known_subscriptions(conn, list(latest))
        chosen: list[int] = []
        for purchase_id, position in latest.items():
            old, entry = known.get(purchase_id), prepared.entries[position]
            if entry is None:
                continue
            if old is not None and _is_older_than(prepared, position, old):
                continue  # an older decline never overrides what a newer one (or a later cycle) set
            chosen.append(position)
            if old is None or old.status != entry.status:
                changes.add("SUBSCRIPTION", purchase_id, old.status if old else None, entry.status)
            old_cause = old.failure_cause if old else None
            new_cause = entry.failure_cause.value if entry.failure_cause else None
            if old_cause != new_cause:
                changes.add("SUBSCRIPTION", purchase_id, old_cause, new_cause, field_name="failure_cause")
        if chosen:
            # In the same transaction as the subscriptions that name them: a version is never missing.
            record_profile_versions(conn, self.settings.recycle_profiles.values(), now=self.now)
            repo.upsert_subscriptions(conn, self._subscription_columns(prepared, chosen))

    def _classify(self, key: tuple[str, str | None, str, str]) -> tuple[DeclineType, str | None, str | None]:
        """(response_type, response_text, order_type, gateway_id) -> type, mapping rule, display text."""
        if key not in self._classified:
            response_type, response_text, order_type, gateway_id = key
            gateway = self.settings.gateways[gateway_id]
            found = classify(
                response_type=DeclineType.HARD if response_type == "HARD_DECLINE" else DeclineType.SOFT,
                response_text=response_text or "",
                order_type=OrderType(order_type),
                gateway_id=gateway.id,
                gateway_type=gateway.type.value,
                rules=self.settings.decline_mapping,
            )
            rule = _describe_rule(found.rule) if found.rule else None
            self._classified[key] = (found.decline_type, rule, found.display_message)
        return self._classified[key]

    def _entry(
        self,
        decline_type: DeclineType,
        declined_on: date,
        campaign_id: str | None,
        gateway_id: str,
        amount_minor: int,
        currency: str,
    ) -> RecycleEntry | str:
        """The purchase's recycle entry, or the reject reason when its profile cannot price it."""
        key = (decline_type, declined_on, campaign_id, gateway_id, amount_minor, currency)
        if key not in self._entries:
            try:
                self._entries[key] = recycle_entry(
                    self.settings,
                    decline_type=decline_type,
                    campaign_id=campaign_id,
                    gateway_id=gateway_id,
                    declined_on=declined_on,
                    amount_minor=amount_minor,
                    currency=currency,
                )
            except ValueError as exc:
                self._entries[key] = f"amount: the recycle profile cannot price it ({exc})"
        return self._entries[key]

    def _subscription_columns(self, prepared: PreparedChunk, chosen: Sequence[int]) -> dict[str, list[Any]]:
        """The subscriptions rows, column by column, of the rebill declines at `chosen` positions."""

        def take(column: str) -> list[Any]:
            values = prepared.columns[column]
            return [values[p] for p in chosen]

        entries = [cast(RecycleEntry, prepared.entries[p]) for p in chosen]  # rebills: never None
        planned = [e.planned for e in entries]
        n = len(chosen)
        return {
            "id": take("purchase_id"),
            **{c: take(c) for c in _COPIED},
            "status": [e.status.value for e in entries],
            "price_minor": take("amount_minor"),
            "has_payment_token": [True] * n,
            "recycle_profile_id": [e.profile_id for e in entries],
            "recycle_profile_version": [self.versions.get(e.profile_id or "") for e in entries],
            "recycle_transaction_id": take("transaction_id"),
            "recycle_declined_gateway_id": take("gateway_id"),
            "recycle_original_minor": take("amount_minor"),
            "recycle_last_attempt": [0] * n,
            "recycle_last_ran_on": [prepared.declined_on[p] for p in chosen],
            "next_attempt": [p.attempt if p else None for p in planned],
            "next_attempt_on": [p.due_on if p else None for p in planned],
            "failure_cause": [e.failure_cause.value if e.failure_cause else None for e in entries],
            "updated_at": [self.now] * n,
        }


def _is_older_than(prepared: PreparedChunk, position: int, old: repo.KnownSubscription) -> bool:
    if old.billing_cycle > prepared.value("billing_cycle", position):
        return True
    declined_at = prepared.value("declined_at", position)
    return old.recycle_declined_at is not None and old.recycle_declined_at >= declined_at


def _latest(prepared: PreparedChunk, positions: Sequence[int], key: str) -> dict[str, int]:
    """Per non-empty `key`, the position of the latest decline (the later line on a tie): latest data wins."""
    keys, declined_at = prepared.columns[key], prepared.columns["declined_at"]
    latest: dict[str, int] = {}
    for p in positions:
        value = keys[p]
        if value and (value not in latest or declined_at[p] >= declined_at[latest[value]]):
            latest[value] = p
    return latest


def _describe_rule(rule: MappingRule) -> str:
    """e.g. "MID nmi-main RECURRING contains 'Do Not Honor' -> SOFT"."""
    return f"{rule.scope} {rule.target} {rule.order_type} contains {rule.contains!r} -> {rule.map_to}"[:256]
