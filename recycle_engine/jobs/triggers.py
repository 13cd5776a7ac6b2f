"""The jobs' cron trigger: crontab weekdays (0 and 7 are Sunday) as names, one run per local wall time."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from recycle_engine.config import Settings
from recycle_engine.storage.anomaly_repo import DueWindow

__all__ = ["LocalCronTrigger", "crontab_weekdays", "due_windows"]

_CRON_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 and 7 are Sunday


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field with numbers rewritten as names (APScheduler 3 counts 0 as Monday)."""
    parts = []
    for part in field.split(","):
        if part == "*" or any(ch.isalpha() for ch in part):
            parts.append(part)  # names mean the same to crontab and APScheduler
            continue
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = int(first_text), int(last_text)
        else:
            first = int(span)
            last = 7 if step_text else first  # crontab reads "1/2" as "1-7/2"
        parts.extend(_CRON_WEEKDAYS[day % 7] for day in range(first, last + 1, step))
    return ",".join(dict.fromkeys(parts))


class LocalCronTrigger(CronTrigger):  # type: ignore[misc]
    """A crontab schedule in the merchant's timezone that fires once per local wall-clock time.

    Plain CronTrigger fires a 01:30 job twice on a fall-back night (01:30 EDT, then 01:30 EST); a
    nightly billing run must not. On a spring-forward night a time that does not exist (02:30 in
    New York) fires once, an hour later by the wall clock (03:30 EDT), as APScheduler does.
    """

    @classmethod
    def from_settings(cls, cron: str, timezone: ZoneInfo) -> LocalCronTrigger:
        minute, hour, day, month, weekday = cron.split()
        expr = " ".join((minute, hour, day, month, crontab_weekdays(weekday)))
        trigger: LocalCronTrigger = cls.from_crontab(expr, timezone=timezone)
        return trigger

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        following: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if (
            following
            and previous_fire_time
            and _wall(following, self.timezone) == _wall(previous_fire_time, self.timezone)
        ):
            following = super().get_next_fire_time(following, following)  # the repeated hour
        return following


def _wall(instant: datetime, timezone: ZoneInfo) -> datetime:
    return instant.astimezone(timezone).replace(tzinfo=None)


_LOOKBACKS: Final = (2, 8, 32, 370)  # days searched back for a last fire: daily, weekly, monthly, yearly


def due_windows(settings: Settings, now: datetime) -> list[DueWindow]:
    """For each job, the last local day it was due whose misfire grace has passed by `now`.

    A run that started from that day's local midnight up to the job's next fire covers it; the
    anomaly check looks for a successful one."""
    windows = []
    for name, job in settings.jobs.items():
        trigger = LocalCronTrigger.from_settings(job.cron, settings.timezone)
        settled = now - timedelta(seconds=job.misfire_grace_seconds)
        fire = _last_fire(trigger, settled)
        if fire is None:
            continue
        following = trigger.get_next_fire_time(fire, fire) or now
        day = fire.astimezone(settings.timezone).date()
        start = datetime.combine(day, time(0), tzinfo=settings.timezone).astimezone(UTC)
        windows.append(DueWindow(name, day, start, following.astimezone(UTC)))
    return windows


def _last_fire(trigger: LocalCronTrigger, until: datetime) -> datetime | None:
    for days in _LOOKBACKS:
        last, fire = None, trigger.get_next_fire_time(None, until - timedelta(days=days))
        while fire is not None and fire <= until:
            last, fire = fire, trigger.get_next_fire_time(fire, fire)
        if last is not None:
            return last
    return None
