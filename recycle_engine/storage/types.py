"""Column types shared by the models: aware UTC datetimes on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["UTCDateTime", "as_utc", "sqlite_utc_text"]


def as_utc(value: Any) -> datetime:
    """An aware UTC datetime from what a driver returns for a UTCDateTime column read without its
    type (SQLite: naive UTC, or its text; PostgreSQL: aware, in the session's zone)."""
    instant = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if instant.tzinfo is UTC:
        return instant  # PostgreSQL sessions run in UTC (storage.db)
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores instants in UTC and always returns aware UTC datetimes; refuses naive ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: keep the UTC wall time so text comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What UTCDateTime stores on SQLite for `value`, formatted in C: the UTC wall time as
    "YYYY-MM-DD HH:MM:SS.ffffff", exactly SQLAlchemy's SQLite DATETIME text."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
