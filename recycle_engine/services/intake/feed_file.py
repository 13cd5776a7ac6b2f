"""The declines feed file: its header, its rows in chunks with their line numbers, and FILE.rejects.csv."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import pandas as pd

from recycle_engine.domain.cards import contains_pan
from recycle_engine.errors import InputError
from recycle_engine.services.intake.feed_rows import OVERFLOW_PREFIX, PAN_MARKER, check_header
from recycle_engine.services.intake.feed_values import not_utf8_bytes

__all__ = ["RejectsFile", "read_chunks", "read_header", "rejects_path_for"]

log = logging.getLogger(__name__)

_OVERFLOW_FIELDS: Final = 8  # fields past the header we can still name (and reject); more stop the file


def rejects_path_for(path: Path) -> Path:
    """FILE.csv -> FILE.rejects.csv, beside the input."""
    return path.with_name(f"{path.stem}.rejects.csv")


def read_header(path: Path) -> list[str]:
    """The header's column names; raises InputError if unreadable or a contract column is missing."""
    try:
        # Bytes that are not UTF-8 are kept as lone surrogates: a bad byte in a data row is that
        # row's problem (feed_rows rejects it), only one in the header stops the file.
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            first = next(csv.reader(handle), None)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except csv.Error:
        raise InputError(f"{path}: the header is not a CSV line") from None
    if not first:
        raise InputError(f"{path}: the file is empty; a header row is required")
    if any(not_utf8_bytes(name) or "\x00" in name for name in first):
        raise InputError(f"{path}: the header is not UTF-8 text")
    header = [name.strip() for name in first]
    check = check_header(header)
    if check.missing:
        raise InputError(f"{path}: the header lacks column(s): {', '.join(check.missing)}")
    if check.duplicated:
        raise InputError(f"{path}: the header repeats column(s): {', '.join(map(_shown, check.duplicated))}")
    if check.extra:
        log.warning(
            "declines feed: extra columns ignored", extra={"columns": ", ".join(map(_shown, check.extra))}
        )
    return header


def _shown(name: str) -> str:
    """A header name as it may be echoed: even a column name is never allowed to carry a card number."""
    return PAN_MARKER if contains_pan(name) else name


def read_chunks(
    path: Path, header: Sequence[str], chunk_rows: int, *, first_rows: int | None = None
) -> Iterator[tuple[pd.DataFrame, int]]:
    """Chunks of at most `chunk_rows` rows, all cells text, each with the file line of its first row.
    With `first_rows`, the first chunk has that many rows and each next one twice as many, up to
    `chunk_rows`.

    Lines are counted as records: a quoted field spanning several lines shifts the numbers after it.
    """
    names = [*header, *(f"{OVERFLOW_PREFIX}{n}" for n in range(_OVERFLOW_FIELDS))]
    first_line = 2  # the header is line 1
    try:
        reader = pd.read_csv(
            path,
            header=None,
            skiprows=1,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,  # blank lines still count, so line numbers stay true
            encoding="utf-8-sig",
            encoding_errors="surrogateescape",  # a bad byte rejects its row only (feed_rows)
            iterator=True,
        )
        with reader:
            size = first_rows or chunk_rows
            while True:
                try:
                    frame = reader.get_chunk(size)
                except StopIteration:
                    return
                yield frame, first_line
                first_line += len(frame)
                size = min(2 * size, chunk_rows)
    except pd.errors.EmptyDataError:
        return
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: unreadable CSV after line {first_line - 1}: {exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text after line {first_line - 1}") from None


class RejectsFile:
    """FILE.rejects.csv, written beside the input under a temporary name and moved in place at the end."""

    def __init__(self, target: Path, header: Sequence[str]) -> None:
        self.target, self.partial = target, target.with_name(target.name + ".part")
        self.columns = [_shown(c) for c in header if c not in ("line", "reason")] + ["line", "reason"]

    def __enter__(self) -> RejectsFile:
        try:
            self.handle = self.partial.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"{self.target}: cannot write the rejects file ({exc.strerror})") from None
        self.writer = csv.writer(self.handle)
        self.writer.writerow(self.columns)
        return self

    def write(self, rejects: pd.DataFrame) -> None:
        self.writer.writerows(rejects.itertuples(index=False, name=None))

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.handle.close()
        if exc_type is None:
            self.partial.replace(self.target)
        else:
            self.partial.unlink(missing_ok=True)
