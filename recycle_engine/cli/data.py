"""`import` and `export`: feeds in, submissions and changes out."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from recycle_engine.cli.app import (
    config_option,
    instant,
    local_midnight,
    main,
    reports_errors,
)

# --- import ------------------------------------------------------------------------------------


@main.group("import")
def import_group() -> None:
    """Load feeds from the CRM."""


@import_group.command("declines")
@click.argument("feed", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path))
@config_option
@reports_errors
def import_declines_cmd(feed: Path, config_path: Path) -> None:
    """Load a declines feed (columns: docs/spec.md section 5) and start recycling its soft-declined rebills.

    Rows already imported (same transaction_id) change nothing. Rejected rows go to FILE.rejects.csv
    beside the feed, with their line number and reason.

    Exit code 0 even when some rows are rejected; non-zero only when the file cannot be read, its
    header lacks a column, or the database fails.
    """
    from recycle_engine import bootstrap
    from recycle_engine.services.intake.import_declines import import_declines

    settings = bootstrap.load_settings_file(config_path)
    with bootstrap.open_app(settings) as app:
        result = import_declines(feed, settings=settings, engine=app.engine, clock=app.clock)
    click.echo(
        f"accepted {result.accepted}, rejected {result.rejected}, "
        f"duplicates {result.duplicates} (already imported)"
    )
    click.echo(f"rejects: {result.rejects_path}")


# --- export ------------------------------------------------------------------------------------


def _export_to(out: Path | None, write: Callable[[Any], int]) -> int:
    """Run `write(stream)` on stdout, or on a temporary file renamed to `out` once complete."""
    if out is None:
        return write(sys.stdout)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as stream:
            count = write(stream)
        partial.replace(out)  # readers never see half a file
    finally:
        partial.unlink(missing_ok=True)
    return count


_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True
)
_OUT = click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default stdout)."
)


@main.group("export")
def export_group() -> None:
    """Exports: hand-offs, and changes for the CRM."""


@export_group.command("submissions")
@config_option
@_FORMAT
@_OUT
@reports_errors
def export_submissions_cmd(config_path: Path, fmt: str, out: Path | None) -> None:
    """Every FlexFactor hand-off and its state (columns: docs/spec.md section 6), oldest first."""
    from recycle_engine import bootstrap
    from recycle_engine.services.export import ExportFormat, export_submissions

    with bootstrap.open_app(config_path) as app:
        count = _export_to(out, lambda s: export_submissions(app.engine, s, ExportFormat(fmt)))
    click.echo(f"exported {count} submissions" + (f" to {out}" if out else ""), err=True)


@export_group.command("changes")
@config_option
@click.option(
    "--since",
    "since_text",
    required=True,
    metavar="T",
    help="ISO 8601 time with offset, or a date (its midnight in the settings' timezone); inclusive.",
)
@click.option("--after-id", type=click.IntRange(min=0), default=None, help="Only ids above this cursor.")
@_FORMAT
@_OUT
@reports_errors
def export_changes_cmd(
    config_path: Path, since_text: str, after_id: int | None, fmt: str, out: Path | None
) -> None:
    """Order and subscription changes since T, in id order (the CRM outbox).

    `id` is a growing sequence number: keep the highest one applied and pass it as --after-id, or
    re-read with an earlier --since and skip ids already applied (rows never change)."""
    from recycle_engine import bootstrap
    from recycle_engine.services.export import ExportFormat, export_changes

    settings = bootstrap.load_settings_file(config_path)
    since = local_midnight(since_text, settings.timezone) or instant(since_text)
    assert since is not None
    with bootstrap.open_app(settings) as app:
        count = _export_to(
            out,
            lambda s: export_changes(app.engine, s, since=since, after_id=after_id, fmt=ExportFormat(fmt)),
        )
    click.echo(f"exported {count} changes" + (f" to {out}" if out else ""), err=True)
