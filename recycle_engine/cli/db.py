"""`db` and `config`: the schema and the settings."""

from __future__ import annotations

from pathlib import Path

import click

from recycle_engine.cli.app import (
    config_option,
    main,
    reports_errors,
)

# --- db ----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True, help="Alembic revision to migrate to.")
@reports_errors
def db_upgrade(config_path: Path, revision: str) -> None:
    """Create or migrate the schema of the configured database."""
    from recycle_engine.bootstrap import load_settings_file
    from recycle_engine.storage.db import upgrade

    settings = load_settings_file(config_path)
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}")


@db.command("rebuild-rollups")
@config_option
@reports_errors
def db_rebuild_rollups(config_path: Path) -> None:
    """Rebuild the report's daily rollups from every hand-off.

    Runs and the report keep the rollups current on their own: each recomputes the local days whose
    hand-offs changed. Rebuild after a restore from backup, or to build them at once after `db
    upgrade` on a large history rather than in the first run; a change of `timezone` rebuilds them by
    itself. On SQLite the rebuild holds the write lock while it runs."""
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.bootstrap import load_settings_file
    from recycle_engine.services.rollups import refresh_rollups
    from recycle_engine.storage.db import make_engine

    settings = load_settings_file(config_path)
    engine = make_engine(settings.database_url)
    try:
        result = refresh_rollups(engine, settings.timezone, now=SystemClock().now(), rebuild=True)
    finally:
        engine.dispose()
    click.echo(f"rebuilt the report rollups: {result.days:,} local days in {result.seconds:.1f} s")


@main.group("config")
def config_group() -> None:
    """Check settings.yaml."""


@config_group.command("check")
@config_option
@reports_errors
def config_check_cmd(config_path: Path) -> None:
    """Load the settings and print a short summary, or every problem (exit 2).

    Works without the production secrets: a credential whose variable is missing is listed with the
    commands that need it."""
    from recycle_engine.config import describe_settings, load_settings

    for line in describe_settings(load_settings(config_path, needs=())):
        click.echo(line)
    click.echo("settings are valid")
