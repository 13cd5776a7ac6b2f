"""`ladder`: recycle profile versions and moving in-flight subscriptions between them."""

from __future__ import annotations

from pathlib import Path

import click

from recycle_engine.cli.app import (
    config_option,
    main,
    reports_errors,
)

# --- ladder versions -----------------------------------------------------------------------------


@main.group()
def ladder() -> None:
    """Recycle schedule versions: which ladder in-flight subscriptions follow."""


@ladder.command("versions")
@config_option
@reports_errors
def ladder_versions_cmd(config_path: Path) -> None:
    """List each recycle profile's recorded versions and how many subscriptions follow each now.

    A subscription follows the version it entered with; editing settings.yaml changes new entrants only."""
    from recycle_engine import bootstrap
    from recycle_engine.services.ladder.ladder_versions import format_versions, list_versions

    with bootstrap.open_app(config_path) as app:
        versions = list_versions(app.settings, app.engine)
    for line in format_versions(app.settings, versions):
        click.echo(line)


@ladder.command("migrate")
@click.option(
    "--profile", "profile_id", required=True, metavar="P", help="Recycle profile id in settings.yaml."
)
@config_option
@reports_errors
def ladder_migrate_cmd(profile_id: str, config_path: Path) -> None:
    """Move every in-flight subscription of profile P to the ladder settings.yaml describes now.

    Each keeps the attempts it has run; its next attempt is recomputed from there, and a change row
    (reason LADDER_MIGRATED) records the move. Prints the counts."""
    from recycle_engine import bootstrap
    from recycle_engine.services.ladder.ladder_versions import migrate_profile

    with bootstrap.open_run(config_path) as run:
        result = migrate_profile(run.settings, run.engine, profile_id=profile_id, now=run.night.at)
    click.echo(
        f"ladder migrate {result.profile_id}: version {result.version}; moved {result.moved}, "
        f"rescheduled {result.rescheduled}, waiting on FlexFactor {result.waiting}, "
        f"ended (no attempt left) {result.ended}"
    )
