"""Job triggers in the merchant's timezone: both DST changes, crontab weekdays, nightly job order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from recycle_engine.jobs.schedule import LocalCronTrigger, crontab_weekdays

NEW_YORK = ZoneInfo("America/New_York")


def fire_times(trigger: CronTrigger, start: datetime, until: datetime) -> list[datetime]:
    """Fire times in [start, until), walked the way APScheduler walks them (previous, now=previous)."""
    times: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire < until:
        times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)  # type: ignore[misc]


def test_given_a_0230_job_when_clocks_spring_forward_on_2025_03_09_then_it_fires_once_at_0330_edt() -> None:
    # given: 02:00-02:59 does not exist in New York on 2025-03-09
    trigger = LocalCronTrigger.from_settings("30 2 * * *", NEW_YORK)
    # when
    times = fire_times(trigger, local(2025, 3, 8, 12, 0), local(2025, 3, 10, 12, 0))
    # then: APScheduler keeps the night's run and moves it to the same instant as 03:30 EDT
    assert [t.astimezone(UTC) for t in times] == [
        datetime(2025, 3, 9, 7, 30, tzinfo=UTC),  # 02:30 EST, as a non-existent time
        datetime(2025, 3, 10, 6, 30, tzinfo=UTC),  # 02:30 EDT
    ]
    assert times[0].astimezone(UTC).astimezone(NEW_YORK).isoformat() == "2025-03-09T03:30:00-04:00"
    assert times[1].astimezone(UTC) - times[0].astimezone(UTC) == timedelta(hours=23)


def test_given_a_0230_job_when_clocks_fall_back_on_2025_11_02_then_it_fires_once_at_0230_est() -> None:
    # given: 01:00-01:59 happens twice in New York on 2025-11-02; 02:30 once
    trigger = LocalCronTrigger.from_settings("30 2 * * *", NEW_YORK)
    # when
    times = fire_times(trigger, local(2025, 11, 1, 12, 0), local(2025, 11, 3, 12, 0))
    # then
    assert [t.isoformat() for t in times] == ["2025-11-02T02:30:00-05:00", "2025-11-03T02:30:00-05:00"]
    assert times[0].astimezone(UTC) == datetime(2025, 11, 2, 7, 30, tzinfo=UTC)


def test_given_a_0130_job_when_the_hour_repeats_on_2025_11_02_then_it_fires_once_where_plain_cron_fires_twice() -> (
    None
):
    # given
    ours = LocalCronTrigger.from_settings("30 1 * * *", NEW_YORK)
    plain = CronTrigger.from_crontab("30 1 * * *", timezone=NEW_YORK)
    start, until = local(2025, 11, 1, 12, 0), local(2025, 11, 3, 12, 0)
    # when
    ours_times = fire_times(ours, start, until)
    plain_times = fire_times(plain, start, until)
    # then: the first 01:30 (EDT) runs; its EST repeat an hour later does not
    assert [t.astimezone(UTC).isoformat() for t in ours_times] == [
        "2025-11-02T05:30:00+00:00",
        "2025-11-03T06:30:00+00:00",
    ]
    assert len(plain_times) == 3  # the hazard LocalCronTrigger exists for


def test_given_a_0130_job_when_the_scheduler_resumes_inside_the_repeated_hour_then_it_does_not_fire_again() -> (
    None
):
    # given: the 01:30 EDT run happened; it is now 01:10 EST, inside the repeated hour
    trigger = LocalCronTrigger.from_settings("30 1 * * *", NEW_YORK)
    ran = datetime(2025, 11, 2, 5, 30, tzinfo=UTC)
    now = datetime(2025, 11, 2, 6, 10, tzinfo=UTC)
    # when
    following = trigger.get_next_fire_time(ran, now)
    # then
    assert following == datetime(2025, 11, 3, 6, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "offset"),
    [("2025-03-08", "-05:00"), ("2025-03-09", "-04:00"), ("2025-11-01", "-04:00"), ("2025-11-02", "-05:00")],
)
def test_given_the_spec_jobs_when_a_night_crosses_a_dst_change_then_submit_reconcile_report_fire_in_order(
    day: str, offset: str
) -> None:
    # given: the schedule of SPEC section 7
    crons = {"submit": "0 2 * * *", "reconcile": "30 3 * * *", "report": "0 6 * * *"}
    midnight = datetime.fromisoformat(f"{day}T00:00:00").replace(tzinfo=NEW_YORK)
    # when
    fired = {
        name: LocalCronTrigger.from_settings(cron, NEW_YORK).get_next_fire_time(None, midnight)
        for name, cron in crons.items()
    }
    # then: each fires that local day, reconcile after submit and before the report
    assert fired["submit"] < fired["reconcile"] < fired["report"]  # type: ignore[operator]
    assert fired["report"].isoformat() == f"{day}T06:00:00{offset}"  # type: ignore[union-attr]
    assert fired["reconcile"].isoformat() == f"{day}T03:30:00{offset}"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("5-7", "fri,sat,sun"),
        ("mon-fri", "mon-fri"),
    ],
)
def test_given_a_crontab_weekday_field_then_numbers_count_from_sunday(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names


def test_given_cron_0_in_the_weekday_field_when_scheduled_then_it_fires_on_sunday_not_monday() -> None:
    # given: APScheduler 3's own from_crontab would read 0 as Monday
    trigger = LocalCronTrigger.from_settings("0 2 * * 0", NEW_YORK)
    # when: from a Monday
    fire = trigger.get_next_fire_time(None, local(2025, 6, 2, 12, 0))
    # then
    assert fire is not None
    assert fire.strftime("%a %Y-%m-%d %H:%M") == "Sun 2025-06-08 02:00"


def test_given_a_month_end_job_when_february_has_29_days_then_it_fires_on_the_29th() -> None:
    # given
    trigger = LocalCronTrigger.from_settings("0 2 29 2 *", NEW_YORK)
    # when
    fire = trigger.get_next_fire_time(None, local(2025, 3, 1, 0, 0))
    # then
    assert fire is not None
    assert fire.isoformat() == "2028-02-29T02:00:00-05:00"
