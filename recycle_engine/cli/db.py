"""`db` and `config`: the schema and the settings."""

from __future__ import annotations

import sys
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
    from recycle_engine.bootstrap import open_run
    from recycle_engine.services.reporting.rollups import refresh_rollups

    with open_run(config_path) as run:
        result = refresh_rollups(run.engine, run.settings.timezone, now=run.night.at, rebuild=True)
    click.echo(f"rebuilt the report rollups: {result.days:,} local days in {result.seconds:.1f} s")


@main.group("config")
def config_group() -> None:
    """Check settings.yaml."""


@config_group.command("check")
@config_option
@click.option(
    "--sample-price",
    default="49.99",
    show_default=True,
    metavar="AMOUNT",
    help="The price each ladder is shown for, in major units.",
)
@click.option("--currency", default="USD", show_default=True, help="ISO 4217 currency of --sample-price.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one document on stdout (schema in the README), also for settings with problems.",
)
@click.option(
    "--no-database",
    is_flag=True,
    help="Do not read the database for the versions in-flight subscriptions follow.",
)
@reports_errors
def config_check_cmd(
    config_path: Path, sample_price: str, currency: str, output_format: str, no_database: bool
) -> None:
    """Load the settings and show each recycle ladder, or every problem (exit 2).

    For each recycle profile: per attempt, the day after the decline it runs, what it charges for
    --sample-price (reductions and the minimum price applied) and where (the declining gateway, another
    gateway, or FlexFactor); the versions in-flight subscriptions follow and how they differ; warnings
    for settings that are valid but surely not meant (exit 0).

    Works without the production secrets: a credential whose variable is missing is listed with the
    commands that need it."""
    import json

    from recycle_engine.bootstrap import tonight
    from recycle_engine.config import describe_settings, key_lines, load_settings
    from recycle_engine.errors import ConfigError
    from recycle_engine.money import Money, is_known_currency, parse_minor
    from recycle_engine.services.ladder.config_check_output import problems_json, review_json, review_lines
    from recycle_engine.services.ladder.config_review import review_settings

    code = currency.strip().upper()
    if not is_known_currency(code):
        raise click.BadParameter(f"unknown currency {currency!r}", param_hint="--currency")
    try:
        sample = Money(parse_minor(sample_price, code), code)
    except ValueError as exc:
        raise click.BadParameter(f"{sample_price!r}: {exc}", param_hint="--sample-price") from None
    try:
        settings = load_settings(config_path, needs=())
    except ConfigError as exc:
        if output_format != "json":
            raise
        click.echo(json.dumps(problems_json(exc.source, exc.problems), indent=2))
        sys.exit(2)
    review = review_settings(
        settings,
        sample=sample,
        decline_on=tonight(settings).today,
        read_database=not no_database,
        line_of=key_lines(config_path),
    )
    if output_format == "json":
        click.echo(json.dumps(review_json(settings, review), indent=2))
        return
    for line in describe_settings(settings):
        click.echo(line)
    for line in review_lines(review):
        click.echo(line)
    warned = sum(len(item.warnings) for item in review.profiles)
    click.echo(
        f"settings are valid{f' ({warned} warning' + ('s' if warned != 1 else '') + ')' if warned else ''}"
    )
