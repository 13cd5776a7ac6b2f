"""A shortened demo runs end to end: feeds, nightly runs, webhooks, reconcile and reports."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from recycle_engine.cli import main
from tests.conftest import ROOT


def test_given_the_shipped_settings_when_a_short_demo_runs_then_it_hands_off_recovers_and_reports(
    tmp_path: Path,
) -> None:
    # given
    workdir = tmp_path / "demo"
    # when
    result = CliRunner().invoke(
        main,
        [
            "--log-level",
            "WARNING",
            "demo",
            "--config",
            str(ROOT / "settings.yaml"),
            "--workdir",
            str(workdir),
            "--subscriptions",
            "300",
            "--nights",
            "12",
        ],
    )
    # then
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("12 nights, ")
    handoffs = int(lines[0].split(", ")[1].split()[0].replace(",", ""))
    assert handoffs > 0
    assert "recovered through FlexFactor:" in lines[1]
    assert "nothing" not in lines[1]
    report = workdir / "reports" / "recovery-2026-06-12.html"
    assert report.exists()
    assert f"report: {report}" in result.stdout
    html = report.read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert (workdir / "reports" / "index.html").exists()
