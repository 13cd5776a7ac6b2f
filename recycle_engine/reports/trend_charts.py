"""The dashboard's three trend charts from the trend series: inline SVG, a legend and a data table each."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup

from recycle_engine.money import currency_exponent
from recycle_engine.reports import svg
from recycle_engine.reports.render import fmt_count, fmt_money, fmt_pct, month_abbr
from recycle_engine.reports.trends import VersionChange

__all__ = ["TrendChart", "activity_chart", "amount_chart", "compact", "day_ticks", "markers", "rate_chart"]

MAX_TICKS = 6  # day labels per axis: "15 Jun" six times fits a 300 px plot


@dataclass(frozen=True)
class TrendChart:
    """A chart as the page shows it: the SVG, its legend (name, colour) and its data, row per day."""

    title: str
    svg: Markup
    legend: list[tuple[str, str]]
    columns: list[str]
    rows: list[list[str]]


def day_label(day: date) -> str:
    return f"{day.day} {month_abbr(day.month)}"


def _frac(i: int, n: int) -> float:
    return i / (n - 1) if n > 1 else 0.5


def day_ticks(days: Sequence[date]) -> list[tuple[float, str]]:
    """At most MAX_TICKS evenly spaced day labels, the last day always among them."""
    n = len(days)
    step = max(1, math.ceil((n - 1) / (MAX_TICKS - 1)))
    return [(_frac(i, n), day_label(d)) for i, d in enumerate(days) if (n - 1 - i) % step == 0]


def markers(changes: Sequence[VersionChange], days: Sequence[date]) -> list[tuple[float, str]]:
    """A rule per day with a schedule change inside the axis, labelled with the versions it brought."""
    at = {d: i for i, d in enumerate(days)}
    by_day: dict[date, list[str]] = {}
    for change in changes:
        if change.day in at:
            by_day.setdefault(change.day, []).append(change.label)
    return [(_frac(at[d], len(days)), ", ".join(labels)) for d, labels in sorted(by_day.items())]


def compact(value: float) -> str:
    """A tick value short enough for a phone: 950, 1.5k, 2.25M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _series_x(days: Sequence[date]) -> list[float]:
    return [_frac(i, len(days)) for i in range(len(days))]


def _legend(names: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, svg.COLOURS[i % len(svg.COLOURS)]) for i, name in enumerate(names)]


def _lines(
    days: Sequence[date], lines: Mapping[str, Sequence[float | None]]
) -> list[tuple[Sequence[float], svg.Series]]:
    """A line per name, a value per day."""
    return [(_series_x(days), svg.Series(name, values)) for name, values in lines.items()]


def _day_rows(
    days: Sequence[date], columns: Iterable[Sequence[object]], cell: Callable[[object], str]
) -> list[list[str]]:
    """The chart's data table: a row per day, its date and then each column's value that day.

    Every column has a value per day; a short or long one is an error, not a silent cut.
    """
    return [[d.isoformat(), *map(cell, values)] for d, *values in zip(days, *columns, strict=True)]


def amount_chart(
    currency: str, minor: Sequence[int], days: Sequence[date], changes: Sequence[VersionChange]
) -> TrendChart:
    """Recovered amount per day of approval in one currency (currencies are never added together)."""
    scale = 10 ** currency_exponent(currency)
    major = [m / scale for m in minor]
    title = f"Recovered per day, {currency}"
    chart = svg.xy_chart(
        title=f"{title}, {day_label(days[0])} to {day_label(days[-1])}",
        x_title="Day of approval",
        y_title=f"Recovered ({currency})",
        x_ticks=day_ticks(days),
        series=_lines(days, {"recovered": major}),
        y_ticks=svg.nice_ticks(max(major, default=0.0)),
        y_label=compact,
        markers=markers(changes, days),
    )
    rows = _day_rows(days, [minor], lambda m: fmt_money(m, currency))
    return TrendChart(title, chart, _legend(["recovered"]), ["Day", f"Recovered ({currency})"], rows)


def rate_chart(
    rates: Mapping[int, Sequence[float | None]], days: Sequence[date], changes: Sequence[VersionChange]
) -> TrendChart:
    """Recovery rate by cohort age: per submission day, the share recovered within N days."""
    lines = {f"within {n} days": values for n, values in rates.items()}
    title = "Recovery rate by cohort age"
    chart = svg.xy_chart(
        title=f"{title}: share of each day's hand-offs recovered within 7, 14 and 21 days",
        x_title="Day of submission (cohort)",
        y_title="Recovered (% of accepted hand-offs)",
        x_ticks=day_ticks(days),
        series=_lines(days, lines),
        y_ticks=[0.0, 0.25, 0.5, 0.75, 1.0],
        y_label=lambda v: f"{v * 100:.0f} %",
        markers=markers(changes, days),
    )
    rows = _day_rows(days, lines.values(), fmt_pct)
    return TrendChart(title, chart, _legend(list(lines)), ["Submitted on", *lines], rows)


def activity_chart(
    submitted: Sequence[int],
    outcomes: Mapping[str, Sequence[int]],
    days: Sequence[date],
    changes: Sequence[VersionChange],
) -> TrendChart:
    """Hand-offs sent per night beside the outcomes (recovered, lost) reached that day."""
    lines = {"handed off": submitted, **outcomes}
    title = "Hand-offs and outcomes per night"
    peak = max((v for values in lines.values() for v in values), default=0)
    chart = svg.xy_chart(
        title=f"{title}: hand-offs sent, recovered and lost per local day",
        x_title="Local day",
        y_title="Hand-offs (count)",
        x_ticks=day_ticks(days),
        series=_lines(days, {name: [float(v) for v in values] for name, values in lines.items()}),
        y_ticks=svg.nice_ticks(float(peak), whole=True),
        y_label=compact,
        markers=markers(changes, days),
    )
    rows = _day_rows(days, lines.values(), fmt_count)
    return TrendChart(title, chart, _legend(list(lines)), ["Day", *lines], rows)
