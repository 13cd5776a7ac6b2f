"""The CSV's detail rows: one per hand-off touched on the day, formatted a row at a time from the cursor.

The day's detail is the one part of the report that grows with the day's volume (tens of thousands of
rows on a busy day), so it never becomes a DataFrame: each database row becomes one CSV row, with its
amount as decimal text and its instants as local ISO 8601 text with their offset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from recycle_engine.money import currency_exponent
from recycle_engine.storage.types import as_utc

__all__ = [
    "DETAIL_COLUMNS",
    "SOURCE_COLUMNS",
    "LocalTimes",
    "decimal_text",
    "detail_rows",
    "spreadsheet_safe",
]

DETAIL_COLUMNS: Final = (
    "submission_id source order_id purchase_id transaction_id slot attempt gateway_id declining_gateway_id "
    "amount currency state outcome_source created_at submitted_at outcome_at expires_at decline_code "
    "decline_reason"
).split()

# The columns of queries.detail_stmt, in order: the CSV's, with the amount still in minor units.
SOURCE_COLUMNS: Final = ["amount_minor" if c == "amount" else c for c in DETAIL_COLUMNS]

_LAST_SECOND: Final = timedelta(seconds=59)
_UNSEEN: Final = ("", "")  # a minute not worked out yet (a kept minute's texts are never empty)


def decimal_text(minor: int, exponent: int) -> str:
    """Minor units as decimal text with `exponent` digits after the point ("40.00", "-0.01", "5000")."""
    if exponent == 0:
        return str(minor)
    whole, fraction = divmod(abs(minor), 10**exponent)
    sign = "-" if minor < 0 else ""
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def spreadsheet_safe(text: object) -> str:
    """Text for a CSV cell ("" when none); a leading = + - @ is quoted with ', so a spreadsheet never
    runs a decline text from a processor as a formula."""
    if not isinstance(text, str):
        return ""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


class LocalTimes:
    """Instants as local ISO 8601 text with their offset, to the second ("2026-06-12T02:00:00-04:00"),
    as `datetime.isoformat(timespec="seconds")` writes them; "" for none.

    Takes what a driver returns for a UTC instant: SQLite's stored UTC text ("2026-06-12 06:00:00.000000")
    or a datetime (naive UTC or aware). A day's rows share few distinct minutes, so the zone is asked
    once per UTC minute: the minute's local text and offset are kept, and each instant adds its seconds.
    A minute is kept only when its offset is a whole number of minutes and the same at its first and
    last second; any other instant is converted on its own."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._minutes: dict[str | datetime, tuple[str, str] | None] = {}

    def text(self, value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            # "YYYY-MM-DD HH:MM:SS[.ffffff]": the minute is the key, its seconds are added to its text.
            if len(value) in (19, 26) and value[10] == " ":
                minute = value[:16]
                parts = self._minutes.get(minute, _UNSEEN)
                if parts is _UNSEEN:
                    parts = self._minutes[minute] = self._minute(as_utc(minute + ":00"))
                if parts is not None:
                    return parts[0] + value[16:19] + parts[1]
            return self._exact(as_utc(value))
        instant = as_utc(value)
        start = instant.replace(second=0, microsecond=0)
        parts = self._minutes.get(start, _UNSEEN)
        if parts is _UNSEEN:
            parts = self._minutes[start] = self._minute(start)
        if parts is not None:
            return f"{parts[0]}:{instant.second:02d}{parts[1]}"
        return self._exact(instant)

    def _minute(self, start: datetime) -> tuple[str, str] | None:
        local = start.astimezone(self.tz)
        offset = local.utcoffset()
        last = (start + _LAST_SECOND).astimezone(self.tz).utcoffset()
        if offset is None or offset % timedelta(minutes=1) or last != offset:
            return None
        text = local.isoformat(timespec="seconds")  # "2026-06-12T02:00:00-04:00"
        return text[:16], text[19:]

    def _exact(self, instant: datetime) -> str:
        return instant.astimezone(self.tz).isoformat(timespec="seconds")


def detail_rows(rows: Iterable[Sequence[Any]], tz: ZoneInfo) -> Iterator[tuple[object, ...]]:
    """CSV rows in DETAIL_COLUMNS order from rows in SOURCE_COLUMNS order (queries.detail_stmt's):
    decimal amounts in each row's currency, local times with offset, decline texts spreadsheet-safe."""
    local = LocalTimes(tz).text
    exponents: dict[str, int] = {}
    for (
        submission_id,
        source,
        order_id,
        purchase_id,
        transaction_id,
        slot,
        attempt,
        gateway_id,
        declining_gateway_id,
        amount_minor,
        currency,
        state,
        outcome_source,
        created_at,
        submitted_at,
        outcome_at,
        expires_at,
        decline_code,
        decline_reason,
    ) in rows:
        exponent = exponents.get(currency)
        if exponent is None:
            exponent = exponents[currency] = currency_exponent(str(currency))
        yield (
            submission_id,
            source,
            order_id,
            purchase_id,
            transaction_id,
            slot,
            "" if attempt is None else str(int(attempt)),
            gateway_id,
            declining_gateway_id,
            decimal_text(int(amount_minor), exponent),
            currency,
            state,
            outcome_source,
            local(created_at),
            local(submitted_at),
            local(outcome_at),
            local(expires_at),
            decline_code,
            spreadsheet_safe(decline_reason),
        )
