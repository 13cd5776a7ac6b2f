"""Pure pandas: the ten-second summary (money recovered, compared; value at stake; exceptions) and the
whole ladder (recoveries by method and attempt), from the rows of ladder_queries.recoveries_stmt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import pandas as pd

from recycle_engine.domain.profiles import attempt_label
from recycle_engine.reports.ladder_queries import METHODS, previous_month_first
from recycle_engine.reports.render import fmt_count, fmt_money

__all__ = [
    "PERIODS",
    "method_rows",
    "Period",
    "RecoverySummary",
    "ladder_rows",
    "periods_for",
    "recovery_summary",
    "summary_headline",
    "summary_text",
]


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    first: date
    last: date  # inclusive


# The summary's columns: the day, what it is compared with, the month to date and the same days last month.
PERIODS: Final = ("day", "prev_day", "week_ago", "month", "prev_month")


def periods_for(day: date) -> dict[str, Period]:
    """The summary's periods for report day `day` (local dates, inclusive)."""
    month_first = day.replace(day=1)
    prev_first = previous_month_first(day)
    # The same days of the previous month, cut at its end (31 May compares with 1-30 April).
    prev_last = min(prev_first + timedelta(days=day.day - 1), month_first - timedelta(days=1))
    prev_day, week_ago = day - timedelta(days=1), day - timedelta(days=7)
    return {
        "day": Period("day", day.isoformat(), day, day),
        "prev_day": Period("prev_day", f"previous day ({prev_day.isoformat()})", prev_day, prev_day),
        "week_ago": Period("week_ago", f"a week before ({week_ago.isoformat()})", week_ago, week_ago),
        "month": Period("month", f"month to date (since {month_first.isoformat()})", month_first, day),
        "prev_month": Period(
            "prev_month",
            f"same days last month ({prev_first.isoformat()} to {prev_last.isoformat()})",
            prev_first,
            prev_last,
        ),
    }


@dataclass(frozen=True)
class RecoverySummary:
    """What the billing team reads first. Amounts are minor units per currency, never added across them."""

    day: date
    periods: dict[str, Period]
    recovered: list[dict[str, Any]]  # per currency: {currency, <period>: minor, <period>_n: count}
    recovered_n: dict[str, int]  # recoveries per period, all currencies
    at_stake: list[dict[str, Any]]  # per currency: {currency, n, amount_minor} of open hand-offs
    at_stake_n: int
    exceptions: int  # reconciliation exceptions that need someone today


def _local_days(frame: pd.DataFrame) -> pd.Series[Any]:
    # SQLite answers text, PostgreSQL dates: compare as ISO text.
    return frame["day"].astype(str).str.slice(0, 10)


def recovery_summary(
    recoveries: pd.DataFrame, open_handoffs: pd.DataFrame, *, day: date, exceptions: int
) -> RecoverySummary:
    """The summary for `day` from the recoveries (day, method, attempt, currency, n, amount_minor) and
    the open hand-offs (currency, n, amount_minor, any other columns)."""
    periods = periods_for(day)
    days = _local_days(recoveries)
    by_currency: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for key, p in periods.items():
        part = recoveries[(days >= p.first.isoformat()) & (days <= p.last.isoformat())]
        counts[key] = int(part["n"].sum())
        for currency, group in part.groupby("currency", sort=True):
            row = by_currency.setdefault(str(currency), {"currency": str(currency)})
            row[key] = int(group["amount_minor"].sum())
            row[f"{key}_n"] = int(group["n"].sum())
    recovered = []
    for currency in sorted(by_currency):
        row = by_currency[currency]
        recovered.append(
            {"currency": currency}
            | {k: row.get(k, 0) for k in PERIODS}
            | {f"{k}_n": row.get(f"{k}_n", 0) for k in PERIODS}
        )
    stake = (
        open_handoffs[open_handoffs["currency"].astype(str) != ""]
        .groupby("currency", sort=True)[["n", "amount_minor"]]
        .sum()
        .reset_index()
    )
    at_stake = [
        {"currency": str(c), "n": int(n), "amount_minor": int(a)}
        for c, n, a in zip(stake["currency"], stake["n"], stake["amount_minor"], strict=True)
    ]
    open_n = int(stake["n"].sum())
    return RecoverySummary(day, periods, recovered, counts, at_stake, open_n, exceptions)


def summary_headline(summary: RecoverySummary) -> str:
    """One line for an e-mail's subject: the day, what it recovered, and the exceptions waiting."""
    got = ", ".join(fmt_money(r["day"], r["currency"]) for r in summary.recovered if r["day_n"]) or "nothing"
    waiting = f"; {_plural(summary.exceptions, 'exception')} to act on" if summary.exceptions else ""
    return f"Recovery report {summary.day.isoformat()}: recovered {got}{waiting}"


