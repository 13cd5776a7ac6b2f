"""Fresh PostgreSQL test databases from a migrated template: copied once, then wiped for reuse.

Creating a database from the template costs PostgreSQL a few tenths of a second and dropping one a
checkpoint, seconds on a busy machine. So a database a test gives back is wiped instead (its rows
deleted, its sequences restarted) and handed to a later test, but only if its schema still matches
a fresh copy's exactly; one a test changed (a downgrade, a trigger of its own) is dropped. No thread
does this work: the product forks only in a single-threaded process, and tests see that path.
"""

from __future__ import annotations

import uuid

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


class PgDatabases:
    """Databases copied from `template` on the server of `admin_dsn`: take() one, give_back() it."""

    def __init__(self, admin_dsn: str, template: str) -> None:
        self._admin_dsn, self._template = admin_dsn, template
        self._digest: str | None = None  # a fresh copy's, set by the first one made
        self._spares: list[str] = []

    def take(self) -> str:
        """The name of a database as fresh as a new copy of the template, for one test's use."""
        return self._spares.pop() if self._spares else self._create()

    def give_back(self, name: str) -> None:
        """`name` is done with: wiped for reuse, or dropped if its schema changed."""
        if self._wiped(name):
            self._spares.append(name)
        else:
            self._drop(name)

    def close(self) -> None:
        """Drops the databases given back."""
        while self._spares:
            self._drop(self._spares.pop())

    def _create(self) -> str:
        name = f"re_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
            # A test database need not outlive a crash of the server: commits skip the WAL flush wait.
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        if self._digest is None:
            with psycopg.connect(make_conninfo(self._admin_dsn, dbname=name)) as conn:
                self._digest = _digest(conn)
        return name

    def _wiped(self, name: str) -> bool:
        """Whether `name` is back to a fresh copy's state (False: its schema changed, drop it)."""
        with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            # A connection the test left open could hold locks the wipe would wait for.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        try:
            with psycopg.connect(make_conninfo(self._admin_dsn, dbname=name)) as conn:
                if _digest(conn) != self._digest:
                    return False
                wipe = conn.execute(WIPE).fetchone()
                assert wipe is not None
                conn.execute(wipe[0])
        except psycopg.errors.UndefinedTable:  # e.g. a test dropped alembic_version
            return False
        return True

    def _drop(self, name: str) -> None:
        with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _digest(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute(SCHEMA_DIGEST).fetchone()
    assert row is not None
    return str(row[0])
