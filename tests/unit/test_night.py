"""The Night: one run's time, read once, frozen; and the one place that builds the system clock."""

from __future__ import annotations

import ast
import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import pytest

from recycle_engine.domain.night import Night

ROOT = Path(__file__).resolve().parents[2]
NEW_YORK = ZoneInfo("America/New_York")
# Where `SystemClock()` may be built: the wiring point, the clock adapter (the real clock behind
# `send_clock`) and the FlexFactor stand-in's own clock, which is no part of the engine.
BUILDS_THE_CLOCK: Final = {
    "recycle_engine/bootstrap.py",
    "recycle_engine/adapters/clock.py",
    "recycle_engine/sandbox/clock.py",
}


@pytest.mark.parametrize(
    ("at", "today"),
    [
        # 03:59 UTC is still the evening before in New York (EDT, UTC-4)...
        (datetime(2026, 6, 11, 3, 59, tzinfo=UTC), date(2026, 6, 10)),
        # ...and at 04:00 UTC exactly the local day has turned.
        (datetime(2026, 6, 11, 4, 0, tzinfo=UTC), date(2026, 6, 11)),
        # the offset of `--at` is kept as given; the local date is the settings timezone's
        (datetime(2026, 6, 11, 2, 0, tzinfo=timezone(timedelta(hours=2))), date(2026, 6, 10)),
    ],
)
def test_given_an_instant_when_a_night_is_made_then_today_is_its_local_date(
    at: datetime, today: date
) -> None:
    # when
    night = Night.of(at, NEW_YORK)
    # then
    assert night == Night(at, today, None)
    assert night.at.isoformat() == at.isoformat()


def test_given_a_naive_instant_then_no_night_is_made() -> None:
    with pytest.raises(ValueError, match="aware"):
        Night.of(datetime(2026, 6, 11, 2, 0), NEW_YORK)  # noqa: DTZ001


def test_given_a_night_when_its_run_starts_then_a_new_night_carries_the_run_and_the_old_is_unchanged() -> (
    None
):
    # given
    night = Night.of(datetime(2026, 6, 11, 6, 0, tzinfo=UTC), NEW_YORK)
    # when
    started = night.started("submit-abc")
    # then
    assert (started.at, started.today, started.job_run) == (night.at, night.today, "submit-abc")
    assert night.run_id is None
    with pytest.raises(ValueError, match="no job run"):
        _ = night.job_run


def test_a_night_is_frozen() -> None:
    night = Night.of(datetime(2026, 6, 11, 6, 0, tzinfo=UTC), NEW_YORK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        night.at = datetime(2026, 6, 12, 6, 0, tzinfo=UTC)  # type: ignore[misc]
    assert not hasattr(night, "__dict__")  # slots: nothing can be hung on it either


def _clock_builders() -> set[str]:
    found = set()
    for path in sorted((ROOT / "recycle_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "SystemClock"
            ):
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_only_the_wiring_point_builds_the_system_clock() -> None:
    # when
    builders = _clock_builders()
    # then: entry points and services get the wall clock from bootstrap, never build their own
    assert builders <= BUILDS_THE_CLOCK, sorted(builders - BUILDS_THE_CLOCK)
    assert "recycle_engine/bootstrap.py" in builders  # the walk does see a construction
