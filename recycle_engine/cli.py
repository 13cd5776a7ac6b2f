"""The `recycle-engine` command line (SPEC section 4): parse, load settings, call a service, exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from recycle_engine.errors import ConfigError, RecycleEngineError
from recycle_engine.logs import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "settings.yaml"


def config_option(func: F) -> F:
    """`--config PATH` on every command (default ./settings.yaml or $RECYCLE_ENGINE_CONFIG)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=lambda: os.environ.get("RECYCLE_ENGINE_CONFIG", DEFAULT_CONFIG),
        show_default="./settings.yaml or $RECYCLE_ENGINE_CONFIG",
        help="Settings file.",
    )(func)


def reports_errors(func: F) -> F:
    """Turn engine errors into a non-zero exit with the reason on stderr (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except RecycleEngineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recycle-engine")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def main(log_level: str) -> None:
    """Recycle declined subscription payments, with FlexFactor decline salvage."""
    configure_logging(log_level.upper())


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


# --- run ---------------------------------------------------------------------------------------


def _instant(value: str | None) -> datetime | None:
    """Parse an ISO 8601 instant with offset (`--at`); a bare time is refused rather than guessed."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-06-12T02:00:00-04:00"
        ) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no UTC offset; add one, e.g. {value}+00:00")
    return parsed


def _progress_printer(label: str) -> Callable[[str, int], None] | None:
    """A one-line progress display on a terminal; None when logs go to a file or journal."""
    if not sys.stderr.isatty():
        return None

    def show(stage: str, count: int) -> None:
        click.echo(f"\r{label}: {stage} {count:,}   ", err=True, nl=False)

    return show


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
    from recycle_engine.adapters.clock import LogicalClock, SystemClock
    from recycle_engine.money import Money
    from recycle_engine.services.submit import run_submit
    from recycle_engine.services.workers import refuse_workers_on_sqlite, run_submit_workers

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    at = _instant(at_text) or clock.now()
    app = bootstrap.build_app(settings, clock)
    try:
        refuse_workers_on_sqlite(app.engine, workers)
        if workers > 1 and not dry_run:
            log_level = click.get_current_context().find_root().params["log_level"]
            result = run_submit_workers(
                settings, app.engine, workers=workers, at=at, clock=clock, log_level=log_level
            )
        else:
            result = run_submit(
                settings,
                app.engine,
                {} if dry_run else bootstrap.flexfactor_clients(settings, LogicalClock(at)),
                bootstrap.processors(settings),
                at=at,
                now=clock.now(),
                dry_run=dry_run,
                progress=_progress_printer("submit"),
            )
    finally:
        app.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    if dry_run:
        click.echo(f"dry run at {at.isoformat()}: nothing was written")
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


@main.group("config")
def config_group() -> None:
    """Check settings.yaml."""


@config_group.command("check")
@config_option
@reports_errors
def config_check_cmd(config_path: Path) -> None:
    """Load the settings and print a short summary, or every problem (exit 2)."""
    from recycle_engine.config import describe_settings, load_settings

    for line in describe_settings(load_settings(config_path)):
        click.echo(line)
    click.echo("settings are valid")


# --- sandbox -----------------------------------------------------------------------------------


def _sandbox_defaults() -> Any:
    # Only the config module: uvicorn and starlette load when the command runs, not for every command.
    from recycle_engine.sandbox.state import SandboxConfig

    return SandboxConfig()


