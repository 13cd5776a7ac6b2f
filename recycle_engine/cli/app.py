"""The command line's root group and what every command shares: --config, error reporting, instants, progress."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from recycle_engine.errors import ConfigError, RecycleEngineError
from recycle_engine.logs import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

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
            log.debug("the command failed", exc_info=True)  # the traceback, for --log-level DEBUG
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except SQLAlchemyError as exc:
            # A database error storage.faults does not classify: its driver's first line only, since
            # SQLAlchemy's own text would echo the statement's values.
            log.debug("the command failed on a database error", exc_info=True)
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            click.echo(f"error: database error ({type(cause).__name__}): {first}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recycle-engine")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def main(log_level: str) -> None:
    """Recycle declined subscription payments, with FlexFactor decline salvage."""
    configure_logging(log_level.upper())


def instant(value: str | None) -> datetime | None:
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


def progress_printer(label: str) -> Callable[[str, int], None] | None:
    """A one-line progress display on a terminal; None when logs go to a file or journal."""
    if not sys.stderr.isatty():
        return None

    def show(stage: str, count: int) -> None:
        click.echo(f"\r{label}: {stage} {count:,}   ", err=True, nl=False)

    return show
