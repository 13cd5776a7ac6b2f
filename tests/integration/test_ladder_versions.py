"""Schedule versions: the ladder a subscription entered with holds until `ladder migrate` moves it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.cli import main
from recycle_engine.config import Settings
from recycle_engine.domain.profile_versions import profile_version
from recycle_engine.services.intake.import_declines import import_declines
from recycle_engine.services.ladder.ladder_versions import migrate_profile
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, Change, RecycleProfileVersion, Subscription
from tests.factories import SANDBOX_ENV, a_settings_file, load_test_settings
from tests.integration.test_import_declines import a_decline as a_feed_row
from tests.integration.test_import_declines import write_feed
from tests.nights import submit_night

IMPORTED = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
NIGHT_2 = datetime(2026, 6, 2, 6, 0, tzinfo=UTC)  # 02:00 in New York on 2026-06-02
LADDER_A = textwrap.dedent(
    """\
    - {attempt: 1, days: 1, reduction: "0"}
    - {attempt: 2, days: 1, reduction: "5"}
    - {attempt: 4, days: 2, reduction: "5"}
    """
)
LADDER_B = LADDER_A.replace("{attempt: 1, days: 1", "{attempt: 1, days: 4").replace(
    "{attempt: 2, days: 1", "{attempt: 2, days: 6"
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def settings_with(tmp_path: Path, db_url: str, ladder: str) -> tuple[Settings, Path]:
    path = a_settings_file(tmp_path, db_url=db_url, attempts=ladder)
    return load_test_settings(path), path


def import_one(tmp_path: Path, settings: Settings, engine: Engine) -> None:
    # Declined 2026-06-01 10:15 in New York, on the profile's gateway `nmi`.
    feed = write_feed(tmp_path / "declines.csv", [a_feed_row(gateway_id="nmi", purchase_id="P-1")])
    import_declines(feed, settings=settings, engine=engine, clock=FixedClock(IMPORTED))


def the_subscription(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Subscription).where(Subscription.id == "P-1")).one()


def test_given_a_decline_when_imported_then_the_subscription_records_the_version_it_entered_with(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings, _ = settings_with(tmp_path, db_url, LADDER_A)
    # when
    import_one(tmp_path, settings, engine)
    # then
    version = profile_version(settings.recycle_profiles["default"])
    assert the_subscription(engine).recycle_profile_version == version
    with engine.connect() as conn:
        stored = conn.execute(select(RecycleProfileVersion)).one()
    assert (stored.profile_id, stored.version, stored.first_seen_at) == ("default", version, IMPORTED)
    assert '"days": 1' in stored.content


def test_given_a_settings_edit_when_submit_runs_then_the_in_flight_subscription_keeps_its_ladder_until_migrated(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: imported under ladder A (attempt 1 a day after the decline, attempt 2 a day later) ...
    settings_a, path = settings_with(tmp_path, db_url, LADDER_A)
    import_one(tmp_path, settings_a, engine)
    old_version = the_subscription(engine).recycle_profile_version
    # ... then finance edits settings.yaml: attempt 1 after 4 days, attempt 2 after 6
    settings_b, path = settings_with(tmp_path, db_url, LADDER_B)
    # when: the night of 2026-06-02 runs with the edited settings
    result = submit_night(settings_b, engine, NIGHT_2)
    # then: attempt 1 ran on ladder A's date, and attempt 2 is booked by ladder A
    assert result.counts["charged"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(Attempt.attempt, Attempt.gateway_id)).one() == (1, "nmi")
    sub = the_subscription(engine)
    assert (sub.recycle_profile_version, sub.next_attempt, sub.next_attempt_on) == (
        old_version,
        2,
        date(2026, 6, 3),
    )

    # when: the ladder is migrated from the command line
    cli = CliRunner().invoke(
        main, ["ladder", "migrate", "--profile", "default", "--config", str(path)], env=SANDBOX_ENV
    )
    # then: attempt 2 is recomputed under ladder B from the attempt that ran (06-02 + 6 days)
    assert cli.exit_code == 0, cli.output
    assert "moved 1, rescheduled 1" in cli.output
    sub = the_subscription(engine)
    new_version = profile_version(settings_b.recycle_profiles["default"])
    assert (sub.recycle_profile_version, sub.next_attempt, sub.next_attempt_on) == (
        new_version,
        2,
        date(2026, 6, 8),
    )
    with engine.connect() as conn:
        changes = conn.execute(
            select(Change.field, Change.old_value, Change.new_value)
            .where(Change.reason == "LADDER_MIGRATED", Change.entity_id == "P-1")
            .order_by(Change.id)
        ).all()
    assert changes == [
        ("recycle_profile_version", old_version, new_version),
        ("next_attempt_on", "2026-06-03 (attempt 2)", "2026-06-08 (attempt 2)"),
    ]


def test_given_a_migrated_profile_when_migrated_again_then_nothing_moves(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    settings_a, _ = settings_with(tmp_path, db_url, LADDER_A)
    import_one(tmp_path, settings_a, engine)
    settings_b, _ = settings_with(tmp_path, db_url, LADDER_B)
    first = migrate_profile(settings_b, engine, profile_id="default", now=NIGHT_2)
    # when
    second = migrate_profile(settings_b, engine, profile_id="default", now=NIGHT_2)
    # then
    assert (first.moved, first.rescheduled) == (1, 1)
    assert (second.moved, second.rescheduled) == (0, 0)


def test_given_a_shorter_ladder_when_migrated_past_its_end_then_the_subscription_fails_out(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: attempts 1 and 2 ran; the new ladder has only attempt 1
    settings_a, _ = settings_with(tmp_path, db_url, LADDER_A)
    import_one(tmp_path, settings_a, engine)
    with engine.begin() as conn:
        conn.execute(
            Subscription.__table__.update().values(
                recycle_last_attempt=2, recycle_last_ran_on=date(2026, 6, 3)
            )
        )
    short, _ = settings_with(tmp_path, db_url, '- {attempt: 1, days: 1, reduction: "0"}\n')
    # when
    result = migrate_profile(short, engine, profile_id="default", now=NIGHT_2)
    # then
    assert (result.moved, result.ended) == (1, 1)
    sub = the_subscription(engine)
    assert (sub.status, sub.failure_cause) == ("RECYCLE_FAILED", "ALL_ATTEMPTS_DECLINED")


def test_given_two_versions_in_flight_when_listed_then_each_shows_its_count(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: one subscription on ladder A, the settings now say B
    settings_a, _ = settings_with(tmp_path, db_url, LADDER_A)
    import_one(tmp_path, settings_a, engine)
    _, path = settings_with(tmp_path, db_url, LADDER_B)
    # when
    cli = CliRunner().invoke(main, ["ladder", "versions", "--config", str(path)], env=SANDBOX_ENV)
    # then
    assert cli.exit_code == 0, cli.output
    version_a = profile_version(settings_a.recycle_profiles["default"])
    assert f"{version_a}  first seen 2026-06-01T15:00:00+00:00  in flight 1" in cli.output
    assert "current settings: not recorded yet" in cli.output


def test_given_an_unknown_profile_when_migrated_then_the_command_exits_non_zero(
    tmp_path: Path, db_url: str
) -> None:
    _, path = settings_with(tmp_path, db_url, LADDER_A)
    cli = CliRunner().invoke(
        main, ["ladder", "migrate", "--profile", "nope", "--config", str(path)], env=SANDBOX_ENV
    )
    assert cli.exit_code == 1
    assert "recycle profile 'nope' is not in the settings" in cli.output
