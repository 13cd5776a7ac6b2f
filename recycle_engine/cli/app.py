"""The command line's root group and what every command shares: --config, error reporting, instants, progress."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, tzinfo
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from click.core import ParameterSource
from sqlalchemy.exc import SQLAlchemyError

from recycle_engine.errors import ConfigError, RecycleEngineError
from recycle_engine.logs import configure_logging, show_progress

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "settings.yaml"
_ROOT_CONFIG = "recycle_engine.config"  # ctx.meta key: --config given on the root group
GLOBAL_OPTIONS = ("--log-level", "--config")  # accepted before or after the command


def _default_config() -> str:
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_ROOT_CONFIG) if ctx is not None else None
    return str(given or os.environ.get("RECYCLE_ENGINE_CONFIG") or DEFAULT_CONFIG)


class MissingSettings(click.ClickException):
    """The settings file does not exist: exit 2, as for any other settings problem."""

    exit_code = 2


def _existing_config(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """A settings file that is missing is named with its absolute path and the two ways to point at one."""
    if not value.exists():
        if (
            ctx.meta.get(_ROOT_CONFIG)
            or ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE
        ):
            where = "--config"
        elif os.environ.get("RECYCLE_ENGINE_CONFIG"):
            where = "$RECYCLE_ENGINE_CONFIG"
        else:
            where = "the default ./settings.yaml"
        raise MissingSettings(
            f"settings file {value.resolve()} not found (from {where}, run in {Path.cwd()}). Pass "
            "--config PATH or set $RECYCLE_ENGINE_CONFIG to your settings file; the repository's "
            "settings.yaml is a complete, commented example to copy."
        )
    return value


def config_option(func: F) -> F:
    """`--config PATH` on every command (default ./settings.yaml or $RECYCLE_ENGINE_CONFIG)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=_default_config,
        show_default="./settings.yaml or $RECYCLE_ENGINE_CONFIG",
        callback=_existing_config,
        help="Settings file (also accepted before the command).",
    )(func)


def latency_option(answers: str) -> Callable[[F], F]:
    """`--latency-ms N` on a stand-in: how long it holds `answers`, as a vendor across the internet would."""

    def decorate(func: F) -> F:
        return click.option(
            "--latency-ms",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help=f"Added delay on {answers}.",
        )(func)

    return decorate


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Move `--log-level` and `--config` (with their values) to the front, wherever they were written,
    so that both work before or after the command. Arguments after `--` stay as they are."""
    front: list[str] = []
    rest: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--":
            rest.extend(items[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in arg:
                front.append(arg)
            else:
                front.extend(items[i : i + 2])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _schema_missing(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in (
            "no such table",
            "no such column",
            "undefinedtable",
            "undefinedcolumn",
            "does not exist",
        )
    ) and ("relation" in text or "no such" in text or "column" in text)


SCHEMA_MISSING = (
    "error: the database has no schema yet, or an older one: run `recycle-engine db upgrade` with the "
    "same settings first"
)


class RootGroup(click.Group):
    """The root group: global options on either side of the command, and sentences instead of
    tracebacks for what a user can fix (a port in use, a database not yet upgraded, a closed pipe)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DBAPIError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader stopped early (`| head`): not a failure. Point stdout at /dev/null so that the
            # interpreter's final flush does not raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except ModuleNotFoundError as exc:
            if exc.name == "psycopg":
                click.echo(
                    "error: a PostgreSQL database.url needs the PostgreSQL driver, an extra: "
                    "pip install -c constraints.txt 'recycle-engine[postgres]' (or -e '.[postgres]' in a checkout)",
                    err=True,
                )
                sys.exit(1)
            raise
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                click.echo(
                    f"error: the address is already in use ({exc.strerror}); another process listens "
                    "on that port: stop it, or choose another with --port",
                    err=True,
                )
                sys.exit(1)
            raise
        except DBAPIError as exc:
            if _schema_missing(exc):
                click.echo(SCHEMA_MISSING, err=True)
                sys.exit(1)
            raise


EXIT_INCOMPLETE: Final = 3  # `run submit` / `run reconcile` ended with hand-offs still unsent


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
            if _schema_missing(exc):
                click.echo(SCHEMA_MISSING, err=True)
                sys.exit(1)
            # A database error storage.faults does not classify: its driver's first line only, since
            # SQLAlchemy's own text would echo the statement's values.
            log.debug("the command failed on a database error", exc_info=True)
            cause = getattr(exc, "orig", None) or exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            click.echo(f"error: database error ({type(cause).__name__}): {first}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recycle-engine")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Log level; accepted before or after the command.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file for the command; accepted before or after it "
    "(default ./settings.yaml or $RECYCLE_ENGINE_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, config_path: Path | None) -> None:
    """Recycle declined subscription payments, with FlexFactor decline salvage."""
    if config_path is not None:
        ctx.meta[_ROOT_CONFIG] = str(config_path)
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
        example = f"{value}T00:00:00+00:00" if _is_date(value) else f"{value}+00:00"
        raise click.BadParameter(f"{value!r} has no UTC offset; add one, e.g. {example}")
    return parsed


def local_midnight(value: str, tz: tzinfo) -> datetime | None:
    """A bare date (`2026-11-01`) as the start of that day in `tz`; None for anything else."""
    if not _is_date(value):
        return None
    return datetime.combine(date.fromisoformat(value), time(0), tz)


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def progress_printer(label: str) -> Callable[[str, int], None] | None:
    """A one-line progress display on a terminal; None when logs go to a file or journal."""
    if not sys.stderr.isatty():
        return None

    def show(stage: str, count: int) -> None:
        show_progress(f"{label}: {stage} {count:,}")

    return show
