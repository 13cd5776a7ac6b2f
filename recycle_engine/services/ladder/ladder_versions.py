"""`ladder versions` and `ladder migrate`: which schedule in-flight subscriptions follow, and moving them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from recycle_engine.config import Settings
from recycle_engine.domain.ladder import next_attempt
from recycle_engine.domain.outcomes import FailureCause
from recycle_engine.domain.profiles import attempt_label
from recycle_engine.errors import NotFound
from recycle_engine.storage.profile_versions import (
    StoredVersion,
    lock_subscriptions_off_version,
    move_subscriptions_to_version,
    record_profile_versions,
    stored_versions,
)
from recycle_engine.storage.subscription_repo import RecycleFailure, apply_failures, record_changes

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["MigrateResult", "format_versions", "list_versions", "migrate_profile"]

log = logging.getLogger(__name__)

REASON: Final = "LADDER_MIGRATED"
_SOURCE: Final = "LADDER"
_CHUNK: Final = 1000  # subscriptions moved per transaction


@dataclass(frozen=True)
class MigrateResult:
    """What `ladder migrate` did to the in-flight subscriptions of one profile."""

    profile_id: str
    version: str
    moved: int  # now on the current version (every count below is among these)
    rescheduled: int  # next attempt or its date changed
    waiting: int  # an open hand-off: the version moves, FlexFactor's outcome still decides
    ended: int  # no attempt left under the new ladder: RECYCLE_FAILED (ALL_ATTEMPTS_DECLINED)


def list_versions(settings: Settings, engine: Engine) -> list[StoredVersion]:
    with engine.connect() as conn:
        return stored_versions(conn, settings.recycle_profiles)


def format_versions(settings: Settings, versions: Sequence[StoredVersion]) -> list[str]:
    """Lines for `ladder versions`: per profile, each version with its in-flight count."""
    lines = []
    for profile_id in sorted({v.profile_id for v in versions} | set(settings.recycle_profiles)):
        lines.append(f"recycle profile {profile_id}:")
        mine = [v for v in versions if v.profile_id == profile_id]
        if profile_id in settings.recycle_profiles and not any(v.current for v in mine):
            lines.append(
                "  current settings: not recorded yet (the next import or ladder migrate records it)"
            )
        for v in mine:
            if v.version is None:
                lines.append(f"  (no version: entered before versions were kept)  in flight {v.in_flight}")
                continue
            seen = v.first_seen_at.isoformat(timespec="seconds") if v.first_seen_at else "?"
            mark = "  <- current settings" if v.current else ""
            lines.append(f"  {v.version}  first seen {seen}  in flight {v.in_flight}{mark}")
    return lines


def migrate_profile(settings: Settings, engine: Engine, *, profile_id: str, now: datetime) -> MigrateResult:
    """Move every in-flight subscription of `profile_id` to the profile settings.yaml describes now.

    Each keeps the attempts it has run (last attempt and its date); its next attempt is recomputed
    under the new ladder from there, and one change row (reason LADDER_MIGRATED) per subscription
    records the move, plus one for a new next attempt. Raises NotFound for a profile not in settings."""
    profile = settings.recycle_profiles.get(profile_id)
    if profile is None:
        raise NotFound(f"recycle profile {profile_id!r} is not in the settings")
    moved = rescheduled = waiting = ended = 0
    with engine.begin() as conn:
        version = record_profile_versions(conn, [profile], now=now)[profile_id]
    while True:
        with engine.begin() as conn:
            rows = lock_subscriptions_off_version(conn, profile_id=profile_id, version=version, limit=_CHUNK)
            if not rows:
                break
            updates: list[dict[str, Any]] = []
            failures: list[RecycleFailure] = []
            changes: list[dict[str, object]] = []
            for row in rows:
                change = _changer(row.id, now)
                changes.append(change("recycle_profile_version", row.recycle_profile_version, version))
                nxt, nxt_on = row.next_attempt, row.next_attempt_on
                if row.open_handoff_id is not None:
                    waiting += 1  # the ladder is with FlexFactor; a refused hand-off continues on the new one
                else:
                    planned = next_attempt(
                        profile,
                        last_attempt=row.recycle_last_attempt,
                        last_ran_on=row.recycle_last_ran_on,
                        original_minor=row.recycle_original_minor,
                        currency=row.currency,
                    )
                    if planned is None:
                        failures.append(RecycleFailure(row.id, FailureCause.ALL_ATTEMPTS_DECLINED.value))
                        ended += 1
                    else:
                        nxt, nxt_on = planned.attempt, planned.due_on
                    if planned is not None and (nxt, nxt_on) != (row.next_attempt, row.next_attempt_on):
                        rescheduled += 1
                        changes.append(
                            change(
                                "next_attempt_on",
                                _attempt_text(row.next_attempt, row.next_attempt_on),
                                _attempt_text(nxt, nxt_on),
                            )
                        )
                updates.append({"b_id": row.id, "b_next": nxt, "b_next_on": nxt_on})
            move_subscriptions_to_version(conn, updates, version=version, now=now)
            record_changes(conn, changes)
            apply_failures(conn, failures, now=now, run_id=None, reason=REASON, source=_SOURCE)
            moved += len(rows)
    log.info(
        "ladder migrated",
        extra={"profile": profile_id, "version": version, "moved": moved, "rescheduled": rescheduled},
    )
    return MigrateResult(profile_id, version, moved, rescheduled, waiting, ended)


def _changer(subscription_id: str, now: datetime) -> Any:
    def change(field: str, old: object, new: object) -> dict[str, object]:
        return {
            "entity": "SUBSCRIPTION",
            "entity_id": subscription_id,
            "field": field,
            "old_value": None if old is None else str(old),
            "new_value": None if new is None else str(new),
            "reason": REASON,
            "source": _SOURCE,
            "handoff_id": None,
            "run_id": None,
            "occurred_at": now,
        }

    return change


def _attempt_text(attempt: int | None, on: object) -> str | None:
    """e.g. "2026-06-12 (attempt 4)", as the change history shows a booked attempt."""
    if attempt is None:
        return None
    return f"{on} (attempt {attempt_label(attempt)})"
