"""What imported declines do: soft or hard after mapping, the purchase's entry into recycling, and
the writes to declines, customers, orders, subscriptions and the change history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

import pandas as pd
from sqlalchemy import Connection

from recycle_engine.domain.declines import DeclineType, MappingRule, OrderType, classify
from recycle_engine.domain.ladder import PlannedAttempt, local_date, next_attempt
from recycle_engine.domain.outcomes import FailureCause, OrderStatus, PurchaseStatus
from recycle_engine.domain.profile_versions import profile_version
from recycle_engine.services.feed_rows import CheckedChunk, check_chunk
from recycle_engine.settings import Settings
from recycle_engine.storage import decline_repo as repo
from recycle_engine.storage.profile_versions import record_profile_versions

__all__ = ["ImportSession", "RecycleEntry", "recycle_entry"]

_REASON: Final = "DECLINE_IMPORTED"
_SOURCE: Final = "IMPORT"
_REBILL: Final = OrderType.REBILL.value
_DECLINED: Final = OrderStatus.DECLINED.value


@dataclass(frozen=True)
class RecycleEntry:
    """Where a rebill decline puts its purchase: RECYCLE_BILLING at attempt 0, or RECYCLE_FAILED and why."""

    status: PurchaseStatus
    failure_cause: FailureCause | None = None
    profile_id: str | None = None
    planned: PlannedAttempt | None = None  # the first attempt, when recycling


@dataclass(frozen=True)
class _Prepared:
    record: dict[str, Any]  # a declines row
    line: int
    declined_on: date | None  # local date in the settings timezone; rebills only
    entry: RecycleEntry | None  # rebills only


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

    def __init__(self, settings: Settings, *, run_id: str, now: datetime) -> None:
        self.settings, self.run_id, self.now = settings, run_id, now
        self.counts = {"accepted": 0, "rejected": 0, "duplicates": 0}
        self.seen: dict[str, int] = {}
        self.ordinary = [g.id for g in settings.gateways.values() if not g.is_flexfactor]
        self.flexfactor = [g.id for g in settings.flexfactor_gateways()]
        # Feeds repeat the same texts, gateways, dates and prices: classify and plan each once.
        self._classified: dict[tuple[Any, ...], tuple[DeclineType, str | None, str | None]] = {}
        self._entries: dict[tuple[Any, ...], RecycleEntry | str] = {}
        # The schedule each new entrant follows until it leaves the ladder or `ladder migrate` moves it.
        self.versions = {p.id: profile_version(p) for p in settings.recycle_profiles.values()}

    def check_and_prepare(self, frame: pd.DataFrame, first_line: int) -> tuple[CheckedChunk, list[_Prepared]]:
        checked = check_chunk(
            frame,
            first_line=first_line,
            gateways=self.ordinary,
            flexfactor_gateways=self.flexfactor,
            seen_transactions=self.seen,
        )
        return checked, self.prepare(checked)

    def prepare(self, checked: CheckedChunk) -> list[_Prepared]:
        """Classify each good row after decline mapping and plan rebills; a rebill its profile cannot
        price is rejected here."""
        prepared: list[_Prepared] = []
        tz = self.settings.timezone
        for record, line in zip(checked.records, checked.lines, strict=True):
            decline_type, record["mapping_rule"], record["display_message"] = self._classify(record)
            record["decline_type"], record["imported_at"] = decline_type.value, self.now
            if record["order_type"] != _REBILL:
                prepared.append(_Prepared(record, line, None, None))
                continue
            declined_on = local_date(record["declined_at"], tz)
            entry = self._entry(record, decline_type, declined_on)
            if isinstance(entry, str):
                checked.reject(line, entry)
                continue
            prepared.append(_Prepared(record, line, declined_on, entry))
        return prepared

    def write(self, conn: Connection, prepared: Sequence[_Prepared]) -> None:
        repo.lock_for_import(conn)
        inserted = repo.insert_new_declines(conn, [p.record for p in prepared])
        fresh = [p for p in prepared if p.record["transaction_id"] in inserted]
        self.counts["accepted"] += len(inserted)
        self.counts["duplicates"] += len(prepared) - len(inserted)
        customers = _latest(fresh, "customer_id").values()
        repo.upsert_customers(conn, [repo.customer_from_decline(p.record) for p in customers])
        changes = self._write_orders(conn, fresh) + self._write_subscriptions(conn, fresh)
        repo.append_changes(conn, changes)

    def _write_orders(self, conn: Connection, fresh: Sequence[_Prepared]) -> list[dict[str, object]]:
        latest = _latest(fresh, "order_id")
        known = repo.known_orders(conn, list(latest))
        rows, changes = [], []
        for order_id, p in latest.items():
            old = known.get(order_id)
            if (
                old is not None
                and old.latest_declined_at
                and old.latest_declined_at > p.record["declined_at"]
            ):
                continue  # a newer decline of this order is already applied
            rows.append(repo.order_from_decline(p.record, now=self.now))
            if old is None or old.status != _DECLINED:
                changes.append(self._change("ORDER", order_id, old.status if old else None, _DECLINED))
        repo.upsert_orders(conn, rows)
        return changes

    def _write_subscriptions(self, conn: Connection, fresh: Sequence[_Prepared]) -> list[dict[str, object]]:
        latest = _latest([p for p in fresh if p.entry is not None], "purchase_id")
        known = repo.known_subscriptions(conn, list(latest))
        rows, changes = [], []
        for purchase_id, p in latest.items():
            old, entry = known.get(purchase_id), p.entry
            if entry is None:
                continue
            if old is not None and _is_older_than(p, old):
                continue  # an older decline never overrides what a newer one (or a later cycle) set
            rows.append(self._subscription_row(p, entry))
            if old is None or old.status != entry.status:
                changes.append(
                    self._change("SUBSCRIPTION", purchase_id, old.status if old else None, entry.status)
                )
        if rows:
            # In the same transaction as the subscriptions that name them: a version is never missing.
            record_profile_versions(conn, self.settings.recycle_profiles.values(), now=self.now)
        repo.upsert_subscriptions(conn, rows)
        return changes

    def _change(self, entity: str, entity_id: str, old: str | None, new: str) -> dict[str, object]:
        return repo.status_change(
            entity, entity_id, old, new, reason=_REASON, source=_SOURCE, run_id=self.run_id, now=self.now
        )

    def _classify(self, record: dict[str, Any]) -> tuple[DeclineType, str | None, str | None]:
        key = (record["response_type"], record["response_text"], record["order_type"], record["gateway_id"])
        if key not in self._classified:
            gateway = self.settings.gateways[record["gateway_id"]]
            found = classify(
                response_type=DeclineType.HARD if key[0] == "HARD_DECLINE" else DeclineType.SOFT,
                response_text=record["response_text"] or "",
                order_type=OrderType(record["order_type"]),
                gateway_id=gateway.id,
                gateway_type=gateway.type.value,
                rules=self.settings.decline_mapping,
            )
            rule = _describe_rule(found.rule) if found.rule else None
            self._classified[key] = (found.decline_type, rule, found.display_message)
        return self._classified[key]

    def _entry(
        self, record: dict[str, Any], decline_type: DeclineType, declined_on: date
    ) -> RecycleEntry | str:
        """The purchase's recycle entry, or the reject reason when its profile cannot price it."""
        args = (decline_type, record["campaign_id"], record["gateway_id"], declined_on)
        key = (*args, record["amount_minor"], record["currency"])
        if key not in self._entries:
            try:
                self._entries[key] = recycle_entry(
                    self.settings,
                    decline_type=decline_type,
                    campaign_id=record["campaign_id"],
                    gateway_id=record["gateway_id"],
                    declined_on=declined_on,
                    amount_minor=record["amount_minor"],
                    currency=record["currency"],
                )
            except ValueError as exc:
                self._entries[key] = f"amount: the recycle profile cannot price it ({exc})"
        return self._entries[key]

    def _subscription_row(self, p: _Prepared, entry: RecycleEntry) -> dict[str, object]:
        r, planned = p.record, entry.planned
        copied = ("customer_id", "order_id", "campaign_id", "product_id", "billing_cycle")
        return {
            "id": r["purchase_id"],
            **{c: r[c] for c in (*copied, "billing_interval_days", "shippable", "currency", "gateway_id")},
            "status": entry.status.value,
            "price_minor": r["amount_minor"],
            "has_payment_token": True,
            "recycle_profile_id": entry.profile_id,
            "recycle_profile_version": self.versions.get(entry.profile_id or ""),
            "recycle_transaction_id": r["transaction_id"],
            "recycle_declined_gateway_id": r["gateway_id"],
            "recycle_original_minor": r["amount_minor"],
            "recycle_last_attempt": 0,
            "recycle_last_ran_on": p.declined_on,
            "next_attempt": planned.attempt if planned else None,
            "next_attempt_on": planned.due_on if planned else None,
            "failure_cause": entry.failure_cause.value if entry.failure_cause else None,
            "updated_at": self.now,
        }


def _is_older_than(p: _Prepared, old: repo.KnownSubscription) -> bool:
    if old.billing_cycle > p.record["billing_cycle"]:
        return True
    return old.recycle_declined_at is not None and old.recycle_declined_at >= p.record["declined_at"]


def _latest(prepared: Sequence[_Prepared], key: str) -> dict[str, _Prepared]:
    """Per non-empty `key`, the row of the latest decline (the later line on a tie): latest data wins."""
    latest: dict[str, _Prepared] = {}
    for p in prepared:
        value = p.record[key]
        if value and (value not in latest or p.record["declined_at"] >= latest[value].record["declined_at"]):
            latest[value] = p
    return latest


def _describe_rule(rule: MappingRule) -> str:
    """e.g. "MID nmi-main RECURRING contains 'Do Not Honor' -> SOFT"."""
    return f"{rule.scope} {rule.target} {rule.order_type} contains {rule.contains!r} -> {rule.map_to}"[:256]
