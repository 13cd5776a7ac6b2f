"""The long-running and local commands: `serve`, `scheduler`, `status`, `sandbox` and `demo`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from recycle_engine.cli.app import (
    config_option,
    latency_option,
    main,
    reports_errors,
)

# --- serve -------------------------------------------------------------------------------------


@main.command("serve")
@config_option
@click.option("--host", default=None, help="Address to bind (default serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default serve.port).")
@reports_errors
def serve_cmd(config_path: Path, host: str | None, port: int | None) -> None:
    """HTTP service: POST /webhooks/flexfactor/{gateway_id} and GET /healthz, until SIGTERM."""
    from recycle_engine import bootstrap
    from recycle_engine.config import Need
    from recycle_engine.web.webhook_app import OnAccepted, create_app, serve

    settings = bootstrap.load_settings_file(config_path, Need.WEBHOOKS, Need.CASCADE)
    # POST /cascade calls FlexFactor
    needs = [Need.FLEXFACTOR] if settings.serve.api_key else []
    with bootstrap.open_app(settings, *needs) as app:
        clock = app.clock
        on_accepted: OnAccepted | None = None
        try:
            from recycle_engine.services.outcomes.applying import apply_outcomes
        except ImportError:  # reconcile applies outcomes when this service cannot
            pass
        else:

            def on_accepted(ids: list[str]) -> None:
                apply_outcomes(settings, app.engine, now=clock.now(), handoff_ids=ids)

        serve(
            create_app(settings, app.engine, clock, on_accepted=on_accepted),
            host=host or settings.serve.host,
            port=port or settings.serve.port,
        )


# --- scheduler and status ----------------------------------------------------------------------


@main.command("scheduler")
@config_option
@reports_errors
def scheduler_cmd(config_path: Path) -> None:
    """Run the jobs of settings.yaml on their crons until SIGTERM or SIGINT, then exit 0.

    One scheduler per database is active; others wait as standbys and take over once its lease
    expires ($RECYCLE_ENGINE_SCHEDULER_LEASE_SECONDS, default 60). On a stop signal the running
    job finishes first."""
    from recycle_engine.jobs.schedule import serve

    serve(config_path)


@main.command("status")
@config_option
@reports_errors
def status_cmd(config_path: Path) -> None:
    """Last job runs, pending hand-offs by age, next scheduled runs and which scheduler is active."""
    from sqlalchemy.exc import SQLAlchemyError

    from recycle_engine import bootstrap
    from recycle_engine.jobs.schedule import next_fire_times
    from recycle_engine.services.job_runs import abandon_dead_runs
    from recycle_engine.services.reporting.status import gather_status, render_status

    try:
        with bootstrap.open_run(config_path) as run:
            settings, now = run.settings, run.night.at
            abandon_dead_runs(run.engine, now=now)
            status = gather_status(
                run.engine,
                now=now,
                crons={name: job.cron for name, job in settings.jobs.items()},
                next_fire_times=next_fire_times(settings, now),
            )
    except SQLAlchemyError as exc:
        click.echo(f"error: cannot read the database ({type(exc).__name__}); try `db upgrade`", err=True)
        sys.exit(1)
    for line in render_status(status, settings.timezone):
        click.echo(line)


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
@latency_option("every /v1 call")
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

    Prints its base URL (…/v1) on the first line, then the `base_url` and the environment lines that
    point the engine's FlexFactor gateway at it (the sandbox's own test keys); the admin API, with its
    clock, is under /_sandbox.
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
        for line in sandbox_settings_lines(base_url, config):
            click.echo(line)
        click.echo(f"FlexFactor sandbox ready; admin API at {admin_url}; Ctrl-C stops it.", err=True)

    serve_forever(config, host, port, latency_ms=latency_ms, on_ready=announce)


def sandbox_settings_lines(base_url: str, config: Any) -> list[str]:
    """What `sandbox` prints: its base URL, then how to point settings.yaml and the environment at it."""
    admin = base_url.removesuffix("/v1") + "/_sandbox"
    return [
        base_url,
        "",
        "# In settings.yaml, set the FlexFactor gateway's base_url to this sandbox:",
        f"#   base_url: {base_url}",
        "# and run the engine's commands with these variables (the sandbox's test keys):",
        f"export FLEXFACTOR_APP_KEY={config.app_key}",
        f"export FLEXFACTOR_APP_SECRET={config.app_secret}",
        f"export FLEXFACTOR_MID={config.mid}",
        f"export FLEXFACTOR_SITE_ID={config.site_id}",
        "export FLEXFACTOR_ENVIRONMENT_KEY=sandbox-environment-key",
        f"export FLEXFACTOR_HMAC_SIGNING_KEY={config.hmac_signing_key_b64}",
        "# Webhooks reach `recycle-engine serve` when the sandbox is started with",
        "#   --webhook-url http://127.0.0.1:8080/webhooks/flexfactor/<FlexFactor gateway id>",
        "# Outcomes follow the sandbox's clock; move it on to have them delivered, e.g. two days:",
        f"#   curl -s -X POST {admin}/clock -H 'Content-Type: application/json' -d '{{\"advance_seconds\": 172800}}'",
    ]


# --- demo --------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-work"),
    show_default=True,
    help="Folder for the demo's database, feeds and reports; emptied first if a previous demo made it, "
    "refused if it holds anything else (unless --force).",
)
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Empty --workdir even if the demo did not create it (never the current folder or a parent).",
)
@click.option("--subscriptions", type=click.IntRange(10, 200_000), default=3000, show_default=True)
@click.option("--nights", type=click.IntRange(1, 120), default=30, show_default=True)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Same seed, same book and feeds. FlexFactor's sandbox decides each rescue by the hand-off's own "
    "(random) id, so recoveries vary a little between runs.",
)
@reports_errors
def demo(config_path: Path, workdir: Path, force: bool, subscriptions: int, nights: int, seed: int) -> None:
    """The whole product end to end on a generated book, with SQLite and the bundled sandbox.

    Uses the ladders, gateways and campaigns of --config; FlexFactor calls go to a local sandbox and
    its signed webhooks to a local webhook service, both stopped when the demo ends. Prints the report path."""
    from recycle_engine.demo.run import DemoOptions, format_summary, run_demo

    if not config_path.exists():
        raise click.UsageError(f"settings file {config_path} not found; pass --config PATH")
    options = DemoOptions(
        settings_path=config_path.resolve(),
        workdir=workdir.resolve(),
        subscriptions=subscriptions,
        nights=nights,
        seed=seed,
        force=force,
    )

    def progress(line: str) -> None:
        # A line of text on a terminal; piped, a log record, so that stderr stays JSON lines throughout.
        if sys.stderr.isatty():
            click.echo(line, err=True)
        else:
            logging.getLogger("recycle_engine.demo").info(line)

    result = run_demo(options, progress=progress)
    for line in format_summary(result):
        click.echo(line)
