"""Recycle schedule versions: record each profile content once, and find the one a subscription follows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, or_, select, update

from recycle_engine.domain.outcomes import PurchaseStatus
from recycle_engine.domain.profile_versions import profile_content, profile_from_content, version_of
from recycle_engine.domain.profiles import RecycleProfile
from recycle_engine.storage.models import RecycleProfileVersion, Subscription
from recycle_engine.storage.upsert import insert_ignore

__all__ = [
    "ProfileBook",
    "StoredVersion",
    "lock_subscriptions_off_version",
    "move_subscriptions_to_version",
    "record_profile_versions",
    "stored_versions",
]

_RECYCLING = PurchaseStatus.RECYCLE_BILLING.value


@dataclass(frozen=True)
class StoredVersion:
    """One recorded version of a profile, with how many recycling subscriptions follow it now.

    `version` None stands for the subscriptions that entered before versions were recorded."""

    profile_id: str
    version: str | None
    first_seen_at: datetime | None
    in_flight: int
    current: bool  # the content settings.yaml describes today


def record_profile_versions(
    conn: Connection, profiles: Iterable[RecycleProfile], *, now: datetime
) -> dict[str, str]:
    """Record the content of each profile (once per version) and return profile id -> its version."""
    rows, versions = [], {}
    for profile in profiles:
        content = profile_content(profile)
        versions[profile.id] = version = version_of(content)
        rows.append(
            {
                "profile_id": profile.id,
                "version": version,
                "content": json.dumps(content, sort_keys=True),
                "first_seen_at": now,
            }
        )
    insert_ignore(conn, RecycleProfileVersion, rows, ["profile_id", "version"])
    return versions


def stored_versions(conn: Connection, profiles: Mapping[str, RecycleProfile]) -> list[StoredVersion]:
    """Every recorded version, oldest first per profile, with its in-flight (RECYCLE_BILLING) count;
    subscriptions without a recorded version come last, as version None."""
    current = {p.id: version_of(profile_content(p)) for p in profiles.values()}
    counts = {
        (r.recycle_profile_id, r.recycle_profile_version): int(r.n)
        for r in conn.execute(
            select(
                Subscription.recycle_profile_id, Subscription.recycle_profile_version, func.count().label("n")
            )
            .where(Subscription.status == _RECYCLING)
            .group_by(Subscription.recycle_profile_id, Subscription.recycle_profile_version)
        )
    }
    v = RecycleProfileVersion
    rows = conn.execute(
        select(v.profile_id, v.version, v.first_seen_at).order_by(v.profile_id, v.first_seen_at, v.version)
    )
    found = [
        StoredVersion(
            r.profile_id,
            r.version,
            r.first_seen_at,
            counts.get((r.profile_id, r.version), 0),
            current.get(r.profile_id) == r.version,
        )
        for r in rows
    ]
    unversioned = sorted((p, n) for (p, ver), n in counts.items() if ver is None and p is not None)
    return found + [StoredVersion(p, None, None, n, False) for p, n in unversioned]


class ProfileBook:
    """The profile each recycling subscription follows: the version it entered with.

    A subscription without a recorded version (it entered before versions were kept) follows the
    profile in settings.yaml. Stored contents are read on first use and kept for the book's life,
    which is one transaction: the covered gateways and holdout_percent always come from settings."""

    def __init__(self, conn: Connection, profiles: Mapping[str, RecycleProfile]) -> None:
        self._conn = conn
        self._profiles = profiles
        self._current = {p.id: version_of(profile_content(p)) for p in profiles.values()}
        self._built: dict[tuple[str, str], RecycleProfile] = {}

    def profile(self, profile_id: str | None, version: str | None) -> RecycleProfile | None:
        """The profile to plan with; None when the profile is neither in settings nor recorded.

        Raises KeyError for a version the table does not hold (never written without its row)."""
        if not profile_id:
            return None
        current = self._profiles.get(profile_id)
        if version is None or self._current.get(profile_id) == version:
            return current
        key = (profile_id, version)
        if key not in self._built:
            content = self._conn.execute(
                select(RecycleProfileVersion.content).where(
                    RecycleProfileVersion.profile_id == profile_id, RecycleProfileVersion.version == version
                )
            ).scalar_one_or_none()
            if content is None:
                raise KeyError(f"recycle profile {profile_id} version {version} is not recorded")
            self._built[key] = profile_from_content(
                profile_id,
                json.loads(content),
                gateways=current.gateways if current else (),
                holdout_percent=current.holdout_percent if current else Decimal(0),
            )
        return self._built[key]


def lock_subscriptions_off_version(
    conn: Connection, *, profile_id: str, version: str, limit: int
) -> list[Row[Any]]:
    """Up to `limit` recycling subscriptions of `profile_id` on another version than `version` (or
    none), by id, locked on PostgreSQL: id, currency, recycle_profile_version, recycle_original_minor,
    recycle_last_attempt, recycle_last_ran_on, next_attempt, next_attempt_on, open_handoff_id."""
    stmt = (
        select(
            Subscription.id,
            Subscription.currency,
            Subscription.recycle_profile_version,
            Subscription.recycle_original_minor,
            Subscription.recycle_last_attempt,
            Subscription.recycle_last_ran_on,
            Subscription.next_attempt,
            Subscription.next_attempt_on,
            Subscription.open_handoff_id,
        )
        .where(
            Subscription.status == _RECYCLING,
            Subscription.recycle_profile_id == profile_id,
            or_(
                Subscription.recycle_profile_version.is_(None),
                Subscription.recycle_profile_version != version,
            ),
        )
        .order_by(Subscription.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(of=Subscription)
    return list(conn.execute(stmt))


def move_subscriptions_to_version(
    conn: Connection, updates: Sequence[dict[str, Any]], *, version: str, now: datetime
) -> None:
    """Put each subscription of `updates` ({"b_id", "b_next", "b_next_on"}) on `version` with its next
    attempt and date, in one executemany."""
    conn.execute(
        update(Subscription)
        .where(Subscription.id == bindparam("b_id"))
        .values(
            recycle_profile_version=version,
            next_attempt=bindparam("b_next"),
            next_attempt_on=bindparam("b_next_on"),
            updated_at=now,
        )
        .execution_options(synchronize_session=False),
        updates,
    )
