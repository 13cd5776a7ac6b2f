"""Engines and migrations: SQLite (WAL) by default, PostgreSQL by URL, one Alembic history for both."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url

from recycle_engine.config.values import sqlite_busy_timeout
from recycle_engine.errors import ConfigError, ConfigProblem
from recycle_engine.storage.faults import DatabaseTarget, raise_database_fault

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "has_table",
    "make_engine",
    "normalise_url",
    "read_only_engine",
    "sqlite_file_missing",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An Engine for `url`; SQLite files get WAL, a busy timeout (`?timeout=SECONDS` in the URL,
    default 30) and their folder created. Database faults (locked past the timeout, unreachable, disk
    errors) raise the StorageError subclasses of storage.faults in place of the driver's error."""
    parsed = make_url(normalise_url(url))
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        timeout = _sqlite_timeout(parsed)
        parsed = parsed.difference_update_query(["timeout"])
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, int(timeout * 1000)))
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so locks are taken early.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        _map_faults(engine, DatabaseTarget.of(parsed, timeout))
        return engine
    kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    if "options" not in parsed.query:
        # Sessions in UTC, whatever the server's default: psycopg then returns instants already in
        # datetime.UTC, which UTCDateTime passes through instead of converting each one.
        kwargs["connect_args"] = {"options": "-c timezone=UTC"}
    engine = create_engine(parsed, **kwargs)
    _map_faults(engine, DatabaseTarget.of(parsed))
    return engine


def sqlite_file_missing(url: str) -> bool:
    """Whether `url` names a SQLite database whose file does not exist (yet)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (
        not parsed.database or not Path(parsed.database).exists()
    )


def read_only_engine(url: str) -> Engine:
    """SQLite opened read-only: the engine's own engine takes the write lock at BEGIN, and a check must
    neither wait behind a nightly run nor block one. Any other database as make_engine opens it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return make_engine(url)
    uri = f"file:{quote(str(Path(parsed.database or '').resolve()))}?mode=ro"
    # A creator, not a URL: SQLAlchemy would decode the quoting that keeps '#', '?' or '%' in a folder name.
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=5))


def has_table(conn: Connection, name: str) -> bool:
    """Whether the database holds table `name` (a database not yet upgraded may not)."""
    return inspect(conn).has_table(name)


def _sqlite_timeout(url: URL) -> float:
    try:
        return sqlite_busy_timeout(url)
    except ValueError as exc:
        raise ConfigError([ConfigProblem("database.url", str(exc))]) from None


def _map_faults(engine: Engine, target: DatabaseTarget) -> None:
    event.listen(engine, "handle_error", functools.partial(raise_database_fault, target))


def _sqlite_pragmas(busy_timeout_ms: int, dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" listener control transactions
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
    cur.close()


def alembic_config(url: str) -> Config:
    # Alembic is imported here, not above: every command opens an engine, few migrate.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema at `url` to `revision`."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    from alembic import command

    command.upgrade(alembic_config(url), revision)
