"""Database faults at the storage edge: the driver's error becomes one StorageError subclass whose
message is one line naming the database and what to do. make_engine installs `raise_database_fault`
on every engine, so every query, connect and commit is covered; the driver's error stays chained as
the cause (for a DEBUG traceback) and its text is cut to its first line, which never holds row values.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from recycle_engine.errors import DatabaseBusy, DatabaseDiskError, DatabaseUnreachable, StorageError

__all__ = ["DatabaseFailure", "DuplicateRow", "DatabaseTarget", "database_fault", "raise_database_fault"]

# Any failure of a database call, mapped or not: what a caller catches to answer with its own
# StorageError, without knowing the database layer.
DatabaseFailure: Final = SQLAlchemyError
# A write refused by a unique (or other integrity) constraint: another writer got there first.
DuplicateRow: Final = IntegrityError

log = logging.getLogger(__name__)

# SQLite primary result codes (the low byte of an extended code such as SQLITE_IOERR_WRITE).
_SQLITE_BUSY: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_CANTOPEN: Final = 14
_SQLITE_DISK: Final = frozenset({8, 10, 11, 13, 26})  # READONLY, IOERR, CORRUPT, FULL, NOTADB
# PostgreSQL SQLSTATEs.
_PG_BUSY: Final = frozenset({"55P03"})  # lock_not_available (lock_timeout)
_PG_GONE: Final = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now
_PG_DISK: Final = frozenset({"53100", "58030", "XX001", "XX002"})  # disk full, I/O, data/index corrupted
_MAX_DETAIL: Final = 200


@dataclass(frozen=True)
class DatabaseTarget:
    """What a fault message names: the URL without password or query, and SQLite's busy timeout."""

    shown: str
    sqlite_path: str | None = None
    busy_timeout_s: float | None = None

    @classmethod
    def of(cls, url: URL, busy_timeout_s: float | None = None) -> DatabaseTarget:
        shown = url.set(query={}).render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":
            return cls(shown, url.database or ":memory:", busy_timeout_s)
        return cls(shown)


def raise_database_fault(target: DatabaseTarget, context: ExceptionContext) -> None:
    """The engine's `handle_error` listener: raise the StorageError subclass for a database fault."""
    if context.is_pre_ping:
        return  # the pool reconnects on its own
    fault = database_fault(context.original_exception, target, is_disconnect=context.is_disconnect)
    if fault is not None:
        raise fault from context.original_exception


def database_fault(
    error: BaseException, target: DatabaseTarget, *, is_disconnect: bool = False
) -> StorageError | None:
    """The StorageError subclass for a driver error, or None for an error that is not a fault of the
    database itself (a constraint, a bad statement): those stay the caller's to handle."""
    detail = _first_line(error)
    if isinstance(error, sqlite3.Error):
        return _sqlite_fault(error, target, detail)
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate in _PG_BUSY:
        return DatabaseBusy(
            f"database {target.shown} is busy: a lock was not granted in time ({detail}); "
            "run again when the other command has finished"
        )
    if sqlstate in _PG_DISK:
        return DatabaseDiskError(
            f"database {target.shown} failed on the server's disk ({detail}); check its free space and "
            "health, then run again (what was committed stays)"
        )
    if is_disconnect or sqlstate in _PG_GONE or (sqlstate or "").startswith("08"):
        return DatabaseUnreachable(
            f"lost the connection to database {target.shown} ({detail}); what was committed stays: "
            "run again once the database is back"
        )
    if sqlstate is None and type(error).__name__ == "OperationalError":
        # psycopg raises a bare OperationalError, without SQLSTATE, when it cannot connect at all.
        return DatabaseUnreachable(
            f"cannot reach database {target.shown} ({detail}); check that the server is running and "
            "that database.url is right, then run again"
        )
    return None


def _sqlite_fault(error: sqlite3.Error, target: DatabaseTarget, detail: str) -> StorageError | None:
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _code_from_text(detail)
    folder = str(Path(target.sqlite_path).parent) if target.sqlite_path else "its folder"
    if primary in _SQLITE_BUSY:
        timeout = f"{target.busy_timeout_s:g} s" if target.busy_timeout_s is not None else "busy"
        return DatabaseBusy(
            f"database {target.shown} is locked: another process held it past the {timeout} busy "
            "timeout; run again when the other command has finished, or wait longer with "
            "?timeout=SECONDS in database.url"
        )
    if primary == _SQLITE_CANTOPEN:
        return DatabaseUnreachable(
            f"cannot open database {target.shown} ({detail}); check that {folder} exists and is "
            "writable, then run again"
        )
    if primary in _SQLITE_DISK:
        return DatabaseDiskError(
            f"database {target.shown} failed on disk ({detail}); check free space, permissions and the "
            f"disk under {folder}, or restore the file from a backup if it is damaged, then run again "
            "(what was committed stays)"
        )
    return None


def _code_from_text(detail: str) -> int | None:
    # Before Python 3.11 sqlite3 errors carried no code: read the standard SQLite texts.
    for text, code in (
        ("database is locked", 5),
        ("database table is locked", 6),
        ("unable to open database file", 14),
        ("disk I/O error", 10),
        ("database or disk is full", 13),
        ("database disk image is malformed", 11),
        ("file is not a database", 26),
        ("attempt to write a readonly database", 8),
    ):
        if detail.startswith(text):
            return code
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0].strip() if text else type(error).__name__
    return first if len(first) <= _MAX_DETAIL else first[: _MAX_DETAIL - 3] + "..."
