"""`run`: the nightly jobs (submit, reconcile, report)."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

from recycle_engine.cli.app import (
    EXIT_INCOMPLETE,
    config_option,
    instant,
    main,
    progress_printer,
    reports_errors,
)
from recycle_engine.logs import end_progress


@main.group()
def run() -> None:
    """The nightly jobs: submit, reconcile, report."""


@run.command("submit")
@config_option
@click.option(
    "--at", "at_text", metavar="T", help="Logical time of the run (ISO 8601 with offset); default now."
)
@click.option("--dry-run", is_flag=True, help="Print what the run would do and write nothing.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on this host (above 1: PostgreSQL only). Hosts may run it at once on one book.",
)
@reports_errors
def run_submit_cmd(config_path: Path, at_text: str | None, dry_run: bool, workers: int) -> None:
    """The nightly recycle run: due attempts, FlexFactor hand-offs, queued reruns."""
    from recycle_engine import bootstrap
    from recycle_engine.config import Need
    from recycle_engine.money import Money
    from recycle_engine.services.nightly.overdue import warn_overdue
    from recycle_engine.services.nightly.workers import refuse_workers_on_sqlite

    needs = [] if dry_run else [Need.FLEXFACTOR, Need.NMI]
    try:
        with bootstrap.open_run(config_path, *needs, at=instant(at_text)) as night_run:
            night = night_run.night
            refuse_workers_on_sqlite(night_run.engine, workers)
            warn_overdue(night_run.engine, night=night)
            if workers > 1 and not dry_run:
                log_level = click.get_current_context().find_root().params["log_level"]
                result = night_run.submit_in_workers(workers, log_level=log_level)
            else:
                result = night_run.submit(dry_run=dry_run, progress=progress_printer("submit"))
            failures = (
                [] if dry_run or result.run_id is None else _failure_lines(night_run.engine, result.run_id)
            )
    finally:
        end_progress()
    if dry_run:
        click.echo(f"dry run at {night.at.isoformat()}: nothing was written")
        for (slot, gateway), n in sorted(result.by_slot.items()):
            click.echo(f"  slot {slot:6} gateway {gateway:20} {n:>8,} attempts")
        for (gateway, currency), minor in sorted(result.amounts.items()):
            click.echo(f"  gateway {gateway:20} {Money(minor, currency)}")
        for row in result.preview:
            click.echo("  " + " ".join(f"{k}={v}" for k, v in row.items()))
    click.echo(
        f"submit {result.run_id or '(dry run)'}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    )
    for line in failures:
        click.echo(line)
    _exit_if_unsent("submit", result.run_id, result.counts.get("unsent", 0))


_MAX_REASONS = 10


def _failure_lines(engine: Engine, run_id: str) -> list[str]:
    from recycle_engine.storage.handoff_repo import failure_reasons

    with engine.connect() as conn:
        return failure_lines(failure_reasons(conn, run_id))


_TRACE = re.compile(r" \(trace [^)]*\)")


def failure_lines(reasons: list[tuple[str, str, int]]) -> list[str]:
    """`failed N: <reason>` (and `not sent N: <reason>`) per distinct reason, most frequent first.

    FlexFactor's error text carries a trace id unique to each call; it is left out so that 599 identical
    refusals read as one line, not as ten lines and "589 more with 589 other reasons"."""
    grouped: dict[tuple[str, str], int] = {}
    for state, error, n in reasons:
        key = (state, _TRACE.sub("", error))
        grouped[key] = grouped.get(key, 0) + n
    ranked = sorted(grouped.items(), key=lambda item: (-item[1], item[0][1]))
    lines = [f"{'failed' if state == 'FAILED' else 'not sent'} {n}: {error}" for (state, error), n in ranked]
    if len(lines) > _MAX_REASONS:
        rest = sum(n for _key, n in ranked[_MAX_REASONS:])
        lines = [*lines[:_MAX_REASONS], f"... {rest} more with {len(ranked) - _MAX_REASONS} other reasons"]
    return lines


@run.command("reconcile")
@config_option
@click.option(
    "--at", "at_text", metavar="T", help="Logical time of the run (ISO 8601 with offset); default now."
)
@reports_errors
def run_reconcile_cmd(config_path: Path, at_text: str | None) -> None:
    """Apply received outcomes, poll FlexFactor for hand-offs without one, settle expired windows."""
    from recycle_engine import bootstrap
    from recycle_engine.config import Need

    with bootstrap.open_run(config_path, Need.FLEXFACTOR, at=instant(at_text)) as night_run:
        result = night_run.reconcile()
    click.echo(
        f"reconcile {result.run_id}: " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    )
    _exit_if_unsent("reconcile", result.run_id, result.counts.get("unsent", 0))


def _exit_if_unsent(job: str, run_id: str | None, unsent: int) -> None:
    """A run that left hand-offs unsent (FlexFactor kept answering 429) ends with exit code 3."""
    if unsent:
        click.echo(
            f"incomplete: {job} {run_id} left {unsent} hand-offs unsent (FlexFactor rate limited); "
            "the run is recorded INCOMPLETE with an UNSENT anomaly; run `recycle-engine run reconcile` "
            "later to send them",
            err=True,
        )
        sys.exit(EXIT_INCOMPLETE)


@run.command("report")
@config_option
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="D",
    help="Local date (YYYY-MM-DD) in the settings timezone; default today.",
)
@click.option(
    "--email",
    "send_email",
    is_flag=True,
    help="Also e-mail it as reports.email says, unless day D was e-mailed already.",
)
@reports_errors
def run_report_cmd(config_path: Path, day: datetime | None, send_email: bool) -> None:
    """Render the daily recovery report for day D and print the HTML path."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.smtp_mail import send_message
    from recycle_engine.config import Need
    from recycle_engine.domain.anomalies import Anomaly
    from recycle_engine.errors import ConfigError
    from recycle_engine.services.reporting.report import run_report
    from recycle_engine.services.reporting.report_email import email_report, report_files

    settings = bootstrap.load_settings_file(config_path, *([Need.EMAIL] if send_email else []))
    if send_email and settings.reports.email is None:
        raise ConfigError("reports.email is not set: add it to e-mail the report (README: e-mail)")
    with bootstrap.open_run(settings) as night_run:
        hook = night_run.alert("report")

        def alert(anomaly: Anomaly) -> bool:
            return hook(kind=anomaly.kind.value, reason=anomaly.reason)

        local_day = day.date() if day else night_run.night.today
        result = run_report(
            settings, night_run.engine, day=local_day, night=night_run.night, clock=night_run.clock
        )
        click.echo(str(result.html_path))
        delivery = (
            email_report(
                settings,
                night_run.engine,
                report_files(result),
                send=send_message,
                clock=night_run.clock,
                alert=alert,
            )
            if send_email
            else None
        )
    if delivery is None:
        return
    if delivery.state == "ALREADY_SENT":
        click.echo(f"e-mail: the report of {local_day} was e-mailed already; nothing sent")
    elif delivery.state == "SENT":
        refused = f" (refused: {', '.join(delivery.refused)})" if delivery.refused else ""
        click.echo(f"e-mail: sent on try {delivery.attempts}{refused}")
    else:
        click.echo(f"error: e-mail not sent after {delivery.attempts} tries: {delivery.error}", err=True)
        sys.exit(1)
