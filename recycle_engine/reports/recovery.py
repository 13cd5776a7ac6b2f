"""Pure pandas for the recovery report: state groups, rates, breakdowns, cohorts, pending ages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final

import numpy as np
import pandas as pd

from recycle_engine.money import Money

__all__ = [
    "AGE_BUCKETS",
    "CHECKPOINT_DAYS",
    "STATE_GROUPS",
    "Breakdown",
    "activity_summary",
]
__all__ += [
    "age_bucket",
    "amount_summary",
    "breakdown",
    "breakdowns",
    "checkpoint",
    "cohort_table",
    "count_summary",
]
__all__ += ["median_recovery_days", "pending_by_age", "rate", "reason_key", "recovery_curve"]
__all__ += ["closed_cohorts", "is_closed", "with_periods"]

# domain.md section 10: the unit is the hand-off, and FAILED (never accepted) stays outside every rate.
STATE_GROUPS: Final = {
    "APPROVED": "recovered",
    "DECLINED": "lost",
    "EXPIRED": "lost",
    "CANCELLED": "lost",
    "PENDING": "pending",
    "SUBMITTED": "pending",
    "FAILED": "failed",
}
CHECKPOINT_DAYS: Final = (1, 3, 7, 10, 14, 21)
AGE_BUCKETS: Final = ("0-3", "4-7", "8-14", "15-21", "over 21")
SLOT_ORDER: Final = ("4-6", "7-9", "final", "RERUN", "CASCADE")
REVERSALS: Final = {"REFUNDED": "refunded", "CHARGEBACK": "charged_back"}
NO_REASON: Final = "(no decline on record)"
UNKNOWN_KEY: Final = "(unknown)"


def rate(numerator: float, denominator: float) -> float:
    """numerator ÷ denominator, or NaN when there is nothing to divide by (shown as a dash)."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def _grouped_sum(frame: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in keys} | {v: [] for v in values})
    return frame.groupby(keys, dropna=False, sort=True)[values].sum().reset_index()


