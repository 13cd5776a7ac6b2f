"""The FlexFactor token shared by every process of one database, sealed so the database alone is no use.

Why the database, sealed: every run, worker and `serve` already share it, so one token call serves
them all for ten minutes (a file would not reach a second host). The token is a bearer credential
for the merchant's FlexFactor account, so it is stored only Fernet-sealed under a key derived (HKDF)
from the app secret, which comes from the environment and is never stored: a dump or a backup of the
database yields no usable token. Its expiry stays in clear, so a reader knows when to renew without
unsealing. A token that does not unseal (the secret was rotated, or another key wrote it) is a miss.

The cache has its own small engine (storage.token_cache_repo.cache_engine): a run may call FlexFactor
inside one of its transactions, so the cache must neither wait for that run's lock nor its connections.

Concurrency: on PostgreSQL the process that finds no usable token fetches while it holds the row
lock, so workers starting together wait for its token instead of each fetching one (the wait is
bounded: past it a process fetches its own). On SQLite the only lock is the whole database's, which
must not be held across an HTTP call, so the write is a compare-and-set: a race costs an extra token
call, never a failure. A database error never fails a FlexFactor call either: the token is fetched
as if there were no cache, and the error logged.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from recycle_engine.errors import StorageError
from recycle_engine.ports import BearerToken, TokenCache
from recycle_engine.storage import token_cache_repo as repo

__all__ = ["SealedTokenCache", "key_fingerprint"]

log = logging.getLogger(__name__)

_HKDF_SALT: Final = b"recycle-engine flexfactor token cache"
_DB_ERRORS: Final = (StorageError, SQLAlchemyError)


def key_fingerprint(app_key: str) -> str:
    """What names a credential set in the table: the app key is not stored either."""
    return hashlib.sha256(b"flexfactor app key\0" + app_key.encode("utf-8")).hexdigest()


class SealedTokenCache:
    """ports.TokenCache in the flexfactor_token_cache table, for one (base_url, app key)."""

    def __init__(
        self, database_url: str, *, base_url: str, app_key: str, app_secret: str, lock_wait_s: float
    ) -> None:
        self._engine = repo.cache_engine(database_url)
        self._key = repo.CacheKey(base_url.rstrip("/"), key_fingerprint(app_key))
        self._fernet = _fernet(app_secret, self._key)
        self._holds_lock = self._engine.dialect.name == "postgresql"
        self._lock_wait_ms = max(1, int(lock_wait_s * 1000))
        # The version of the last token FlexFactor refused us. Never taken back from the table, even
        # when clearing it there failed (SQLite locked by this very process): a second 401 on the same
        # token would read as wrong credentials. Versions only grow, so the last one is enough.
        self._refused: int | None = None

    def __repr__(self) -> str:
        return f"SealedTokenCache(base_url={self._key.base_url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def current(self, now: datetime, fetch: Callable[[], BearerToken]) -> BearerToken:
        try:
            with self._engine.connect() as conn:
                row = repo.read(conn, self._key)
        except _DB_ERRORS as exc:
            self._warn("read", exc)
            return fetch()
        token = self._usable(row, now)
        if token is not None:
            return token
        if self._holds_lock:
            return self._fetch_holding_lock(now, fetch)
        return self._fetch_and_offer(now, fetch, row.version if row is not None else 0)

    def drop(self, failed: BearerToken, now: datetime) -> None:
        if failed.version is None:
            return  # never shared
        self._refused = failed.version
        try:
            with self._engine.begin() as conn:
                repo.clear(conn, self._key, version=failed.version, now=now)
        except _DB_ERRORS as exc:
            # Another process reading it meets the same 401 and drops it then.
            self._warn("drop", exc)

    def _fetch_holding_lock(self, now: datetime, fetch: Callable[[], BearerToken]) -> BearerToken:
        fetched: BearerToken | None = None
        try:
            with self._engine.begin() as conn:
                # Waiting longer than a token call takes means its holder is stuck: fetch our own.
                conn.execute(text(f"SET LOCAL lock_timeout = {self._lock_wait_ms:d}"))
                repo.ensure(conn, self._key, now)
                row = repo.read(conn, self._key, for_update=True)
                token = self._usable(row, now)
                if token is not None:
                    return token  # fetched by the process we waited for
                fetched = fetch()
                version = repo.replace(
                    conn,
                    self._key,
                    sealed_token=self._seal(fetched.value),
                    expires_at=fetched.expires_at,
                    renew_at=fetched.renew_at,
                    expected_version=row.version if row is not None else 0,
                    now=now,
                )
                return replace(fetched, version=version)
        except _DB_ERRORS as exc:
            self._warn("lock", exc)
            return fetched if fetched is not None else fetch()

    def _fetch_and_offer(
        self, now: datetime, fetch: Callable[[], BearerToken], seen_version: int
    ) -> BearerToken:
        fetched = fetch()
        try:
            with self._engine.begin() as conn:
                repo.ensure(conn, self._key, now)
                version = repo.replace(
                    conn,
                    self._key,
                    sealed_token=self._seal(fetched.value),
                    expires_at=fetched.expires_at,
                    renew_at=fetched.renew_at,
                    expected_version=seen_version,
                    now=now,
                )
        except _DB_ERRORS as exc:
            self._warn("write", exc)
            return fetched
        # version None: another process wrote first; both tokens are good, ours stays in this process.
        return replace(fetched, version=version)

    def _usable(self, row: repo.CachedRow | None, now: datetime) -> BearerToken | None:
        if row is None or row.sealed_token is None or row.expires_at is None or row.renew_at is None:
            return None
        if now >= row.renew_at or row.version == self._refused:
            return None
        try:
            value = self._fernet.decrypt(row.sealed_token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            log.warning(
                "cached FlexFactor token does not unseal with this app secret; fetching a new one",
                extra={"base_url": self._key.base_url},
            )
            return None
        return BearerToken(value=value, expires_at=row.expires_at, renew_at=row.renew_at, version=row.version)

    def _seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def _warn(self, step: str, exc: BaseException) -> None:
        # The class only: a driver's text may carry the URL; the call goes on without the cache.
        log.warning(
            "FlexFactor token cache %s failed (%s); fetching without it",
            step,
            type(exc).__name__,
            extra={"base_url": self._key.base_url},
        )


def _fernet(app_secret: str, key: repo.CacheKey) -> Fernet:
    # Bound to the row: a sealed token copied to another credential set's row does not unseal there.
    info = b"v1\0" + key.base_url.encode("utf-8") + b"\0" + key.key_fingerprint.encode("ascii")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(
        app_secret.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


if TYPE_CHECKING:  # mypy proves the cache satisfies the port

    def _implements_port(cache: SealedTokenCache) -> TokenCache:
        return cache
