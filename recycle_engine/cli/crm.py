"""`crm pull`, `crm rejects` and `crm-fake`: the merchant's CRM, read over its API, and a local stand-in."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

import click

from recycle_engine.cli.app import config_option, instant, latency_option, main, reports_errors

FAKE_LOGIN_ENV: Final = "CRM_FAKE_LOGIN_ID"
FAKE_PASSWORD_ENV: Final = "CRM_FAKE_PASSWORD"
FAKE_LOGIN: Final = "fake-api-user"  # the fake's own test credentials, like the sandbox's test keys
FAKE_PASSWORD: Final = "fake-api-password"


@main.group("crm")
def crm_group() -> None:
    """The merchant's CRM (settings.yaml `crm:`): pull declines, see rejected rows."""


@crm_group.command("pull")
@click.option(
    "--until",
    "until_text",
    default=None,
    help="End of the window (ISO 8601 with offset); default now less crm.pull.settle_minutes.",
)
@click.option(
    "--since",
    "since_text",
    default=None,
    help="Start of the window instead of the cursor "
    "less the lookback (ISO 8601 with offset); for a first pull or to re-read a period.",
)
@config_option
@reports_errors
def pull_cmd(until_text: str | None, since_text: str | None, config_path: Path) -> None:
    """Read the CRM's declined transactions of a closed window into the book, as `import declines` does.

    The window starts where the last complete pull ended (less crm.pull.lookback_minutes). A pull
    stopped part-way leaves that point where it was: run it again. Rejected rows: `crm rejects`.
    """
    from recycle_engine import bootstrap
    from recycle_engine.config import Need
    from recycle_engine.services.crm.pull import pull_declines

    with bootstrap.open_run(config_path, Need.CRM) as run:
        result = pull_declines(
            run.settings,
            run.engine,
            run.crm(),
            now=run.night.at,
            until=instant(until_text),
            since=instant(since_text),
        )
    counts = result.counts
    click.echo(
        f"pull {result.run_id}: {result.window_start.isoformat()} .. {result.window_end.isoformat()}: "
        f"read {counts.get('read', 0)} in {counts.get('pages', 0)} pages, accepted {counts.get('accepted', 0)}, "
        f"rejected {counts.get('rejected', 0)}, duplicates {counts.get('duplicates', 0)} (already imported)"
    )
    if counts.get("rejected"):
        click.echo("rejected rows: recycle-engine crm rejects")


@crm_group.command("rejects")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Rows shown.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, with the (masked) row.")
@config_option
@reports_errors
def rejects_cmd(limit: int, as_json: bool, config_path: Path) -> None:
    """The CRM rows the import checks refused, newest first, each with its reason."""
    from recycle_engine import bootstrap
    from recycle_engine.storage import crm_repo

    with bootstrap.open_app(config_path) as app, app.engine.connect() as conn:
        rows = crm_repo.recent_rejects(conn, limit)
    if not rows:
        click.echo("no rejected CRM rows")
    for row in rows:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "transaction_id": row.transaction_id,
                        "rejected_at": row.rejected_at.isoformat(),
                        "reason": row.reason,
                        "row": json.loads(row.row),
                    }
                )
            )
        else:
            click.echo(f"{row.rejected_at.isoformat()}  {row.transaction_id}  {row.reason}")


