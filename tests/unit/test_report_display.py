"""The report's small display promises: file modes, chart labels inside the chart, money as the report writes it."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from recycle_engine.demo.run import DemoResult, format_summary
from recycle_engine.reports import render, svg

GLYPH_WIDTH = 11 * 0.62  # a generous average advance of an 11 px sans-serif digit or letter


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.usefixtures("umask")
def test_given_a_umask_when_report_files_are_written_then_their_mode_follows_it(
    tmp_path: Path, mask: int, mode: int
) -> None:
    # given
    os.umask(mask)
    # when
    html = render.write_text(tmp_path / "recovery-2026-06-30.html", "<p>report</p>")
    table = tmp_path / "recovery-2026-06-30.csv"
    render.write_csv(table, [["1"]], ["n"])
    # then: as any other file the user's process creates
    for path in (html, table):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name


@pytest.mark.parametrize("chart_px", [300, 1200])
@pytest.mark.parametrize("x_max", [10, 21])
def test_given_a_line_chart_then_every_tick_label_lies_inside_the_chart(x_max: int, chart_px: int) -> None:
    # when
    chart = str(svg.line_chart([(1, 0.2)], title="curve", x_max=x_max, x_ticks=[1, 3, 7, x_max]))
    # then: the last tick reads "21" in full, not clipped by the chart's right edge, at the narrowest
    # and the widest the chart is drawn (positions are percentages of its width, text is never scaled)
    assert "viewBox" not in chart.split(">", 1)[0]
    ticks = re.findall(r'<text x="([\d.]+)%" y="[\d.]+" text-anchor="(\w+)"[^>]*>(\d+)</text>', chart)
    assert [label for *_, label in ticks] == ["1", "3", "7", str(x_max)]
    assert 'class="axis-title">Days since submission</text>' in chart
    for x, anchor, label in ticks:
        extent = len(label) * GLYPH_WIDTH * svg.FONT_PX / 11
        left, right = {
            "start": (0.0, extent),
            "middle": (extent / 2, extent / 2),
            "end": (extent, 0.0),
        }[anchor]
        at = float(x) * chart_px / 100
        assert at - left >= 0, label
        assert at + right <= chart_px, label
    # then: at the narrowest, neighbouring labels do not overlap (days 1 and 3 of 21 stand 16 px apart)
    shift = {"start": 0.0, "middle": 0.5, "end": 1.0}
    spans = sorted(
        (float(x) * chart_px / 100 - len(t) * GLYPH_WIDTH * shift[anchor], len(t) * GLYPH_WIDTH)
        for x, anchor, t in ticks
    )
    for (a, width), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + width < b


def test_given_a_demo_summary_then_money_is_written_as_the_report_writes_it(tmp_path: Path) -> None:
    # given
    result = DemoResult(
        report_path=tmp_path / "r.html",
        index_path=tmp_path / "index.html",
        nights=30,
        handoffs=1234,
        recovered={"USD": 346_790, "EUR": 34_928, "JPY": 1_500_000},
    )
    # when
    line = format_summary(result)[1]
    # then
    expected = ", ".join(render.fmt_money(m, c) for c, m in sorted(result.recovered.items()))
    assert line == f"recovered through FlexFactor: {expected}"
    assert "3,467.90 USD" in line
    assert "1,500,000 JPY" in line
