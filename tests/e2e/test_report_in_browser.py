"""A real browser renders the demo's report: the expected sections, and markup from the CRM shown as text."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from recycle_engine.cli import main
from tests.conftest import ROOT

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (apt-get install chromium)")
def test_given_a_demo_report_when_chromium_renders_it_then_sections_show_and_markup_in_decline_texts_stays_text(
    tmp_path: Path,
) -> None:
    # given: a short demo; some processor texts in its book carry "<script>alert('x')</script>"
    workdir = tmp_path / "demo"
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
    report = workdir / "reports" / "recovery-2026-06-10.html"
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
        [str(ROOT / "scripts" / "screenshot-report"), str(report), str(screenshot), "1280x1600"],
        check=True,
        timeout=60,
    )
    assert screenshot.stat().st_size > 10_000
