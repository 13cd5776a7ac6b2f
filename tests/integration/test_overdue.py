"""A run that finds attempts due long ago says how many and since when before making them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from recycle_engine.domain.night import Night
from recycle_engine.services.nightly.overdue import find_overdue
from recycle_engine.storage.db import make_engine
from tests.conftest import ROOT
from tests.factories import SANDBOX_ENV

SAMPLE = ROOT / "recycle_engine" / "sample" / "declines-sample.csv"


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recycle_engine", *args],
        cwd=site,
        env=dict(os.environ) | SANDBOX_ENV | {"RECYCLE_ENGINE_CONFIG": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_given_the_sample_feed_months_late_when_submit_runs_then_it_warns_with_the_count_and_the_oldest_date(
    tmp_path: Path,
) -> None:
    # given: the sample's declines are of June 2026; the run is in December
    site = tmp_path / "site"
    (site / "var").mkdir(parents=True)
    (site / "settings.yaml").write_text(
        (ROOT / "settings.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (site / "feed.csv").write_bytes(SAMPLE.read_bytes())
    assert _cli(site, "db", "upgrade").returncode == 0
    assert _cli(site, "import", "declines", "feed.csv").returncode == 0
    engine = make_engine(f"sqlite:///{site / 'var' / 'recycle.db'}")
    tz = ZoneInfo("America/New_York")
    try:
        found = find_overdue(engine, night=Night.of(datetime(2026, 12, 5, 7, 0, tzinfo=UTC), tz))
        in_time = find_overdue(engine, night=Night.of(datetime(2026, 6, 3, 7, 0, tzinfo=UTC), tz))
    finally:
        engine.dispose()
    # when
    run = _cli(site, "run", "submit", "--dry-run", "--at", "2026-12-05T02:00:00-05:00")
    # then
    assert found is not None
    assert found.count > 0
    assert found.oldest < date(2026, 7, 1)
    assert in_time is None
    assert run.returncode == 0, run.stderr
    assert f"{found.count:,} attempts fell due more than 7 days before 2026-12-05" in run.stderr
    assert f"the oldest on {found.oldest.isoformat()}" in run.stderr
