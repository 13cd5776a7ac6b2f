"""Rendering and writing: Jinja2 with autoescape on, display filters, atomic files, the CSV and the index."""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import pandas as pd
from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined
from jinja2.bccache import Bucket
from markupsafe import Markup, escape

from recycle_engine.money import Money

__all__ = [
    "TEMPLATES_DIR",
    "attach_amounts",
    "environment",
    "existing_reports",
    "fmt_count",
    "fmt_decimal",
    "fmt_money",
    "fmt_pct",
    "fmt_points",
    "human_time",
    "month_abbr",
    "records",
    "render_template",
    "report_name",
    "write_csv",
    "write_index",
    "write_text",
]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
_REPORT_RE = re.compile(r"^recovery-(\d{4}-\d{2}-\d{2})\.html$")
DASH = "—"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MUST_QUOTE = re.compile(r'["\r\n]')  # with a comma inside a field, what the csv module quotes


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def fmt_money(minor: object, currency: object) -> str:
    """Minor units as "1,234.50 USD" (money.Money does the exponent); a dash when missing."""
    if _missing(minor) or not currency:
        return DASH
    return Money(int(minor), str(currency)).format_grouped()  # type: ignore[call-overload]


def fmt_pct(share: object) -> str:
    """A share 0..1 as "42.9 %"; a dash when undefined (nothing to divide by)."""
    if _missing(share):
        return DASH
    return f"{float(share) * 100:.1f} %"  # type: ignore[arg-type]


def fmt_points(difference: object) -> str:
    """A difference of two shares as signed percentage points ("+12.5 points"); a dash when undefined."""
    if _missing(difference):
        return DASH
    return f"{float(difference) * 100:+.1f} points"  # type: ignore[arg-type]


def month_abbr(month: int) -> str:
    """ "Jan".."Dec", whatever the process locale (strftime's %b follows it)."""
    return _MONTHS[month - 1]


def human_time(value: datetime, tz: ZoneInfo, *, seconds: bool = False) -> Markup:
    """An instant as people read it in the report's timezone ("15 Jun 2026, 02:14 EDT"), inside a
    <time> element carrying the exact ISO value with its offset."""
    at = value.astimezone(tz)
    clock = f"{at:%H:%M:%S}" if seconds else f"{at:%H:%M}"
    shown = f"{at.day} {month_abbr(at.month)} {at.year}, {clock} {at.tzname() or ''}".rstrip()
    # escape() on each part is what Markup.format does, without its formatter (a tenth of the cost).
    return Markup(f'<time datetime="{escape(at.isoformat(timespec="seconds"))}">{escape(shown)}</time>')


def fmt_count(n: object) -> str:
    return DASH if _missing(n) else f"{int(n):,}"  # type: ignore[call-overload]


def fmt_decimal(value: object) -> str:
    return DASH if _missing(value) else f"{float(value):.1f}"  # type: ignore[arg-type]


class _CompiledTemplates(FileSystemBytecodeCache):
    """The templates' compiled code kept between processes, in Jinja's private per-user temporary
    directory (mode 0700, checked), each file keyed by the template's path and checked against its
    source: every report runs in a fresh process, and compiling the report's templates took longer
    than rendering them. A file that cannot be read or written is skipped: a cache never fails a report."""

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # unreadable or damaged (pickle and marshal raise many kinds): compile instead
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _compiled_templates() -> _CompiledTemplates | None:
    try:
        return _CompiledTemplates(pattern="recycle-engine-%s.cache")
    except (OSError, RuntimeError):  # no private temporary directory: compile in every process
        return None


@functools.lru_cache(maxsize=8)
def environment(tz: ZoneInfo) -> Environment:
    """The report's Jinja2 environment: autoescape everywhere, undefined names are errors.

    One per timezone, kept: it caches the compiled templates (compiling the report's takes longer
    than rendering it), and so does the next process (_CompiledTemplates)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        bytecode_cache=_compiled_templates(),
    )

    def local(value: object, spec: str = "minutes") -> str:
        if not isinstance(value, datetime) or _missing(value):
            return DASH
        return human_time(value, tz, seconds=spec == "seconds")

    env.filters.update(
        money=fmt_money, pct=fmt_pct, points=fmt_points, count=fmt_count, decimal=fmt_decimal, local=local
    )
    return env


def render_template(name: str, tz: ZoneInfo, context: Mapping[str, Any]) -> str:
    return environment(tz).get_template(name).render(**context)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of Python values for a template (NaN stays NaN, NaT stays NaT: the filters
    show them as a dash); instants as datetime, which converts to local time five times faster than
    pandas' Timestamp. Built a column at a time: DataFrame.to_dict boxes every value on its own."""
    names = [str(c) for c in frame.columns]
    if not names:
        return [{} for _ in range(len(frame))]
    columns = [_python_values(column) for _, column in frame.items()]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _python_values(column: pd.Series[Any]) -> list[Any]:
    if isinstance(column.array, pd.arrays.DatetimeArray):
        return list(column.array.to_pydatetime())
    return column.tolist()


def attach_amounts(counts: pd.DataFrame, amounts: pd.DataFrame, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Count rows, each with the list of its per-currency amount rows under "amounts"."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in records(amounts):
        by_key.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = records(counts)
    for row in out:
        row["amounts"] = by_key.get(tuple(row[k] for k in keys), [])
    return out


# --- files ---------------------------------------------------------------------------------------


def report_name(day: date) -> str:
    return f"recovery-{day.isoformat()}.html"


@contextmanager
def _atomic(path: Path, *, newline: str | None = None) -> Iterator[IO[str]]:
    # Write beside the target and rename, so a reader never sees half a report.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file 0600 whatever the umask; a report is read by whoever may read the folder.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    # Reading the umask means setting it; the old value is restored at once.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    with _atomic(path) as fh:
        fh.write(text)
    return path


def write_csv(path: Path, rows: Iterable[Sequence[object]], columns: Sequence[str]) -> int:
    """Write rows as one CSV, as the csv module writes it (header first, even with no rows; None as an
    empty cell, "\\n" line ends, fields quoted only when they must be); returns the number of rows."""
    count = 0
    with _atomic(path, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        write, width = fh.write, len(columns)
        for row in rows:
            count += 1
            # Most rows are plain text with nothing to quote: joined, they are exactly what the csv
            # module writes, at a quarter of its cost. Anything else goes through it.
            try:
                line = ",".join(["" if cell is None else cell for cell in row])  # type: ignore[misc]
            except TypeError:  # a cell that is not text
                line = None
            if line is None or width < 2 or line.count(",") != width - 1 or _MUST_QUOTE.search(line):
                writer.writerow(row)
            else:
                write(line + "\n")
    return count


def existing_reports(output_dir: Path) -> list[date]:
    """Days with a recovery report in `output_dir`, newest first."""
    if not output_dir.is_dir():
        return []
    days = [date.fromisoformat(m.group(1)) for p in output_dir.iterdir() if (m := _REPORT_RE.match(p.name))]
    return sorted(days, reverse=True)


def write_index(
    output_dir: Path, *, tz: ZoneInfo, generated_at: datetime, dashboard: Mapping[str, Any] | None = None
) -> Path:
    """Rewrite `index.html`: the dashboard (when given), then a link to every recovery report present,
    newest first."""
    days = existing_reports(output_dir)
    links = [{"day": d, "href": report_name(d)} for d in days]
    context = {"links": links, "generated_at": generated_at, "tz_name": str(tz.key), "dashboard": dashboard}
    html = render_template("index.html.j2", tz, context)
    return write_text(output_dir / "index.html", html)
