"""The `recycle-engine` command line (SPEC section 4): parse, load settings, call a service, exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
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