_SANDBOX = _sandbox_defaults()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback).")
@click.option(
    "--port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port; 0 picks a free one.",
)
@click.option("--webhook-url", default=None, help="Where signed webhooks are POSTed (none: kept pending).")
@click.option("--app-key", default=_SANDBOX.app_key, show_default=True, help="AppKey the token call accepts.")
@click.option("--app-secret", default=_SANDBOX.app_secret, show_default=True, help="AppSecret it accepts.")
@click.option("--mid", default=_SANDBOX.mid, show_default=True, help="The merchant id /evaluate accepts.")
@click.option("--site-id", default=_SANDBOX.site_id, show_default=True, help="The site id of that merchant.")
@click.option(
    "--signing-key",
    default=_SANDBOX.hmac_signing_key_b64,
    show_default="the sandbox test key",
    help="Base64 HMAC key that signs webhooks.",
)
@click.option(
    "--latency-ms",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Added delay on every /v1 call.",
)
def sandbox(
    host: str,
    port: int,
    webhook_url: str | None,
    app_key: str,
    app_secret: str,
    mid: str,
    site_id: str,
    signing_key: str,
    latency_ms: int,
) -> None:
    """Run the bundled FlexFactor sandbox in the foreground until SIGINT or SIGTERM.

    Prints its base URL (…/v1) on the first line; the admin API is under /_sandbox.
    """
    from dataclasses import replace

    from recycle_engine.sandbox.server import serve_forever

    config = replace(
        _SANDBOX,
        app_key=app_key,
        app_secret=app_secret,
        mid=mid,
        site_id=site_id,
        hmac_signing_key_b64=signing_key,
        webhook_url=webhook_url,
    )

    def announce(base_url: str, admin_url: str) -> None:
        click.echo(base_url)
        click.echo(f"FlexFactor sandbox ready; admin API at {admin_url}; Ctrl-C stops it.", err=True)

    serve_forever(config, host, port, latency_ms=latency_ms, on_ready=announce)


@run.command("reconcile")
@config_option
@click.option(
    "--at", "at_text", metavar="T", help="Logical time of the run (ISO 8601 with offset); default now."
)
@reports_errors
def run_reconcile_cmd(config_path: Path, at_text: str | None) -> None:
    """Apply received outcomes, poll FlexFactor for hand-offs without one, settle expired windows."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import LogicalClock, SystemClock
    from recycle_engine.services.reconcile import run_reconcile

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    at = _instant(at_text) or clock.now()
    app = bootstrap.build_app(settings, clock)
    try:
        result = run_reconcile(
            settings,
            app.engine,
            bootstrap.flexfactor_clients(settings, LogicalClock(at)),
            at=at,
            now=clock.now(),
        )
    finally:
        app.close()
    click.echo(
        f"reconcile {result.run_id}: " + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
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
    """Load a declines feed (SPEC section 5) and start recycling its soft-declined rebills.

    Rows already imported (same transaction_id) change nothing. Rejected rows go to FILE.rejects.csv
    beside the feed, with their line number and reason.

    Exit code 0 even when some rows are rejected; non-zero only when the file cannot be read, its
    header lacks a column, or the database fails.
    """
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.import_declines import import_declines

    settings = bootstrap.load_settings_file(config_path)
    app = bootstrap.build_app(settings, SystemClock())
    try:
        result = import_declines(feed, settings=settings, engine=app.engine, clock=app.clock)
    finally:
        app.close()
    click.echo(
        f"accepted {result.accepted}, rejected {result.rejected}, "
        f"duplicates {result.duplicates} (already imported)"
    )
    click.echo(f"rejects: {result.rejects_path}")


# --- serve -------------------------------------------------------------------------------------


@main.command("serve")
@config_option
@click.option("--host", default=None, help="Address to bind (default serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default serve.port).")
@reports_errors
def serve_cmd(config_path: Path, host: str | None, port: int | None) -> None:
    """HTTP service: POST /webhooks/flexfactor/{gateway_id} and GET /healthz, until SIGTERM."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.adapters.webhook_app import OnAccepted, create_app, serve

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    app = bootstrap.build_app(settings, clock)
    on_accepted: OnAccepted | None = None
    try:
        from recycle_engine.services.outcomes import apply_outcomes
    except ImportError:  # reconcile applies outcomes when this service cannot
        pass
    else:

        def on_accepted(ids: list[str]) -> None:
            apply_outcomes(settings, app.engine, now=clock.now(), handoff_ids=ids)

    try:
        serve(
            create_app(settings, app.engine, clock, on_accepted=on_accepted),
            host=host or settings.serve.host,
            port=port or settings.serve.port,
        )
    finally:
        app.close()


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
    """Every FlexFactor hand-off and its state (SPEC section 6), oldest first."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.export import ExportFormat, export_submissions

    app = bootstrap.build_app(bootstrap.load_settings_file(config_path), SystemClock())
    try:
        count = _export_to(out, lambda s: export_submissions(app.engine, s, ExportFormat(fmt)))
    finally:
        app.close()
    click.echo(f"exported {count} submissions" + (f" to {out}" if out else ""), err=True)


@export_group.command("changes")
@config_option
@click.option("--since", "since_text", required=True, metavar="T", help="ISO 8601 with offset; inclusive.")
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
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.export import ExportFormat, export_changes

    since = _instant(since_text)
    assert since is not None
    app = bootstrap.build_app(bootstrap.load_settings_file(config_path), SystemClock())
    try:
        count = _export_to(
            out,
            lambda s: export_changes(app.engine, s, since=since, after_id=after_id, fmt=ExportFormat(fmt)),
        )
    finally:
        app.close()
    click.echo(f"exported {count} changes" + (f" to {out}" if out else ""), err=True)


# --- demo --------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-work"),
    show_default=True,
    help="Folder for the demo's database, feeds and reports (emptied first).",
)
@click.option("--subscriptions", type=click.IntRange(10, 200_000), default=3000, show_default=True)
@click.option("--nights", type=click.IntRange(1, 120), default=30, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same book, same results.")
@reports_errors
def demo(config_path: Path, workdir: Path, subscriptions: int, nights: int, seed: int) -> None:
    """The whole product end to end on a generated book, with SQLite and the bundled sandbox.

    Uses the ladders, gateways and campaigns of --config; FlexFactor calls go to a local sandbox and
    its signed webhooks to a local webhook service, both stopped when the demo ends. Prints the report path."""
    from recycle_engine.services.demo import DemoOptions, format_summary, run_demo

    if not config_path.exists():
        raise click.UsageError(f"settings file {config_path} not found; pass --config PATH")
    options = DemoOptions(
        settings_path=config_path.resolve(),
        workdir=workdir.resolve(),
        subscriptions=subscriptions,
        nights=nights,
        seed=seed,
    )
    result = run_demo(options, progress=lambda line: click.echo(line, err=True))
    for line in format_summary(result):
        click.echo(line)


@run.command("report")
@config_option
@click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="D",
    help="Local date (YYYY-MM-DD) in the settings timezone; default today.",
)
@reports_errors
def run_report_cmd(config_path: Path, day: datetime | None) -> None:
    """Render the daily recovery report for day D and print the HTML path."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.report import run_report

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    now = clock.now()
    app = bootstrap.build_app(settings, clock)
    try:
        local_day = day.date() if day else now.astimezone(settings.timezone).date()
        result = run_report(settings, app.engine, day=local_day, now=now)
    finally:
        app.close()
    click.echo(str(result.html_path))


