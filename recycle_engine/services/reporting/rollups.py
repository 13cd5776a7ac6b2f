"""Keep the report's daily rollups current: recompute the local submission days whose hand-offs
changed, or all."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from recycle_engine.errors import StorageError
from recycle_engine.storage import holdout_rollup_repo, rollup_repo
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["RollupRefresh", "refresh_after_run", "refresh_rollups"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollupRefresh:
    """What one refresh did: local days recomputed, whether it rebuilt everything, how long it took."""

    days: int
    rebuilt: bool
    seconds: float
    holdout_days: int = 0  # local assignment days of the holdout rollup recomputed
    recovery_days: int = 0  # local days of the recovery rollup built on their own (after migration 0020)


def refresh_rollups(engine: Engine, tz: ZoneInfo, *, now: datetime, rebuild: bool = False) -> RollupRefresh:
    """Recompute the rollup rows of every local day (in `tz`) on which a hand-off was written since the
    last refresh, in one transaction; rebuild every day when asked, when never built, or when `tz` is not
    the timezone they were built in.

    A refresh recomputes whole days with INSERT ... SELECT ... GROUP BY, so its rows always equal a
    recomputation from scratch, and a crash leaves the previous rows and every note in place. Refreshes
    run one at a time (the state row is locked). Raises StorageError when the database fails."""
    started = time.perf_counter()
    rebuild_all = rebuild
    try:
        with engine.begin() as conn:
            built_in = rollup_repo.lock_state(conn, now=now)
            rebuild = rebuild or built_in != tz.key
            changed = rollup_repo.take_changes(conn)
            if rebuild:
                rollup_repo.clear_rollups(conn)
                days = rollup_repo.handoff_days(conn, tz)
            else:
                days = sorted({at.astimezone(tz).date() for at in changed})
            for first, last in rollup_repo.day_spans(days):
                rollup_repo.recompute_days(conn, tz, first, last)
            rollup_repo.save_state(conn, tz, now=now, rebuilt=rebuild)
            recovery_days = _build_recoveries(conn, tz, now=now, rebuilt=rebuild)
            holdout_days = _refresh_holdout(conn, tz, now=now, rebuild=rebuild_all)
    except DatabaseFailure as exc:
        raise StorageError(f"cannot refresh the report rollups ({exc.__class__.__name__})") from exc
    seconds = time.perf_counter() - started
    result = RollupRefresh(len(days), rebuild, seconds, holdout_days, recovery_days)
    log.info(
        "report rollups refreshed",
        extra={
            "days": result.days,
            "holdout_days": result.holdout_days,
            "recovery_days": result.recovery_days,
            "rebuilt": result.rebuilt,
            "seconds": round(result.seconds, 3),
        },
    )
    return result


def _build_recoveries(conn: Connection, tz: ZoneInfo, *, now: datetime, rebuilt: bool) -> int:
    """Build the recovery rollup for every day when it was never built in `tz` (as after migration
    0020) and the refresh just now did not rebuild it with the other rollups; every other refresh
    recomputes its days with theirs (rollup_repo.recompute_days)."""
    name = rollup_repo.RECOVERIES_STATE_NAME
    built_in = rollup_repo.lock_state(conn, now=now, name=name)
    missing = not rebuilt and built_in != tz.key
    days = rollup_repo.handoff_days(conn, tz) if missing else []
    if missing:
        rollup_repo.clear_recoveries(conn)
        for first, last in rollup_repo.day_spans(days):
            rollup_repo.recompute_recovery_days(conn, tz, first, last)
    rollup_repo.save_state(conn, tz, now=now, rebuilt=missing or rebuilt, name=name)
    return len(days)


def _refresh_holdout(conn: Connection, tz: ZoneInfo, *, now: datetime, rebuild: bool) -> int:
    """Settle again the assignments of the recycled declines noted as changed and recompute their local
    days of assignment; on a rebuild settle every assignment. A change of `tz` (or a rollup never built,
    as after migration 0018, which settled the assignments already) recomputes every day."""
    name = holdout_rollup_repo.STATE_NAME
    built_in = rollup_repo.lock_state(conn, now=now, name=name)
    keys, noted = holdout_rollup_repo.take_changes(conn)
    moved = [] if rebuild else holdout_rollup_repo.reclassify(conn, keys)
    if rebuild:
        holdout_rollup_repo.reclassify_all(conn)
    every_day = rebuild or built_in != tz.key
    if every_day:
        holdout_rollup_repo.clear_rollup(conn)
        days = holdout_rollup_repo.assignment_days(conn, tz)
    else:
        days = sorted({at.astimezone(tz).date() for at in [*noted, *moved]})
    for first, last in rollup_repo.day_spans(days):
        holdout_rollup_repo.recompute_days(conn, tz, first, last)
    rollup_repo.save_state(conn, tz, now=now, rebuilt=every_day, name=name)
    return len(days)


def refresh_after_run(engine: Engine, tz: ZoneInfo, *, now: datetime, run_id: str) -> RollupRefresh | None:
    """Refresh after a nightly run, so the morning report finds little left to do. Best effort: the run's
    work is committed already, and a failed refresh keeps its notes for the next one (the report's own
    refresh fails loudly), so a failure is logged, never raised."""
    try:
        return refresh_rollups(engine, tz, now=now)
    except StorageError as exc:
        log.warning("report rollups not refreshed", extra={"run_id": run_id, "reason": str(exc)})
        return None
