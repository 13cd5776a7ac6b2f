"""The dashboard's trend series, pure functions over rows: a value per local day (or None where a day
has none to show), and the days a recycle schedule version changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import pandas as pd

from recycle_engine.reports.recovery import STATE_GROUPS, cohort_table
from recycle_engine.reports.render import records

__all__ = [
    "RATE_AGES",
    "VersionChange",
    "day_axis",
    "outcomes_per_day",
    "rate_by_age",
    "recovered_per_day",
    "submitted_per_day",
    "version_changes",
]

RATE_AGES: Final = (7, 14, 21)  # cohort ages (days since submission) the rate trend follows


@dataclass(frozen=True)
class VersionChange:
    """A recycle profile's schedule changed to `version` on local `day` (its first sighting)."""

    day: date
    profile_id: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.profile_id} {self.version[:8]}"


def day_axis(last: date, n_days: int) -> list[date]:
    """The `n_days` local days ending with `last`, oldest first."""
    return [last - timedelta(days=n_days - 1 - i) for i in range(n_days)]


def _index(days: Sequence[date]) -> dict[date, int]:
    return {d: i for i, d in enumerate(days)}


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def recovered_per_day(outcomes: pd.DataFrame, days: Sequence[date]) -> dict[str, list[int]]:
    """Minor units recovered (approvals, dated by the day of approval) on each day, per currency;
    0 on a day with none. `outcomes` has day, state, currency, n, amount_minor."""
    at = _index(days)
    out: dict[str, list[int]] = {}
    for row in records(outcomes):
        if STATE_GROUPS.get(row["state"]) != "recovered" or _as_date(row["day"]) not in at:
            continue
        out.setdefault(str(row["currency"]), [0] * len(days))[at[_as_date(row["day"])]] += int(
            row["amount_minor"]
        )
    return dict(sorted(out.items()))


def submitted_per_day(facts: pd.DataFrame, days: Sequence[date]) -> list[int]:
    """Hand-offs sent on each day, FAILED ones included (cohort facts: cohort as ISO text, n); 0 on a
    night with none."""
    at, out = _index(days), [0] * len(days)
    for row in records(facts):
        if (d := _as_date(row["cohort"])) in at:
            out[at[d]] += int(row["n"])
    return out


def outcomes_per_day(outcomes: pd.DataFrame, days: Sequence[date]) -> dict[str, list[int]]:
    """Hand-offs reaching a final outcome on each day, as "recovered" and "lost" counts."""
    at = _index(days)
    out = {"recovered": [0] * len(days), "lost": [0] * len(days)}
    for row in records(outcomes):
        group = STATE_GROUPS.get(row["state"])
        if group in out and (d := _as_date(row["day"])) in at:
            out[group][at[d]] += int(row["n"])
    return out


def rate_by_age(
    facts: pd.DataFrame, days: Sequence[date], *, ages: Iterable[int] = RATE_AGES
) -> dict[int, list[float | None]]:
    """Per age N: for each submission cohort (day), the share of its accepted hand-offs recovered
    within N days, as recovery.cohort_table counts it; None until the cohort is N days old (as of the
    last day) or when it has no accepted hand-off. `facts` are cohort rollup facts (cohort as ISO text)."""
    table = cohort_table(facts, day=days[-1]) if len(days) else facts
    at = _index(days)
    out: dict[int, list[float | None]] = {}
    for n in ages:
        values: list[float | None] = [None] * len(days)
        if not table.empty:
            for cohort, share in zip(table["cohort"], table[f"share_d{n}"], strict=True):
                d = _as_date(cohort)
                if d in at and share == share:  # NaN: not yet N days old, or nothing accepted
                    values[at[d]] = float(share)
        out[n] = values
    return out


def version_changes(rows: pd.DataFrame, tz: ZoneInfo) -> list[VersionChange]:
    """The schedule changes among recorded versions (profile_id, version, first_seen_at), by local day
    of first sighting: every version of a profile but its first, which is where the history begins."""
    changes: list[VersionChange] = []
    seen: set[str] = set()
    ordered = sorted(records(rows), key=lambda r: (r["profile_id"], r["first_seen_at"], r["version"]))
    for row in ordered:
        if row["profile_id"] in seen:
            first_seen: datetime = row["first_seen_at"]
            changes.append(VersionChange(first_seen.astimezone(tz).date(), row["profile_id"], row["version"]))
        seen.add(row["profile_id"])
    return sorted(changes, key=lambda c: (c.day, c.profile_id))
