"""Column-at-a-time parsers for the declines feed: card-number scan, flags, timestamps and amounts."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, MutableMapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import numpy as np

from recycle_engine.domain.cards import contains_pan
from recycle_engine.money import AmountTooLarge, parse_minor

__all__ = [
    "Flags",
    "card_number_positions",
    "duplicates",
    "matching",
    "member",
    "not_utf8_bytes",
    "parse_amounts",
    "parse_timestamps",
    "text_problems",
    "typed_columns",
]

Flags = np.ndarray[Any, np.dtype[np.bool_]]


_ALL_DIGITS: Final = 0x20000  # every decimal digit of Unicode 15 lies below U+1FC00
_ASCII: Final = 0x80


def _shape_of(code: int) -> str | None:
    """A character's part in a written card number: digits (any script) "1", separators (whitespace,
    punctuation) "s", ASCII letters "a", other ASCII "0"; None for any other character (left as it is
    by translate(), which neither the digits nor the separators of the pattern below match)."""
    ch = chr(code)
    if code == 0:
        return "0"  # the joiner below
    if code >= _ALL_DIGITS:
        return None
    if ch.isdecimal():
        return "1"
    if ch.isspace() or unicodedata.category(ch).startswith("P"):
        return "s"
    if code < _ASCII:
        return "a" if ch.isalpha() else "0"
    return None


def _digit_of(shape: str) -> str | None:
    """The shape with separators removed and letters as "0": thirteen "1"s in a row, which str.find
    spots even faster, are needed for any card number however written."""
    return {"s": None, "a": "0"}.get(shape, shape)


_ASCII_SHAPES: Final = {code: shape for code in range(_ASCII) if (shape := _shape_of(code)) is not None}
_ASCII_DIGITS: Final = {code: _digit_of(shape) for code, shape in _ASCII_SHAPES.items()}


def _tables(joined: str) -> tuple[dict[int, str], dict[int, str | None]]:
    """translate() tables (shapes, digits only) for the characters of `joined`. Beyond ASCII only the
    characters present are looked up: a table of all Unicode takes tens of milliseconds to build, which
    a pull or an import with one accented name paid once per process."""
    if joined.isascii():
        return _ASCII_SHAPES, _ASCII_DIGITS
    return _tables_for(frozenset(ch for ch in set(joined) if not ch.isascii()))


@lru_cache(maxsize=256)  # a column's accented letters recur from chunk to chunk
def _tables_for(extra: frozenset[str]) -> tuple[dict[int, str], dict[int, str | None]]:
    shapes = dict(_ASCII_SHAPES)
    for ch in extra:
        if (shape := _shape_of(ord(ch))) is not None:
            shapes[ord(ch)] = shape
    return shapes, {code: _digit_of(shape) for code, shape in shapes.items()}


_THIRTEEN_DIGITS: Final = "1" * 13
# Thirteen digits, up to three separators between any two, the first not glued to a letter or a digit:
# a superset of cards.find_pans (which decides), spotted over a whole column at C speed.
_MAYBE_PAN: Final = re.compile(r"(?<![a1])(?:1s{0,3}){12}1")
_DECIMAL: Final = re.compile(r"\d+(?:\.\d+)?")


def card_number_positions(values: Sequence[str]) -> list[int]:
    """Positions of the values that contain a full card number (cards.contains_pan decides)."""
    joined = "\x00".join(values)
    shapes, digits = _tables(joined)
    if joined.translate(digits).find(_THIRTEEN_DIGITS) < 0:
        return []  # the usual case: not even 13 digits in a row, once separators are ignored
    if _MAYBE_PAN.search(joined.translate(shapes)) is None:
        return []  # digits in tokens and ids, say, but nothing shaped like a card number
    return [position for position, value in enumerate(values) if contains_pan(value)]


# Bytes that were not UTF-8, as the surrogateescape error handler keeps them: U+DC80 to U+DCFF.
_ESCAPED_BYTE: Final = re.compile("[\udc80-\udcff]")
_REPLACEMENT: Final = "\ufffd"


def not_utf8_bytes(value: str) -> list[int]:
    """The bytes of `value` that were not UTF-8 (read with errors="surrogateescape")."""
    return [ord(ch) - 0xDC00 for ch in _ESCAPED_BYTE.findall(value)]


def text_problems(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """A reason ("" if fine) for each value holding a NUL or a byte that was not UTF-8, and the values
    with those characters replaced by U+FFFD, the form safe to write to a UTF-8 rejects file. The
    database cannot keep either (PostgreSQL refuses NUL in text)."""
    joined = "".join(values)
    if "\x00" not in joined and (joined.isascii() or _ESCAPED_BYTE.search(joined) is None):
        return [""] * len(values), list(values)  # the usual case, proved by one C-level scan
    problems: list[str] = []
    cleaned: list[str] = []
    for value in values:
        found = []
        if "\x00" in value:
            found.append("contains a NUL character")
        escaped = not_utf8_bytes(value)
        if escaped:
            found.append(f"not UTF-8 text (byte {', '.join(f'0x{b:02X}' for b in dict.fromkeys(escaped))})")
        problems.append("; ".join(found))
        cleaned.append(
            _ESCAPED_BYTE.sub(_REPLACEMENT, value.replace("\x00", _REPLACEMENT)) if found else value
        )
    return problems, cleaned


def matching(values: Sequence[str], pattern: re.Pattern[str]) -> Flags:
    """True where the whole value matches `pattern`."""
    # map() keeps the loop in C: a generator costs a Python frame step per value.
    return np.fromiter(map(bool, map(pattern.fullmatch, values)), dtype=bool, count=len(values))


def member(values: Sequence[str], allowed: Collection[str]) -> Flags:
    """True where the value is one of `allowed`."""
    return np.fromiter(map(frozenset(allowed).__contains__, values), dtype=bool, count=len(values))


def parse_timestamps(
    values: Sequence[str], read: Sequence[datetime | None] | None = None
) -> tuple[list[datetime | None], list[int], list[str]]:
    """Aware UTC instants, their UTC offsets in minutes, and a reason ("" if fine) for each value.

    `read`, where given, holds instants the caller has read already, each in UTC and written in
    `values` as its isoformat() (offset +00:00), or None for a value still to parse."""
    if read is not None and None not in read:  # a CRM pull: every time read once, by the connector
        return list(read), [0] * len(values), [""] * len(values)
    instants: list[datetime | None] = []
    offsets: list[int] = []
    problems: list[str] = []
    for position, text in enumerate(values):
        if read is not None and (known := read[position]) is not None:
            instants.append(known)
            offsets.append(0)
            problems.append("")
            continue
        try:
            instant = datetime.fromisoformat(text)
        except ValueError:
            instant = None
        offset = instant.utcoffset() if instant is not None else None
        if instant is None or offset is None:
            instants.append(None)
            offsets.append(0)
            problems.append(
                "no UTC offset" if instant is not None else "not an ISO 8601 timestamp with offset"
            )
            continue
        instants.append(instant.astimezone(UTC))
        offsets.append(int(offset.total_seconds()) // 60)
        problems.append("")
    return instants, offsets, problems


def parse_amounts(
    values: Sequence[str], currencies: Sequence[str], known_currency: Flags
) -> tuple[list[int], list[str]]:
    """Minor units through money.parse_minor (once per distinct pair), and a reason ("" if fine)."""
    cache: dict[tuple[str, str], tuple[int, str]] = {}
    amounts: list[int] = []
    problems: list[str] = []
    for text, code, known in zip(values, currencies, known_currency.tolist(), strict=True):
        if not known:
            amounts.append(0)
            problems.append("")  # the currency column says why
            continue
        key = (text, code)
        if key not in cache:
            cache[key] = _minor(text, code)
        minor, problem = cache[key]
        amounts.append(minor)
        problems.append(problem)
    return amounts, problems


def _minor(text: str, currency: str) -> tuple[int, str]:
    if _DECIMAL.fullmatch(text) is None:
        return 0, "must be a decimal amount such as 29.99"
    try:
        minor = parse_minor(text, currency)
    except AmountTooLarge as exc:
        return 0, str(exc)
    except ValueError:
        return 0, f"more decimal places than {currency} has"
    return minor, "" if minor > 0 else "must be more than zero"


def duplicates(
    ids: list[str], lines: list[int], seen: MutableMapping[str, int], blank: Flags
) -> tuple[Flags, list[str]]:
    """Flags and reasons for ids met before (in this chunk or, through `seen`, an earlier one)."""
    flags = np.zeros(len(lines), dtype=bool)
    messages = [""] * len(lines)
    for position, (value, line) in enumerate(zip(ids, lines, strict=True)):
        if not value or blank[position]:
            continue
        first = seen.setdefault(value, line)
        if first != line:
            flags[position] = True
            messages[position] = f"duplicate of line {first}"
    return flags, messages


def typed_columns(
    cells: dict[str, list[str]],
    declined_at: list[Any],
    offsets: list[int],
    amounts: list[int],
    good: list[int],
    *,
    booleans: Collection[str],
    ints: Collection[str],
) -> dict[str, list[Any]]:
    """The `good` rows, column by column under declines-table names: `booleans` and `ints` converted,
    empty text as None, `amount` replaced by `amount_minor`, the instant and its UTC offset."""
    columns: dict[str, list[Any]] = {}
    take = (
        (lambda values: values)
        if len(good) == len(declined_at)
        else (lambda values: [values[p] for p in good])
    )
    for column in cells:
        values = take(cells[column])
        if column in booleans:
            columns[column] = [v == "true" for v in values]
        elif column in ints:
            columns[column] = [int(v) if v else None for v in values]
        elif column not in ("amount", "declined_at"):
            # A column without empty text (one C-level scan) needs no None: a copy of the list.
            columns[column] = list(values) if "" not in values else [v or None for v in values]
    columns["declined_at"] = take(declined_at)
    columns["utc_offset_minutes"] = take(offsets)
    columns["amount_minor"] = take(amounts)
    return columns
