"""`rerun` and `cascade`: declined initial sales sent to FlexFactor."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from recycle_engine.cli.app import (
    config_option,
    main,
    reports_errors,
)

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
    from recycle_engine.config import Need
    from recycle_engine.services.initial_sales.rerun import rerun_orders

    ids = _order_ids(order_ids, from_file)
    with bootstrap.open_run(config_path, *([Need.FLEXFACTOR] if send_now else [])) as run:
        clients = run.flexfactor_clients() if send_now else {}
        report = rerun_orders(
            run.settings, run.engine, clients, ids, gateway_id=gateway_id, now=run.night.at, send_now=send_now
        )
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
    from recycle_engine.config import Need
    from recycle_engine.services.initial_sales.cascade import cascade_order
    from recycle_engine.services.initial_sales.new_sales import Refused

    with bootstrap.open_run(config_path, Need.FLEXFACTOR) as run:
        outcome = cascade_order(
            run.settings, run.engine, run.flexfactor_clients(), order_id, now=run.night.at
        )
    if isinstance(outcome, Refused):
        click.echo(f"refused {order_id}: {outcome.code}: {outcome.reason}", err=True)
        sys.exit(1)
    click.echo(f"{outcome.result.value} {order_id}: hand-off {outcome.handoff_id}")
    if outcome.reason:
        click.echo(f"  {outcome.reason}")
