"""Tiny inline SVG charts for the report: no script, no external references, readable in print."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bar_chart", "line_chart"]

_FONT = 'font-family="inherit" font-size="11"'


def _frame(width: int, height: int, title: str, body: list[str]) -> Markup:
    # No xmlns: inline SVG in HTML needs none, and the page must carry no URL at all.
    label = escape(title)
    head = (
        f'<svg role="img" aria-label="{label}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" class="chart"><title>{label}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def line_chart(
    points: Sequence[tuple[int, float]],
    *,
    title: str,
    x_max: int,
    x_ticks: Sequence[int] = (),
    width: int = 560,
    height: int = 220,
) -> Markup:
    """A polyline of (x, share 0..1) points with a 0-100 % axis; x from 0 to `x_max` (days)."""
    left, right, top, bottom = 44, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + plot_w * x / max(x_max, 1)

    def sy(share: float) -> float:
        return top + plot_h * (1 - min(max(share, 0.0), 1.0))

    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for pct in (0, 25, 50, 75, 100):
        y = sy(pct / 100)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{pct} %</text>')
    for x in x_ticks:
        # A tick on the right edge ends there: centred, "day 21" would run past the chart and be clipped.
        anchor = "end" if x >= x_max else "middle"
        body.append(f'<text x="{sx(x):.1f}" y="{height - 10}" text-anchor="{anchor}" {_FONT}>day {x}</text>')
    if points:
        path = " ".join(f"{sx(x):.1f},{sy(s):.1f}" for x, s in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
        for x, s in points:
            body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(s):.1f}" r="2.5" fill="#1f5fa8"/>')
    else:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {_FONT}>no data yet</text>')
    return _frame(width, height, title, body)


def bar_chart(
    bars: Sequence[tuple[str, int]],
    *,
    title: str,
    width: int = 560,
    height: int = 160,
    highlight_last: bool = False,
) -> Markup:
    """Vertical bars of counts with their labels; the last bar in red when `highlight_last` (overdue)."""
    left, bottom, top = 12, 32, 16
    plot_h = height - top - bottom
    peak = max((v for _, v in bars), default=0) or 1
    slot = (width - 2 * left) / max(len(bars), 1)
    body: list[str] = []
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / peak
        x = left + i * slot + slot * 0.15
        colour = "#b3261e" if highlight_last and i == len(bars) - 1 else "#1f5fa8"
        body.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{colour}"/>'
        )
        cx = x + slot * 0.35
        body.append(
            f'<text x="{cx:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" {_FONT}>{value}</text>'
        )
        body.append(
            f'<text x="{cx:.1f}" y="{height - 12}" text-anchor="middle" {_FONT}>{escape(label)}</text>'
        )
    return _frame(width, height, title, body)
