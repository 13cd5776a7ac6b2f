"""The flexfactor_token_cache row of one credential set: read it, lock it, replace or clear it by version.

The row holds only what the caller gives it (a sealed token, its expiry); sealing is the adapter's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, Connection, Engine, and_, create_engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from recycle_engine.storage.db import make_engine, normalise_url
from recycle_engine.storage.models import FlexFactorTokenCache

__all__ = ["CacheKey", "CachedRow", "cache_engine", "clear", "ensure", "read", "replace"]

# How long a write to the cache waits for SQLite's lock before giving up (the token is then kept in
# the process only): the lock may be held by this very process, around the call that wants a token.
SQLITE_WRITE_WAIT_S: Final = 0.1

_T = FlexFactorTokenCache


@dataclass(frozen=True)
class CacheKey:
    base_url: str
    key_fingerprint: str


@dataclass(frozen=True)
class CachedRow:
    sealed_token: str | None
    expires_at: datetime | None
    renew_at: datetime | None
    version: int


def cache_engine(url: str) -> Engine:
    """The cache's own small engine on the run's database.

    Its own, because a run may call FlexFactor inside one of its transactions (settling an expired
    hand-off, say), holding SQLite's database lock or the connections of its pool. So on SQLite reads
    take no lock (WAL gives them the last committed row) and a write waits SQLITE_WRITE_WAIT_S at
    most, where the engine's own transactions take the lock at BEGIN and wait 30 s; on PostgreSQL it
    has its own pool of one connection (two at most)."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite":
        return make_engine(url, pool_size=1)
    parsed = parsed.difference_update_query(["timeout"])
    # pysqlite's own transactions: a SELECT runs outside one, a write begins a deferred one.
    args = {"check_same_thread": False, "timeout": SQLITE_WRITE_WAIT_S}
    return create_engine(parsed, connect_args=args)


def ensure(conn: Connection, key: CacheKey, now: datetime) -> None:
    """Create the empty row (version 0) if there is none, so it can be locked and compared."""
    values = {
        "base_url": key.base_url,
        "key_fingerprint": key.key_fingerprint,
        "version": 0,
        "updated_at": now,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(_T.__table__).values(**values).on_conflict_do_nothing()
    conn.execute(stmt)


def read(conn: Connection, key: CacheKey, *, for_update: bool = False) -> CachedRow | None:
    """The row, or None. `for_update` holds its row lock to the end of the transaction (PostgreSQL;
    SQLite's transactions already hold the database's write lock)."""
    stmt = select(_T.sealed_token, _T.expires_at, _T.renew_at, _T.version).where(_is(key))
    if for_update:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    return CachedRow(row.sealed_token, row.expires_at, row.renew_at, row.version)


def replace(
    conn: Connection,
    key: CacheKey,
    *,
    sealed_token: str,
    expires_at: datetime,
    renew_at: datetime,
    expected_version: int,
    now: datetime,
) -> int | None:
    """Write a new token if the row is still at `expected_version`; its new version, or None when
    another process wrote first (compare-and-set)."""
    return _set(
        conn,
        key,
        expected_version,
        sealed_token=sealed_token,
        expires_at=expires_at,
        renew_at=renew_at,
        updated_at=now,
    )


def clear(conn: Connection, key: CacheKey, *, version: int, now: datetime) -> bool:
    """Forget the token written as `version`; False when a newer one already replaced it."""
    cleared = _set(conn, key, version, sealed_token=None, expires_at=None, renew_at=None, updated_at=now)
    return cleared is not None


def _set(conn: Connection, key: CacheKey, expected_version: int, **values: object) -> int | None:
    new_version = expected_version + 1
    result = conn.execute(
        update(_T).where(_is(key), _T.version == expected_version).values(version=new_version, **values)
    )
    return new_version if result.rowcount == 1 else None


def _is(key: CacheKey) -> ColumnElement[bool]:
    return and_(_T.base_url == key.base_url, _T.key_fingerprint == key.key_fingerprint)