# --- scheduler and status ----------------------------------------------------------------------


@main.command("scheduler")
@config_option
@reports_errors
def scheduler_cmd(config_path: Path) -> None:
    """Run the jobs of settings.yaml on their crons until SIGTERM or SIGINT, then exit 0.

    One scheduler per database is active; others wait as standbys and take over once its lease
    expires ($RECYCLE_ENGINE_SCHEDULER_LEASE_SECONDS, default 60). On a stop signal the running
    job finishes first."""
    from jobs.schedule import serve

    serve(config_path)


@main.command("status")
@config_option
@reports_errors
def status_cmd(config_path: Path) -> None:
    """Last job runs, pending hand-offs by age, next scheduled runs and which scheduler is active."""
    from sqlalchemy.exc import SQLAlchemyError

    from jobs.schedule import next_fire_times
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.status import gather_status, render_status

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    now = clock.now()
    app = bootstrap.build_app(settings, clock)
    try:
        status = gather_status(
            app.engine,
            now=now,
            crons={name: job.cron for name, job in settings.jobs.items()},
            next_fire_times=next_fire_times(settings, now),
        )
    except SQLAlchemyError as exc:
        click.echo(f"error: cannot read the database ({type(exc).__name__}); try `db upgrade`", err=True)
        sys.exit(1)
    finally:
        app.close()
    for line in render_status(status, settings.timezone):
        click.echo(line)


# --- rerun and cascade -------------------------------------------------------------------------


def _order_ids(order_ids: tuple[str, ...], from_file: Path | None) -> list[str]:
    """ORDER_ID arguments plus one id per line of --from-file (blank lines and # comments skipped),
    each once, in order."""
    ids = list(order_ids)
    if from_file is not None:
        try:
            lines = from_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {from_file}: {exc}", param_hint="--from-file") from None
        ids += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise click.UsageError("give at least one ORDER_ID, or --from-file F")
    return list(dict.fromkeys(ids))


