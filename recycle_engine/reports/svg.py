"""Inline SVG charts for the report: no script, no external references, readable on a phone and in print.

A chart is as wide as its column and never scaled: it has no viewBox, horizontal positions are
percentages of its width and vertical ones CSS pixels, so its text keeps FONT_PX whatever the screen.
Only the data lines sit in an inner, stretched SVG (their strokes do not scale)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["FONT_PX", "Marker", "Series", "bar_chart", "line_chart", "nice_ticks", "xy_chart"]

FONT_PX = 12  # every label of every chart, in CSS px
COLOURS = ("#1f5fa8", "#c4661f", "#2e7d32", "#7b1fa2")  # series 0..3; the page's legend uses the same
_FONT = f'font-size="{FONT_PX}"'
# Horizontal margins in % of the chart's width (it is at least 300 px wide: 12 % leaves 36 px for
# "100 %" or "2.5k"); vertical ones in px: a title row and a marker row above, ticks and a title below.
_LEFT, _RIGHT = 12.0, 3.0
_TOP, _BOTTOM = 44, 44


@dataclass(frozen=True)
class Series:
    """One line: a value per x position (None where there is none: the line breaks there)."""

    name: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Marker:
    """A vertical rule at x position `at` (an index into the x labels), labelled."""

    at: int
    label: str


def _x(frac: float) -> str:
    """An x position, 0..1 of the plot, as a percentage of the chart's width."""
    return f"{_LEFT + (100 - _LEFT - _RIGHT) * frac:.2f}%"


def _frame(height: int, title: str, body: list[str]) -> Markup:
    # No xmlns: inline SVG in HTML needs none, and the page must carry no URL at all.
    label = escape(title)
    head = (
        f'<svg role="img" aria-label="{label}" width="100%" height="{height}" class="chart">'
        f"<title>{label}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def nice_ticks(peak: float, *, whole: bool = False) -> list[float]:
    """Evenly spaced ticks from 0 to the lowest round top (3 to 5 steps of 1, 2, 2.5 or 5 x 10^k) at
    least `peak`; `whole` keeps steps whole numbers (counts)."""
    if peak <= 0 or not math.isfinite(peak):
        return [0.0, 1.0, 2.0, 3.0, 4.0]
    best: tuple[float, float, int] | None = None
    for count in (3, 4, 5):
        raw = peak / count
        scale = 10 ** math.floor(math.log10(raw))
        factors = (1, 2, 5, 10) if whole and scale < 10 else (1, 2, 2.5, 5, 10)
        step = next(m * scale for m in factors if m * scale >= raw)
        if whole:
            step = max(step, 1.0)
        if best is None or step * count < best[0]:
            best = (step * count, step, count)
    _, step, count = best  # type: ignore[misc]
    return [step * i for i in range(count + 1)]


def xy_chart(
    *,
    title: str,
    x_title: str,
    y_title: str,
    x_ticks: Sequence[tuple[float, str]],
    series: Sequence[tuple[Sequence[float], Series]],
    y_ticks: Sequence[float],
    y_label: Callable[[float], str],
    markers: Sequence[tuple[float, str]] = (),
    height: int = 260,
) -> Markup:
    """Lines over a plot: each series with its x positions (0..1), y from 0 to the last of `y_ticks`,
    tick labels and both axis titles in FONT_PX; `markers` (x 0..1, label) drawn as labelled rules."""
    plot_h = height - _TOP - _BOTTOM
    y_top = y_ticks[-1] if y_ticks and y_ticks[-1] > 0 else 1.0

    def sy(value: float) -> float:
        return _TOP + plot_h * (1 - min(max(value / y_top, 0.0), 1.0))

    body = [f'<text x="0" y="14" {_FONT} font-weight="600" class="axis-title">{escape(y_title)}</text>']
    for tick in y_ticks:
        y = sy(tick)
        body.append(f'<line x1="{_x(0)}" y1="{y:.1f}" x2="{_x(1)}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(
            f'<text x="{_x(0)}" dx="-4" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{escape(y_label(tick))}</text>'
        )
    for frac, label in x_ticks:
        # A label at the right edge ends there: centred, it would run past the chart's narrow right
        # margin. The left margin (the y labels') has room for half a label.
        anchor = "end" if frac >= 0.95 else "middle"
        x = _x(frac)
        body.append(f'<line x1="{x}" y1="{_TOP + plot_h}" x2="{x}" y2="{_TOP + plot_h + 4}" stroke="#999"/>')
        body.append(
            f'<text x="{x}" y="{_TOP + plot_h + 17}" text-anchor="{anchor}" {_FONT}>{escape(label)}</text>'
        )
    body.append(
        f'<text x="{_x(0.5)}" y="{height - 6}" text-anchor="middle" {_FONT} font-weight="600" '
        f'class="axis-title">{escape(x_title)}</text>'
    )
    body.append(
        f'<rect x="{_x(0)}" y="{_TOP}" width="{100 - _LEFT - _RIGHT:.2f}%" height="{plot_h}" '
        'fill="none" stroke="#999"/>'
    )
    for i, (frac, label) in enumerate(markers):
        x = _x(frac)
        body.append(
            f'<line class="marker" x1="{x}" y1="{_TOP - 6 - 14 * (i % 2)}" x2="{x}" y2="{_TOP + plot_h}" '
            'stroke="#6a1b9a" stroke-dasharray="4 3"/>'
        )
        anchor, dx = ("end", -3) if frac > 0.5 else ("start", 3)
        body.append(
            f'<text class="marker-label" x="{x}" dx="{dx}" y="{_TOP - 8 - 14 * (i % 2)}" text-anchor="{anchor}" '
            f'{_FONT} fill="#6a1b9a">{escape(label)}</text>'
        )
    # The lines, in a plot 1000 units wide stretched to the plot's width; strokes keep their width.
    lines = []
    drawn = False
    for i, (xs, line) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        for run in _runs(xs, line.values):
            drawn = True
            points = " ".join(f"{1000 * x:.1f},{sy(v) - _TOP:.1f}" for x, v in run)
            lines.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
                'stroke-linejoin="round" stroke-linecap="round" vector-effect="non-scaling-stroke"/>'
            )
            if len(run) == 1:  # a lone point: a dot (a round cap on a zero-length line)
                dot = f"{1000 * run[0][0]:.1f},{sy(run[0][1]) - _TOP:.1f}"
                lines.append(
                    f'<polyline points="{dot} {dot}" '
                    f'stroke="{colour}" stroke-width="6" stroke-linecap="round" vector-effect="non-scaling-stroke"/>'
                )
    body.append(
        f'<svg x="{_x(0)}" y="{_TOP}" width="{100 - _LEFT - _RIGHT:.2f}%" height="{plot_h}" '
        f'viewBox="0 0 1000 {plot_h}" preserveAspectRatio="none" aria-hidden="true">{"".join(lines)}</svg>'
    )
    if not drawn:
        body.append(
            f'<text x="{_x(0.5)}" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" {_FONT}>no data yet</text>'
        )
    return _frame(height, title, body)