@main.command("crm-fake")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback).")
@click.option(
    "--port", default=8766, show_default=True, type=click.IntRange(0, 65535), help="0: a free port."
)
@click.option(
    "--declines",
    "declines_csv",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A declines feed (SPEC section 5) whose rows the fake holds as its records.",
)
@click.option("--allow-ip", "allowed", multiple=True, help="Only these caller IPs (default: any).")
@latency_option("every API answer (calls made at once wait together)")
def crm_fake_cmd(
    host: str, port: int, declines_csv: Path | None, allowed: tuple[str, ...], latency_ms: int
) -> None:
    """Run a local CRM speaking the Konnektive API (README "The CRM") until Ctrl-C.

    Credentials it accepts: $CRM_FAKE_LOGIN_ID and $CRM_FAKE_PASSWORD, or its test pair. Admin calls
    under /_fake: POST records, faults and arrivals; GET log (every call, credentials left out).
    """
    import csv

    from recycle_engine.crm_fake.book import load_feed_rows
    from recycle_engine.crm_fake.server import make_server
    from recycle_engine.crm_fake.state import FakeCrm

    login = os.environ.get(FAKE_LOGIN_ENV, FAKE_LOGIN)
    password = os.environ.get(FAKE_PASSWORD_ENV, FAKE_PASSWORD)
    fake = FakeCrm(
        login, password, allowed_ips=frozenset(allowed) if allowed else None, latency_ms=latency_ms
    )
    if declines_csv is not None:
        with declines_csv.open(encoding="utf-8", newline="") as handle:
            added = load_feed_rows(fake, csv.DictReader(handle))
        click.echo(f"holding {added} declined transactions from {declines_csv}", err=True)
    server = make_server(fake, host, port)
    url = f"http://{host}:{server.server_address[1]}"
    click.echo(url)
    click.echo("")
    click.echo(
        "# In settings.yaml:  crm: {type: konnektive, base_url: "
        + url
        + ", login_id: ${CRM_LOGIN_ID}, password: ${CRM_PASSWORD}}"
    )
    if FAKE_LOGIN_ENV not in os.environ:
        click.echo(f"export CRM_LOGIN_ID={login}")
        click.echo(f"export CRM_PASSWORD={password}")
    click.echo(f"CRM fake ready; request log at {url}/_fake/log; Ctrl-C stops it.", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@crm_group.command("push")
@click.option(
    "--since",
    "since_text",
    default=None,
    help="Queue the changes from this time (ISO 8601 with "
    "offset) instead of from the last push; for the first push or to re-queue a period.",
)
@config_option
@reports_errors
def push_cmd(since_text: str | None, config_path: Path) -> None:
    """Deliver the change outbox (`export changes`) to the CRM, each change once.

    Exit code 1 when the CRM could not be reached and changes wait for a later push; a change the CRM
    refused is recorded with its message (`crm deliveries --state REFUSED`) and does not stop the others.
    """
    import sys

    from recycle_engine import bootstrap
    from recycle_engine.config import Need
    from recycle_engine.services.crm.push import push_changes

    with bootstrap.open_run(config_path, Need.CRM) as run:
        result = push_changes(
            run.settings, run.engine, run.crm(), now=run.night.at, since=instant(since_text)
        )
    click.echo(f"push {result.run_id}: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    if result.unreachable:
        click.echo(f"error: {result.stopped}", err=True)
        sys.exit(1)
    if result.stopped:
        click.echo(f"waiting: {result.stopped}")


@crm_group.command("deliveries")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(
        ["PENDING", "SENDING", "RETRY", "DELIVERED", "REFUSED", "UNSUPPORTED", "FAILED"], case_sensitive=False
    ),
    help="Only these states (repeatable).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Rows shown.")
@config_option
@reports_errors
def deliveries_cmd(states: tuple[str, ...], limit: int, config_path: Path) -> None:
    """Changes on their way to the CRM, newest first: state, attempts and the CRM's answer."""
    from recycle_engine import bootstrap
    from recycle_engine.storage import crm_repo

    with bootstrap.open_app(config_path) as app, app.engine.connect() as conn:
        rows = crm_repo.deliveries(conn, [s.upper() for s in states], limit)
    if not rows:
        click.echo("no deliveries")
    for d in rows:
        answer = f"  {d.answer}" if d.answer else ""
        click.echo(
            f"{d.change_id:>10}  {d.state:11} attempts {d.attempts}  {d.entity} {d.entity_id} "
            f"{d.field} -> {d.new_value}{answer}"
        )