def _rates(recovered: Any, denominator: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    # NaN where there is nothing to divide by, as rate() does; numpy, as in _split().
    numerator, divisor = np.asarray(recovered, dtype="float64"), np.asarray(denominator, dtype="float64")
    out = np.full(len(numerator), np.nan)
    np.divide(numerator, divisor, out=out, where=divisor > 0)
    return out


def _split(values: pd.Series[int], by: pd.Series[Any], labels: dict[str, str]) -> dict[str, Any]:
    """`values` spread into one column per label: the value where `by` equals the label's key, else 0.

    numpy arrays: a report builds some twenty of these tables, and pandas' per-call overhead was most
    of their cost."""
    v, keys = values.to_numpy(dtype="int64"), by.to_numpy()
    return {name: np.where(keys == key, v, 0) for key, name in labels.items()}


def _reversals(facts: pd.DataFrame) -> pd.Series[Any]:
    return facts["reversal"] if "reversal" in facts else pd.Series(None, index=facts.index, dtype="object")


def count_summary(facts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of `by`: hand-offs made, each state group and lost state, and both count rates.

    `facts` has columns `*by, state, n` (and optionally `reversal`: REFUNDED or CHARGEBACK on a
    recovered hand-off, counted beside the recoveries, never subtracted). Counts from every currency
    add up: they are hand-offs. One vectorised GROUP BY: a breakdown may have hundreds of keys."""
    states = ["declined", "expired", "cancelled"]
    groups = ["recovered", "lost", "pending", "failed"]
    columns = [*by, "handoffs", *groups, *states, *REVERSALS.values(), "rate_to_date", "rate_settled"]
    if facts.empty:
        return pd.DataFrame({c: [] for c in columns})
    n = facts["n"]
    wide = pd.DataFrame(
        {k: facts[k].to_numpy() for k in by}
        | {"handoffs": n.to_numpy(dtype="int64")}
        | _split(n, facts["state"].map(STATE_GROUPS).fillna("failed"), {g: g for g in groups})
        | _split(n, facts["state"].str.lower(), {s: s for s in states})
        | _split(n, _reversals(facts), REVERSALS)
    )
    out = wide.groupby(by, dropna=False, sort=True)[columns[len(by) : -2]].sum().reset_index()
    recovered, lost, pending = (out[c].to_numpy() for c in ("recovered", "lost", "pending"))
    out["rate_to_date"] = _rates(recovered, recovered + lost + pending)
    out["rate_settled"] = _rates(recovered, recovered + lost)
    return out[columns]


def amount_summary(facts: pd.DataFrame, by: list[str], *, fee_percent: Decimal | None = None) -> pd.DataFrame:
    """Per group of `by` and currency: submitted, recovered, pending and lost minor units, rate by amount.

    Submitted is every attempt amount sent (FAILED ones were never accepted). Currencies never mix.
    With a fee, FlexFactor's share of the recovered amount (half-up) and the net are added."""
    keys = [*by, "currency"]
    amount = facts["amount_minor"]
    groups = {g: f"{g}_minor" for g in ("recovered", "lost", "pending")}
    wide = pd.DataFrame(
        {k: facts[k].to_numpy() for k in keys}
        | _split(amount, facts["state"].map(STATE_GROUPS).fillna("failed"), groups)
        | _split(amount, _reversals(facts), {flag: f"{name}_minor" for flag, name in REVERSALS.items()})
    )
    sums = [c for c in wide.columns if c not in keys]
    out = wide.groupby(keys, sort=True)[sums].sum().reset_index() if not wide.empty else wide
    out.insert(
        len(keys) + 3, "submitted_minor", out["recovered_minor"] + out["lost_minor"] + out["pending_minor"]
    )
    out["rate_by_amount"] = _rates(out["recovered_minor"].to_numpy(), out["submitted_minor"].to_numpy())
    if fee_percent is not None:
        out["fee_minor"] = [
            Money(int(m), str(c)).percent_of(fee_percent)
            for m, c in zip(out["recovered_minor"], out["currency"], strict=True)
        ]
        out["net_minor"] = out["recovered_minor"] - out["fee_minor"]
    return out


def with_periods(facts: pd.DataFrame, *, day: date, month_first: date) -> pd.DataFrame:
    """Cohort facts labelled with the headline periods: "day" (made on `day`) and "month" (to date)."""
    cohort = facts["cohort"].astype(str)
    today = facts[cohort == day.isoformat()].assign(period="day")
    month = facts[(cohort >= month_first.isoformat()) & (cohort <= day.isoformat())].assign(period="month")
    return pd.concat([today, month], ignore_index=True)


def activity_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Outcomes reached on the day per state and currency, with how many were late approvals."""
    f = frame.assign(late_n=frame["n"].where(frame["late"].astype(bool), 0))
    return _grouped_sum(f, ["state", "currency"], ["n", "amount_minor", "late_n"])


# --- breakdowns ----------------------------------------------------------------------------------


def reason_key(text: object) -> str:
    """A decline reason for grouping: whitespace trimmed and case-folded ("Do Not Honor" = "DO NOT HONOR")."""
    if not isinstance(text, str) or not text.strip():
        return NO_REASON
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class Breakdown:
    """One breakdown table: count rows per key (top `limit`), the amounts of those keys, and how many
    keys are hidden."""

    name: str
    counts: pd.DataFrame
    amounts: pd.DataFrame
    hidden: int


def _text(value: object, missing: str) -> str:
    """A key as text, `missing` when there is none (as fillna(missing).astype(str) makes it)."""
    if isinstance(value, str):
        return value
    absent = (
        value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)
    )
    return missing if absent else str(value)


def breakdowns(frame: pd.DataFrame, names: Sequence[str], *, limit: int = 20) -> dict[str, Breakdown]:
    """Counts and amounts per key of each breakdown in `names`, from rows `breakdown, key, code, state,
    currency, n, amount_minor`; slots in ladder order, the rest by hand-offs. Reasons are keyed by
    reason_key() and their response code, other keys as text ("(unknown)" when missing).

    One count per key for every breakdown at once (their count_summary() calls cost more than their
    rows), and amounts only for the keys listed."""
    rows = frame[frame["breakdown"].isin(list(names))]
    is_reason = (rows["breakdown"] == "reason").to_numpy()
    keys, codes = rows["key"].tolist(), rows["code"].tolist()
    f = rows.assign(
        key=[
            reason_key(k) if reason else _text(k, UNKNOWN_KEY)
            for k, reason in zip(keys, is_reason, strict=True)
        ],
        code=[_text(c, "") if reason else "" for c, reason in zip(codes, is_reason, strict=True)],
    )
    by = ["breakdown", "key", "code"]
    every_count = count_summary(f, by)
    listed: dict[str, pd.DataFrame] = {}
    hidden: dict[str, int] = {}
    for name, counts in every_count.groupby("breakdown", sort=False):
        counts = counts.drop(columns="breakdown")
        if name == "slot":
            order = {s: i for i, s in enumerate(SLOT_ORDER)}
            counts = counts.assign(_o=counts["key"].map(order).fillna(len(order)))
            counts = counts.sort_values(["_o", "key"]).drop(columns="_o")
        else:
            counts = counts.sort_values(["handoffs", "key", "code"], ascending=[False, True, True])
        hidden[str(name)] = max(0, len(counts) - limit)
        listed[str(name)] = counts.head(limit).reset_index(drop=True)
    if listed:
        shown = [c[["key", "code"]].assign(breakdown=n) for n, c in listed.items()]
        f = f.merge(pd.concat(shown, ignore_index=True), on=by)
    every_amount = amount_summary(f, by)
    amounts = dict(iter(every_amount.groupby("breakdown", sort=False)))
    out = {}
    for name in names:
        if name not in listed:  # no hand-off this month: the empty tables, with their columns
            empty = f.iloc[:0]
            out[name] = Breakdown(
                name, count_summary(empty, ["key", "code"]), amount_summary(empty, ["key", "code"]), 0
            )
            continue
        part = amounts[name].drop(columns="breakdown").reset_index(drop=True)
        out[name] = Breakdown(name, listed[name], part, hidden[name])
    return out


def breakdown(frame: pd.DataFrame, name: str, *, limit: int = 20) -> Breakdown:
    """Counts and amounts per key of one breakdown, from rows `key, code, state, currency, n,
    amount_minor` (see breakdowns())."""
    return breakdowns(frame.assign(breakdown=name), [name], limit=limit)[name]


# --- cohorts -------------------------------------------------------------------------------------


def _age(cohort: str, day: date) -> int:
    return (day - date.fromisoformat(cohort)).days


def _ages(facts: pd.DataFrame, day: date) -> np.ndarray[Any, np.dtype[np.int64]]:
    ages = {c: _age(c, day) for c in set(facts["cohort"].astype(str))}
    return np.array([ages[str(c)] for c in facts["cohort"]], dtype="int64")


def _recovered_on(facts: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Per row: the day of the window its hand-offs were approved on (0 when before it opened), or
    infinity when they were not; a row is recovered by day N when this is at most N."""
    window_day = facts["recovery_day"].fillna(10**6).clip(lower=0).to_numpy(dtype="float64")
    return np.where((facts["state"] == "APPROVED").to_numpy(), window_day, np.inf)


def cohort_table(facts: pd.DataFrame, *, day: date, window_days: int = 21) -> pd.DataFrame:
    """Per submission cohort: counts, both rates, share recovered by day N, its status and its final
    rate.

    A share by day N is shown once the cohort is N days old (NaN before). A cohort is "final" when
    none of its hand-offs is pending, "in progress" while its window runs, and "window closed" when
    the window has ended with hand-offs still pending (they are reconciliation exceptions). The final
    rate (`rate_final`, recovered ÷ every hand-off accepted) is quoted only once the window is over
    (is_closed()): before, losses have yet to come and any rate is one in progress."""
    table = count_summary(facts, ["cohort"])
    if table.empty:
        shares: dict[str, list[float]] = {f"share_d{n}": [] for n in CHECKPOINT_DAYS}
        return table.assign(age_days=[], status=[], rate_final=[], **shares)
    table["age_days"] = [_age(c, day) for c in table["cohort"]]
    row_of = {c: i for i, c in enumerate(table["cohort"])}
    rows = np.array([row_of[c] for c in facts["cohort"]], dtype="int64")
    n, recovered_on = facts["n"].to_numpy(dtype="int64"), _recovered_on(facts)
    denominators = table[["recovered", "lost", "pending"]].to_numpy().sum(axis=1)
    ages = table["age_days"].to_numpy()
    for day_n in CHECKPOINT_DAYS:
        hits = np.bincount(rows, weights=np.where(recovered_on <= day_n, n, 0), minlength=len(table))
        table[f"share_d{day_n}"] = [
            rate(int(h), int(d)) if age >= day_n else float("nan")
            for h, d, age in zip(hits, denominators, ages, strict=True)
        ]
    table["status"] = [
        "final" if pending == 0 else ("in progress" if age <= window_days else "window closed")
        for pending, age in zip(table["pending"], table["age_days"], strict=True)
    ]
    closed = np.array([is_closed(int(age), window_days) for age in ages], dtype=bool)
    table["rate_final"] = np.where(closed, table["rate_to_date"].to_numpy(dtype="float64"), np.nan)
    return table.sort_values("cohort", ascending=False).reset_index(drop=True)


def is_closed(age_days: int, window_days: int) -> bool:
    """Whether every window of a submission cohort `age_days` old has closed and been settled: a window
    opened on day C closes on day C + window, and the night after settles it (as the cohort status)."""
    return age_days > window_days


def closed_cohorts(facts: pd.DataFrame, *, day: date, window_days: int) -> pd.DataFrame:
    """The rows of `facts` (with `cohort`) whose cohort's windows have all closed by the end of `day`."""
    if facts.empty:
        return facts
    return facts[_ages(facts, day) > window_days]


def checkpoint(facts: pd.DataFrame, *, day: date, n_days: int = 10) -> pd.DataFrame:
    """The day-N checkpoint per cohort (at least N days old) and currency: share recovered within N days."""
    f = facts[facts["state"].map(STATE_GROUPS) != "failed"]
    f = f[_ages(f, day) >= n_days]
    hit = _recovered_on(f) <= n_days
    f = f.assign(hit_n=f["n"].where(hit, 0), hit_minor=f["amount_minor"].where(hit, 0))
    out = _grouped_sum(f, ["cohort", "currency"], ["n", "amount_minor", "hit_n", "hit_minor"])
    out["share_count"] = [rate(h, n) for h, n in zip(out["hit_n"], out["n"], strict=True)]
    out["share_amount"] = [rate(h, a) for h, a in zip(out["hit_minor"], out["amount_minor"], strict=True)]
    return out.sort_values(["cohort", "currency"], ascending=[False, True]).reset_index(drop=True)


def recovery_curve(facts: pd.DataFrame, *, day: date, window_days: int = 21) -> list[tuple[int, float]]:
    """Pooled share recovered by day N of the window, N = 0..window, over cohorts at least N days old."""
    f = facts[facts["state"].map(STATE_GROUPS) != "failed"]
    n, ages, recovered_on = f["n"].to_numpy(dtype="int64"), _ages(f, day), _recovered_on(f)
    points: list[tuple[int, float]] = []
    for day_n in range(window_days + 1):
        eligible = ages >= day_n
        total = int(n[eligible].sum())
        if total:
            points.append((day_n, rate(int(n[eligible & (recovered_on <= day_n)].sum()), total)))
    return points


def median_recovery_days(facts: pd.DataFrame) -> float | None:
    """Median day of the window on which recovered hand-offs were approved (weighted by count)."""
    f = facts[(facts["state"] == "APPROVED") & facts["recovery_day"].notna()]
    if f.empty or int(f["n"].sum()) == 0:
        return None
    hist = f.assign(day=f["recovery_day"].clip(lower=0)).groupby("day")["n"].sum().sort_index()
    total = int(hist.sum())
    cumulative = hist.cumsum()
    lower = float(cumulative[cumulative >= (total + 1) // 2].index[0])
    upper = float(cumulative[cumulative >= total // 2 + 1].index[0])
    return (lower + upper) / 2


# --- pending -------------------------------------------------------------------------------------


def age_bucket(age_days: int) -> str:
    """The pending-age bucket of a hand-off `age_days` whole days after submission."""
    for label, top in zip(AGE_BUCKETS, (3, 7, 14, 21), strict=False):
        if age_days <= top:
            return label
    return AGE_BUCKETS[-1]


def pending_by_age(frame: pd.DataFrame) -> pd.DataFrame:
    """Open hand-offs per age bucket (every bucket listed, in order) and currency; "over 21" is overdue."""
    f = frame.assign(bucket=[age_bucket(max(0, int(a))) for a in frame["age_days"]])
    out = _grouped_sum(f, ["bucket", "currency"], ["n", "amount_minor"])
    present = set(out["bucket"])
    missing = pd.DataFrame({"bucket": [b for b in AGE_BUCKETS if b not in present]})
    out = pd.concat([out, missing.assign(currency="", n=0, amount_minor=0)], ignore_index=True)
    out["order"] = out["bucket"].map({b: i for i, b in enumerate(AGE_BUCKETS)})
    out["overdue"] = out["bucket"] == AGE_BUCKETS[-1]
    return out.sort_values(["order", "currency"]).drop(columns="order").reset_index(drop=True)