def _runs(xs: Sequence[float], values: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series: a missing (None or NaN) value breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, v in zip(xs, values, strict=True):
        if v is None or math.isnan(v):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, float(v)))
    return [r for r in runs if r]


def line_chart(
    points: Sequence[tuple[int, float]], *, title: str, x_max: int, x_ticks: Sequence[int] = ()
) -> Markup:
    """A line of (day, share 0..1) points with a 0-100 % axis; x from day 0 to `x_max`."""
    span = max(x_max, 1)
    xs = [x / span for x, _ in points]
    return xy_chart(
        title=title,
        x_title="Days since submission",
        y_title="Share recovered (%)",
        x_ticks=[(x / span, str(x)) for x in x_ticks],  # "1" "3" "7": days 1 and 3 stand close on a phone
        series=[(xs, Series("share recovered", [s for _, s in points]))],
        y_ticks=[0.0, 0.25, 0.5, 0.75, 1.0],
        y_label=lambda v: f"{v * 100:.0f} %",
    )


def bar_chart(
    bars: Sequence[tuple[str, int]],
    *,
    title: str,
    x_title: str = "Days since submission",
    y_title: str = "Hand-offs (count)",
    height: int = 200,
    highlight_last: bool = False,
) -> Markup:
    """Vertical bars of counts with their labels; the last bar in red when `highlight_last` (overdue)."""
    plot_h = height - _TOP - _BOTTOM
    peak = max((v for _, v in bars), default=0) or 1
    slot = (100 - _LEFT - _RIGHT) / max(len(bars), 1)
    body = [f'<text x="0" y="14" {_FONT} font-weight="600" class="axis-title">{escape(y_title)}</text>']
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / peak
        left = _LEFT + i * slot
        colour = "#b3261e" if highlight_last and i == len(bars) - 1 else COLOURS[0]
        body.append(
            f'<rect x="{left + slot * 0.15:.2f}%" y="{_TOP + plot_h - h:.1f}" width="{slot * 0.7:.2f}%" '
            f'height="{h:.1f}" fill="{colour}"/>'
        )
        cx = f"{left + slot / 2:.2f}%"
        body.append(
            f'<text x="{cx}" y="{_TOP + plot_h - h - 3:.1f}" text-anchor="middle" {_FONT}>{value}</text>'
        )
        body.append(
            f'<text x="{cx}" y="{_TOP + plot_h + 17}" text-anchor="middle" {_FONT}>{escape(label)}</text>'
        )
    body.append(
        f'<line x1="{_LEFT}%" y1="{_TOP + plot_h}" x2="{100 - _RIGHT}%" y2="{_TOP + plot_h}" stroke="#999"/>'
    )
    body.append(
        f'<text x="{_x(0.5)}" y="{height - 6}" text-anchor="middle" {_FONT} font-weight="600" '
        f'class="axis-title">{escape(x_title)}</text>'
    )
    return _frame(height, title, body)
