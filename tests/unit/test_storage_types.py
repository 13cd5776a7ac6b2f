"""The C-speed SQLite text of UTCDateTime matches what SQLAlchemy itself would store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from recycle_engine.storage.types import UTCDateTime, sqlite_utc_text

_DIALECT = sqlite.dialect()
_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def _sqlalchemy_text(value: datetime) -> str:
    process = UTCDateTime().dialect_impl(_DIALECT).bind_processor(_DIALECT)
    assert process is not None
    result = process(value)
    assert isinstance(result, str)
    return result


@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS))
def test_sqlite_text_equals_sqlalchemy_text(value: datetime) -> None:
    assert sqlite_utc_text(value) == _sqlalchemy_text(value)


def test_sqlite_text_is_utc_wall_time_with_microseconds() -> None:
    value = datetime(2026, 3, 8, 1, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert sqlite_utc_text(value) == "2026-03-08 06:30:00.000000"
    assert sqlite_utc_text(datetime(2026, 3, 8, 6, 30, 0, 7, tzinfo=UTC)) == "2026-03-08 06:30:00.000007"
    assert sqlite_utc_text(None) is None


def test_sqlite_text_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc_text(datetime(2026, 3, 8, 6, 30))