def _plural(n: int, noun: str) -> str:
    return f"{fmt_count(n)} {noun}{'' if n == 1 else 's'}"


def summary_text(summary: RecoverySummary) -> str:
    """The summary as plain text lines: the body of the report's e-mail."""
    p = summary.periods

    def money(row: dict[str, Any], key: str) -> str:
        return fmt_money(row[key], row["currency"])

    lines = [f"Recovery report for {summary.day.isoformat()}", ""]
    if not summary.recovered:
        lines.append(f"Recovered on {p['day'].label}: nothing, and nothing in the month to date.")
    for row in summary.recovered:
        lines.append(
            f"Recovered on {p['day'].label}: {money(row, 'day')} ({_payments(row['day_n'])}); "
            f"{p['prev_day'].label}: {money(row, 'prev_day')}; {p['week_ago'].label}: {money(row, 'week_ago')}"
        )
        lines.append(
            f"  {p['month'].label}: {money(row, 'month')} ({_payments(row['month_n'])}); "
            f"{p['prev_month'].label}: {money(row, 'prev_month')}"
        )
    stake = "; ".join(fmt_money(r["amount_minor"], r["currency"]) for r in summary.at_stake) or "nothing"
    lines.append(f"Still at stake: {stake} in {fmt_count(summary.at_stake_n)} open hand-offs.")
    if summary.exceptions:
        lines.append(
            f"Exceptions needing someone today: {fmt_count(summary.exceptions)} (see the attached report)."
        )
    else:
        lines.append("No exception needs anyone today.")
    lines += [
        "",
        "Recoveries count every rung of the ladder: ordinary retries, FlexFactor, reruns and cascades.",
    ]
    return "\n".join(lines) + "\n"


def _payments(n: int) -> str:
    return _plural(n, "payment")


def ladder_rows(recoveries: pd.DataFrame, *, day: date) -> list[dict[str, Any]]:
    """One row per method and attempt that recovered anything this month, in ladder order:
    {method, label, attempt, day_n, month_n, share, day_amounts, month_amounts}; `share` is the row's
    part of the month's recoveries by count (amounts of several currencies do not add)."""
    days = _local_days(recoveries)
    month = recoveries[(days >= day.replace(day=1).isoformat()) & (days <= day.isoformat())].copy()
    month["rung"] = month["attempt"].fillna(_NO_ATTEMPT).astype(int)
    month["today"] = _local_days(month) == day.isoformat()
    total = int(month["n"].sum())
    order = {m: i for i, m in enumerate(METHODS)}
    groups = sorted(month.groupby(["method", "rung"]), key=lambda g: (order.get(str(g[0][0]), 99), g[0][1]))
    rows = []
    for (method, rung_key), part in groups:
        rung = int(str(rung_key))
        today = part[part["today"]]
        month_n = int(part["n"].sum())
        rows.append(
            {
                "method": str(method),
                "label": METHODS.get(str(method), str(method)),
                "attempt": "—" if rung == _NO_ATTEMPT else attempt_label(rung),
                "day_n": int(today["n"].sum()),
                "month_n": month_n,
                "share": month_n / total if total else float("nan"),
                "day_amounts": _amounts(today),
                "month_amounts": _amounts(part),
            }
        )
    return rows


def method_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ladder's rows added up per method (in ladder order), with the same keys but `attempt`."""
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault(
            r["method"],
            {"method": r["method"], "label": r["label"], "day_n": 0, "month_n": 0, "share": 0.0, "by": {}},
        )
        t["day_n"] += r["day_n"]
        t["month_n"] += r["month_n"]
        t["share"] += r["share"]
        for key in ("day_amounts", "month_amounts"):
            for a in r[key]:
                sums = t["by"].setdefault(key, {})
                sums[a["currency"]] = sums.get(a["currency"], 0) + a["amount_minor"]
    out = []
    for t in totals.values():
        by = t.pop("by")
        for key in ("day_amounts", "month_amounts"):
            t[key] = [{"currency": c, "amount_minor": v} for c, v in sorted(by.get(key, {}).items())]
        out.append(t)
    return out


_NO_ATTEMPT: Final = -1  # reruns and cascades are not a rung of a recycle ladder


def _amounts(frame: pd.DataFrame) -> list[dict[str, Any]]:
    sums = frame.groupby("currency", sort=True)["amount_minor"].sum()
    return [{"currency": str(c), "amount_minor": int(v)} for c, v in sums.items()]
