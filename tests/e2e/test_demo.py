"""A shortened demo runs end to end: feeds, nightly runs, webhooks, reconcile and reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from recycle_engine.cli import main
from recycle_engine.storage.models import Handoff
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

    # the summary counts as the report does: both rates, with their definitions, from the states now
    engine = create_engine(f"sqlite:///{workdir / 'demo.db'}")
    with engine.connect() as conn:
        by_state = dict(
            (s, int(n)) for s, n in conn.execute(select(Handoff.state, func.count()).group_by(Handoff.state))
        )
    engine.dispose()
    recovered = by_state.get("APPROVED", 0)
    lost = sum(by_state.get(s, 0) for s in ("DECLINED", "EXPIRED", "CANCELLED"))
    pending = sum(by_state.get(s, 0) for s in ("PENDING", "SUBMITTED"))
    table = [
        line.split() for line in lines if line.startswith("  ") and line.split()[0] in ("4-6", "7-9", "final")
    ]
    assert sum(int(row[2].replace(",", "")) for row in table) == recovered
    assert sum(int(row[3].replace(",", "")) for row in table) == lost
    assert sum(int(row[4].replace(",", "")) for row in table) == pending
    for row in table:
        r, lo, p = (int(x.replace(",", "")) for x in row[2:5])
        assert row[6] == f"{r / (r + lo + p):.0%}"
        assert row[7] == "-"  # twelve nights: no 21-day window has closed, so no final rate yet
    assert any(line.startswith("  rate to date = recovered / (recovered + lost + pending)") for line in lines)
    assert any(
        line.startswith("  rate final = the same over hand-offs whose window has closed") for line in lines
    )
    assert "recovered by poll" not in result.output
    # the book came from the CRM fake, and the changes went back to it, each once
    crm_line = next(line for line in lines if line.startswith("CRM: "))
    found = re.search(
        r"(\d[\d,]*) changes reached the CRM \(its log: (\d[\d,]*) applied\), 0 refused", crm_line
    )
    assert found is not None, crm_line
    assert found.group(1) == found.group(2)
    assert int(found.group(1).replace(",", "")) > 0
    assert crm_line.startswith("CRM: 315 declines pulled (0 rejected)")  # 300 rebills and 15 new sales


def test_given_stderr_piped_when_a_demo_runs_then_every_stderr_line_is_json_and_few_are_webhooks(
    tmp_path: Path,
) -> None:
    # when
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recycle_engine",
            "demo",
            "--config",
            str(ROOT / "settings.yaml"),
            "--workdir",
            str(tmp_path / "demo"),
            "--subscriptions",
            "100",
            "--nights",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # then
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["msg"].startswith("night 10/10") for r in records)
    assert not [r for r in records if r["logger"].startswith("alembic")]
    assert not [r for r in records if r["msg"] == "webhook accepted"]  # each delivery is at DEBUG
    assert not [r for r in records if "color_message" in r]
