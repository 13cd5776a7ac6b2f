"""A real browser renders the demo's report and dashboard: the expected sections, markup from the CRM shown
as text, and a layout that fits a desktop and a phone (no sideways page scroll, readable chart text)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recycle_engine.cli import main
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from chromium_page import ChromiumPage, find_browser  # noqa: E402 - the screenshot script's own module

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="chromium is not installed (apt-get install chromium)"
)

# What the layout test reads from the laid-out page. Chart text sits in SVG: its rendered size is the
# computed font size times the scale the SVG is drawn at (its screen matrix), so a chart shrunk to fit
# a phone shows up here even though its CSS font size did not change.
LAYOUT = """(() => {
  const chartText = [...document.querySelectorAll("svg.chart text")];
  const sizes = chartText.map(t => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a);
  return {
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    bodyScrollWidth: document.body.scrollWidth,
    overflowX: getComputedStyle(document.documentElement).overflowX + "/" + getComputedStyle(document.body).overflowX,
    firstSection: document.querySelector("main section")?.id,
    chartTexts: chartText.length,
    smallestChartText: Math.min(...sizes),
    framedTables: document.querySelectorAll(".table-frame > table").length,
    tables: document.querySelectorAll("table").length,
  };
})()"""


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reports folder of a short demo; some processor texts in its book carry
    "<script>alert('x')</script>"."""
    workdir = tmp_path_factory.mktemp("browser") / "demo"
    args = [
        "--log-level",
        "WARNING",
        "demo",
        "--config",
        str(ROOT / "settings.yaml"),
        "--workdir",
        str(workdir),
    ]
    result = CliRunner().invoke(main, [*args, "--subscriptions", "200", "--nights", "10"])
    assert result.exit_code == 0, result.output
    return workdir / "reports"


def test_given_a_demo_report_when_chromium_renders_it_then_sections_show_and_markup_in_decline_texts_stays_text(
    demo_reports: Path, tmp_path: Path
) -> None:
    # given
    report = demo_reports / "recovery-2026-06-10.html"
    # when: the browser parses and lays out the page, then prints the DOM it built
    dom = subprocess.run(
        [
            str(BROWSER),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # then: the page is the report, and no element came from data
    assert "Headline" in dom
    assert "Reconciliation" in dom
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in dom
    assert "http://" not in dom
    assert "https://" not in dom
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [str(ROOT / "scripts" / "screenshot-report"), str(report), str(screenshot), "--width", "390"],
        check=True,
        timeout=60,
    )
    assert screenshot.stat().st_size > 10_000


@pytest.mark.parametrize("width", [1400, 390])
@pytest.mark.parametrize("page", ["recovery-2026-06-10.html", "index.html"])
def test_given_a_viewport_when_the_page_is_laid_out_then_it_fits_the_width_and_chart_text_stays_readable(
    demo_reports: Path, page: str, width: int
) -> None:
    # given: a desktop or a phone's viewport, exactly `width` CSS px wide
    assert BROWSER is not None
    with ChromiumPage(BROWSER, width=width, height=900) as browser:
        # when
        browser.open(demo_reports / page)
        layout: dict[str, Any] = browser.evaluate(LAYOUT)
    # then: nothing is wider than the viewport, and not because overflow was hidden
    assert layout["innerWidth"] == width
    assert layout["scrollWidth"] == layout["innerWidth"], layout
    assert layout["bodyScrollWidth"] <= width, layout
    assert layout["overflowX"] == "visible/visible"
    # then: the summary comes first, every table scrolls in its own frame, and charts are readable
    assert layout["firstSection"] == "summary"
    assert layout["framedTables"] == layout["tables"] > 0
    assert layout["chartTexts"] > 0
    assert layout["smallestChartText"] >= 10, layout