@main.command("rerun")
@click.argument("order_ids", nargs=-1, metavar="ORDER_ID...")
@click.option(
    "--gateway", "gateway_id", required=True, metavar="G", help="FlexFactor gateway id, named directly."
)
@click.option("--now", "send_now", is_flag=True, help="Send at once instead of with the next `run submit`.")
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="More order ids, one per line.",
)
@config_option
@reports_errors
def rerun_cmd(
    order_ids: tuple[str, ...], gateway_id: str, send_now: bool, from_file: Path | None, config_path: Path
) -> None:
    """Rerun declined initial sales on FlexFactor gateway G (domain.md section 9).

    Each eligible order gets a RERUN hand-off, queued for the next `run submit` or, with --now, sent
    at once and its answer applied. A refused order changes nothing; each refusal is printed on
    stderr with its reason, and the exit code is 1 if any order was refused."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.rerun import rerun_orders

    ids = _order_ids(order_ids, from_file)
    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    app = bootstrap.build_app(settings, clock)
    try:
        clients = bootstrap.flexfactor_clients(settings, clock) if send_now else {}
        report = rerun_orders(
            settings, app.engine, clients, ids, gateway_id=gateway_id, now=clock.now(), send_now=send_now
        )
    finally:
        app.close()
    for result in report.results:
        if result.refusal is not None:
            click.echo(f"refused {result.order_id}: {result.refusal.code}: {result.refusal.reason}", err=True)
            continue
        view = result.view
        if view is None or not view.was_sent:
            line = f"queued {result.order_id}: hand-off {result.handoff_id}, sent by the next `run submit`"
        else:
            line = f"sent {result.order_id}: hand-off {view.handoff_id} {view.state}"
            line += f" ({view.vendor_status})" if view.vendor_status not in (None, view.state) else ""
            line += f"; order {view.order_status}"
            if view.has_payment_token is False:
                line += ", has_payment_token false"
            if view.state == "PENDING":
                line += "; answer lost, reconcile will settle it"
            elif view.last_error:
                line += f"; {view.last_error}"
        click.echo(line)
        if result.recurring_product and (view is None or view.state in ("PENDING", "SUBMITTED")):
            click.echo("  note: a FlexFactor recovery leaves no payment token for this order's rebills")
    click.echo(f"rerun: queued {report.queued}, sent {report.sent}, refused {report.refused}")
    if report.refused:
        sys.exit(1)


@main.command("cascade")
@click.argument("order_id", metavar="ORDER_ID")
@config_option
@reports_errors
def cascade_cmd(order_id: str, config_path: Path) -> None:
    """Real-time cascade of a declined initial sale to FlexFactor; prints approved, declined or unknown.

    Exit code 1, with the reason on stderr, when the order is unknown or may not cascade."""
    from recycle_engine import bootstrap
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.cascade import cascade_order
    from recycle_engine.services.new_sales import Refused

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    app = bootstrap.build_app(settings, clock)
    try:
        outcome = cascade_order(
            settings, app.engine, bootstrap.flexfactor_clients(settings, clock), order_id, now=clock.now()
        )
    finally:
        app.close()
    if isinstance(outcome, Refused):
        click.echo(f"refused {order_id}: {outcome.code}: {outcome.reason}", err=True)
        sys.exit(1)
    click.echo(f"{outcome.result.value} {order_id}: hand-off {outcome.handoff_id}")
    if outcome.reason:
        click.echo(f"  {outcome.reason}")


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
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.ladder_versions import format_versions, list_versions

    settings = bootstrap.load_settings_file(config_path)
    app = bootstrap.build_app(settings, SystemClock())
    try:
        versions = list_versions(settings, app.engine)
    finally:
        app.close()
    for line in format_versions(settings, versions):
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
    from recycle_engine.adapters.clock import SystemClock
    from recycle_engine.services.ladder_versions import migrate_profile

    settings = bootstrap.load_settings_file(config_path)
    clock = SystemClock()
    app = bootstrap.build_app(settings, clock)
    try:
        result = migrate_profile(settings, app.engine, profile_id=profile_id, now=clock.now())
    finally:
        app.close()
    click.echo(
        f"ladder migrate {result.profile_id}: version {result.version}; moved {result.moved}, "
        f"rescheduled {result.rescheduled}, waiting on FlexFactor {result.waiting}, "
        f"ended (no attempt left) {result.ended}"
    )
