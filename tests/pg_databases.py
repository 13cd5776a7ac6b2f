"""Fresh PostgreSQL test databases from a migrated template, made ahead and wiped for reuse in a thread.

Creating a database from the template costs PostgreSQL a few tenths of a second and dropping one a
checkpoint, seconds on a busy machine. So a database a test gives back is wiped instead (its rows
deleted, its sequences restarted) and handed to a later test, but only if its schema still matches
a fresh copy's exactly; one a test changed (a downgrade, a trigger of its own) is dropped. The work
runs in a thread of its own, so it overlaps the tests instead of adding to each.
"""

from __future__ import annotations

import itertools
import queue
import threading
import uuid
from collections.abc import Callable
from functools import partial

import psycopg
from psycopg.conninfo import make_conninfo

__all__ = ["PgDatabases"]

_SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_t%'"

# Everything a test could change in a database but its rows: relations, columns and defaults,
# indexes, constraints, triggers, functions, views, sequences, schemas, extensions, types, the
# database's own settings, and the migration it is at.
SCHEMA_DIGEST = f"""
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
  SELECT format('rel %s.%s %s %s %s', n.nspname, c.relname, c.relkind, c.reloptions, c.relacl) AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_SYSTEM}
  UNION ALL
  SELECT format('col %s %s %s %s %s %s', a.attrelid::regclass, a.attnum, a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped AND {_SYSTEM}
  UNION ALL
  SELECT format('idx %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {_SYSTEM}
  UNION ALL
  SELECT format('con %s %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE {_SYSTEM}
  UNION ALL
  SELECT format('trg %s %s', pg_get_triggerdef(oid), tgenabled) FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT format('fn %s %s', p.oid::regprocedure, md5(pg_get_functiondef(p.oid)))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_SYSTEM} AND p.prokind IN ('f', 'p')
  UNION ALL
  SELECT format('view %s %s', c.oid::regclass, md5(pg_get_viewdef(c.oid)))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {_SYSTEM}
  UNION ALL
  SELECT format('seq %s %s %s %s %s', seqrelid::regclass, seqtypid, seqstart, seqincrement, seqcycle)
    FROM pg_sequence
  UNION ALL
  SELECT format('ns %s %s', n.nspname, n.nspacl) FROM pg_namespace n
    WHERE n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
  UNION ALL
  SELECT format('ext %s %s', extname, extversion) FROM pg_extension
  UNION ALL
  SELECT format('type %s %s', t.oid::regtype, t.typtype)
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {_SYSTEM}
  UNION ALL
  SELECT format('enum %s %s %s', enumtypid::regtype, enumsortorder, enumlabel) FROM pg_enum
  UNION ALL
  SELECT format('set %s', array_to_string(setconfig, ',')) FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL
  SELECT format('migration %s', version_num) FROM alembic_version
) AS schema_items
"""

# Rows go without firing triggers or checking foreign keys (session_replication_role = replica), so
# no order is needed; the migration's own row stays.
WIPE = """
SELECT 'SET LOCAL session_replication_role = replica; '
    || coalesce(string_agg(format('DELETE FROM %I.%I', schemaname, tablename), '; '), '') || '; '
    || coalesce((SELECT string_agg(format('ALTER SEQUENCE %s RESTART', seqrelid::regclass), '; ')
                 FROM pg_sequence), '')
  FROM pg_tables
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename <> 'alembic_version'
"""

_RESET, _CREATE, _DROP, _STOP = 0, 1, 2, 3


class PgDatabases:
    """Databases copied from `template` on the server of `admin_dsn`: take() one, give_back() it."""

    def __init__(self, admin_dsn: str, template: str) -> None:
        self._admin_dsn, self._template = admin_dsn, template
        self._digest: str | None = None  # a fresh copy's, set by the first one made
        # Wiping comes first, then creating (a test may be waiting for either); dropping fills gaps.
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], None] | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._work, name="pg-test-databases", daemon=True)
        self._thread.start()
        self._put(_CREATE, self._create)

    def take(self) -> str:
        """The name of a database as fresh as a new copy of the template, for one test's use."""
        try:
            made = self._ready.get_nowait()
        except queue.Empty:
            self._put(_CREATE, self._create)
            made = self._ready.get(timeout=300)
        if isinstance(made, BaseException):
            raise made
        return made

    def give_back(self, name: str) -> None:
        """`name` is done with: wiped for reuse, or dropped if its schema changed."""
        self._put(_RESET, partial(self._reset, name))

    def close(self) -> None:
        """Drops every database, once the jobs queued are done; raises what a wipe or drop raised."""
        self._put(_STOP, None)
        self._thread.join(timeout=600)
        while not self._ready.empty():
            spare = self._ready.get()
            if isinstance(spare, str):
                self._drop(spare)
        if self._errors:
            raise self._errors[0]

    def _work(self) -> None:
        while (job := self._jobs.get()[2]) is not None:
            job()

    def _put(self, priority: int, job: Callable[[], None] | None) -> None:
        self._jobs.put((priority, next(self._order), job))

    def _create(self) -> None:
        name = f"re_test_{uuid.uuid4().hex[:12]}"
        try:
            with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
                # A test database need not outlive a crash of the server: commits skip the WAL flush wait.
                conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            if self._digest is None:
                with psycopg.connect(make_conninfo(self._admin_dsn, dbname=name)) as conn:
                    self._digest = _digest(conn)
        except BaseException as exc:  # handed to the test that takes this copy
            self._ready.put(exc)
        else:
            self._ready.put(name)

    def _reset(self, name: str) -> None:
        try:
            with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
                # A connection the test left open could hold locks the wipe would wait for.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            with psycopg.connect(make_conninfo(self._admin_dsn, dbname=name)) as conn:
                if _digest(conn) != self._digest:
                    reusable = False
                else:
                    wipe = conn.execute(WIPE).fetchone()
                    assert wipe is not None
                    conn.execute(wipe[0])
                    reusable = True
        except psycopg.Error:
            reusable = False  # e.g. a test dropped alembic_version: not worth saving
        if reusable:
            self._ready.put(name)
        else:
            self._put(_DROP, partial(self._drop, name))

    def _drop(self, name: str) -> None:
        try:
            with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            self._errors.append(exc)


def _digest(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute(SCHEMA_DIGEST).fetchone()
    assert row is not None
    return str(row[0])
