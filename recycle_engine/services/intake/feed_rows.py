"""Declines feed rows (SPEC section 5): the header contract and vectorised checks of each chunk."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from recycle_engine.money import is_known_currency
from recycle_engine.services.intake.feed_values import (
    Flags,
    card_number_positions,
    duplicates,
    matching,
    member,
    parse_amounts,
    parse_timestamps,
    text_problems,
    typed_columns,
)
from recycle_engine.storage.decline_repo import text_widths

__all__ = [
    "FEED_COLUMNS",
    "OVERFLOW_PREFIX",
    "PAN_MARKER",
    "CheckedChunk",
    "HeaderCheck",
    "check_chunk",
    "check_header",
]

FEED_COLUMNS: Final[tuple[str, ...]] = (
    "transaction_id", "declined_at", "order_id", "order_type", "purchase_id", "billing_cycle",
    "billing_interval_days", "completes_trial", "recurring_product", "shippable", "campaign_id",
    "product_id", "gateway_id", "amount", "currency", "response_type", "response_code", "response_text",
    "avs_result", "cvv_result", "cavv_result", "customer_id", "email", "phone", "first_name", "last_name",
    "address1", "address2", "city", "state", "zip", "country", "ip_address", "card_token", "card_bin",
    "card_last4", "card_exp_month", "card_exp_year", "card_brand", "card_type",
)  # fmt: skip
PAN_MARKER: Final = "[card number removed]"
OVERFLOW_PREFIX: Final = "__overflow_"  # names given to fields past the header, to catch shifted rows

_REQUIRED: Final = (
    "transaction_id", "declined_at", "order_id", "order_type", "billing_cycle", "completes_trial",
    "recurring_product", "shippable", "gateway_id", "amount", "currency", "response_type",
)  # fmt: skip
_ORDER_TYPES: Final = ("NEW_SALE", "UPSALE", "REBILL")
_RESPONSE_TYPES: Final = ("SOFT_DECLINE", "HARD_DECLINE")
_BOOLEANS: Final = ("completes_trial", "recurring_product", "shippable")
_INTS: Final = ("billing_cycle", "billing_interval_days", "card_exp_month", "card_exp_year")
_UPPER: Final = ("order_type", "response_type", "currency", "country")
_PATTERNS: Final = (
    ("country", re.compile(r"[A-Z]{2}"), "must be an ISO 3166-1 alpha-2 code"),
    ("card_last4", re.compile(r"\d{4}"), "must be 4 digits"),
    ("card_bin", re.compile(r"\d{6,8}"), "must be 6 to 8 digits"),
)
_WHOLE_NUMBER: Final = re.compile(r"\d{1,9}")
_RANGES: Final = (
    ("billing_cycle", 1, 10**9, "must be at least 1"),
    ("billing_interval_days", 1, 10**9, "must be at least 1"),
    ("card_exp_month", 1, 12, "must be 1 to 12"),
    ("card_exp_year", 2000, 2099, "must be a four-digit year"),
)
# Column widths of the declines table (PostgreSQL refuses longer text); columns with a stricter
# format check of their own are left to it, so a reject says one thing per column.
_FORMATTED: Final = {"country", "card_last4", "card_bin", "currency", "order_type", "response_type"}
_MAX_LENGTHS: Final = text_widths([c for c in FEED_COLUMNS if c not in _FORMATTED])


@dataclass(frozen=True)
class HeaderCheck:
    """What is wrong with a header: absent contract columns, duplicated names, extra columns."""

    missing: tuple[str, ...]
    duplicated: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def is_usable(self) -> bool:
        return not self.missing and not self.duplicated


def check_header(columns: Sequence[str]) -> HeaderCheck:
    """Compare a header with FEED_COLUMNS; extra columns are allowed (and ignored) by the caller."""
    counts = Counter(columns)
    return HeaderCheck(
        missing=tuple(c for c in FEED_COLUMNS if c not in counts),
        duplicated=tuple(c for c, n in counts.items() if n > 1),
        extra=tuple(c for c in dict.fromkeys(columns) if c not in FEED_COLUMNS),
    )


@dataclass
class CheckedChunk:
    """One chunk after the checks: the good rows, column by column, and the reasons of the bad ones.

    `columns` are declines-table columns (amount as `amount_minor`, `declined_at` aware UTC), each a
    list with one value per good row; `lines[i]` is the file line of good row i. `original` is the chunk as read, indexed by line, with
    every cell that looks like a card number replaced by PAN_MARKER: the only form safe to write out.
    """

    columns: dict[str, list[Any]]
    lines: list[int]
    reasons: dict[int, list[str]]  # line -> reasons, for rejected rows
    original: pd.DataFrame
    blank_lines: int = 0

    @property
    def records(self) -> list[dict[str, Any]]:
        """The good rows as one dict each (for reading; the import itself stays with columns)."""
        names = list(self.columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*self.columns.values(), strict=True)]

    def reject(self, line: int, reason: str) -> None:
        """Reject a row that passed the checks, e.g. when a later step cannot use it."""
        self.reasons.setdefault(line, []).append(reason)

    def rejects_frame(self) -> pd.DataFrame:
        """The rejected rows: their original (masked) columns plus `line` and `reason`, in line order."""
        lines = sorted(self.reasons)
        # Extra columns named like ours are ignored on import, so they may go here too.
        frame = self.original.loc[lines].drop(columns=["line", "reason"], errors="ignore")
        frame.insert(len(frame.columns), "line", lines)
        frame.insert(len(frame.columns), "reason", ["; ".join(self.reasons[n]) for n in lines])
        return frame


class _Problems:
    """Per-row reasons collected column by column, then joined for the rows that have any."""

    def __init__(self) -> None:
        self.found: list[tuple[str, Flags, str | list[str]]] = []

    def add(self, column: str, flags: Flags, message: str | list[str]) -> None:
        if flags.any():
            self.found.append((column, flags, message))

    def by_row(self, pan_columns: dict[int, set[str]]) -> dict[int, list[str]]:
        rows: dict[int, list[str]] = {}
        for position, columns in pan_columns.items():
            rows[position] = [f"{c}: looks like a full card number (removed)" for c in sorted(columns)]
        described: set[tuple[int, str]] = set()
        for column, flags, message in self.found:
            for position in np.flatnonzero(flags).tolist():
                if column in pan_columns.get(position, ()):
                    continue  # never describe a card number, beyond saying it was there
                if (position, column) in described:
                    continue  # the first reason, e.g. a byte that is not UTF-8, explains the rest
                described.add((position, column))
                text = message if isinstance(message, str) else message[position]
                rows.setdefault(position, []).append(f"{column}: {text}")
        return rows


def check_chunk(
    frame: pd.DataFrame,
    *,
    first_line: int,
    gateways: Collection[str],
    flexfactor_gateways: Collection[str],
    seen_transactions: MutableMapping[str, int],
    times: Sequence[datetime | None] | None = None,
) -> CheckedChunk:
    """Check every row of one chunk read with dtype=str and keep_default_na=False, column by column.

    `first_line` is the file line of the chunk's first row (the header is line 1). `gateways` are the
    ordinary gateway ids of the settings. `seen_transactions` maps each transaction id met so far in the
    file to its first line; it is updated, so a later duplicate in another chunk is still caught.
    `times`, row by row, are declined_at instants the caller has read already (see parse_timestamps).
    """
    size = len(frame)
    lines = list(range(first_line, first_line + size))
    overflow = [c for c in frame.columns if str(c).startswith(OVERFLOW_PREFIX)]
    original = frame.drop(columns=overflow).set_axis(lines, axis=0)
    # Each column leaves the frame once: the frame's own tolist() costs more than the checks on the list.
    texts = {str(c): original[c].tolist() for c in original.columns}
    unreadable = _replace_unreadable(original, texts)
    pan_columns = _mask_card_numbers(original, texts)
    cells = {c: _stripped(texts[c]) for c in FEED_COLUMNS}
    for column in _UPPER:
        cells[column] = list(map(str.upper, cells[column]))
    present = {c: _non_empty(cells[c]) for c in FEED_COLUMNS}
    if any("" not in values for values in texts.values()):
        blank = np.zeros(size, dtype=bool)  # a column full throughout: no row is blank (the usual case)
    else:
        blank = ~np.logical_or.reduce([frame[c].to_numpy() != "" for c in frame.columns])

    problems = _Problems()
    for column, (flags, messages) in unreadable.items():
        problems.add(column, flags, messages)
    if overflow:
        extra = np.logical_or.reduce([frame[c].to_numpy() != "" for c in overflow])
        problems.add("line", extra, f"more fields than the {len(original.columns)} of the header")
    for column in _REQUIRED:
        problems.add(column, ~present[column], "required")
    for column, limit in _MAX_LENGTHS.items():
        if max(map(len, cells[column]), default=0) > limit:  # flags only for a column that has any
            problems.add(
                column,
                np.fromiter(map(len, cells[column]), int, size) > limit,
                f"longer than {limit} characters",
            )
    for column, pattern, message in _PATTERNS:
        problems.add(column, present[column] & ~matching(cells[column], pattern), message)
    for column in _BOOLEANS:
        cells[column] = list(map(str.lower, cells[column]))
        problems.add(
            column, present[column] & ~member(cells[column], ("true", "false")), "must be true or false"
        )
    ints = {c: matching(cells[c], _WHOLE_NUMBER) for c in _INTS}
    numbers = {
        c: np.array([int(v) if ok else 0 for v, ok in zip(cells[c], ints[c].tolist(), strict=True)])
        for c in _INTS
    }
    for column in _INTS:
        problems.add(column, present[column] & ~ints[column], "must be a whole number")
    for column, low, high, message in _RANGES:
        problems.add(column, ints[column] & ((numbers[column] < low) | (numbers[column] > high)), message)

    _check_rules(problems, cells, present, ints, numbers, gateways, flexfactor_gateways)
    known_currency = np.fromiter(map(is_known_currency, cells["currency"]), dtype=bool, count=size)
    problems.add("currency", present["currency"] & ~known_currency, "not a known ISO 4217 currency")
    declined_at, offsets, time_problems = parse_timestamps(cells["declined_at"], times)
    problems.add("declined_at", present["declined_at"] & (np.array(time_problems) != ""), time_problems)
    amounts, amount_problems = parse_amounts(cells["amount"], cells["currency"], known_currency)
    problems.add("amount", present["amount"] & (np.array(amount_problems) != ""), amount_problems)
    problems.add("transaction_id", *duplicates(cells["transaction_id"], lines, seen_transactions, blank))

    reasons_by_position = problems.by_row(pan_columns)
    good = [p for p in range(size) if p not in reasons_by_position and not blank[p]]
    return CheckedChunk(
        columns=typed_columns(cells, declined_at, offsets, amounts, good, booleans=_BOOLEANS, ints=_INTS),
        lines=[lines[p] for p in good],
        reasons={lines[p]: r for p, r in reasons_by_position.items() if not blank[p]},
        original=original,
        blank_lines=int(blank.sum()),
    )


def _check_rules(
    problems: _Problems,
    cells: dict[str, list[str]],
    present: dict[str, Flags],
    ints: dict[str, Flags],
    numbers: dict[str, np.ndarray[Any, Any]],
    gateways: Collection[str],
    flexfactor_gateways: Collection[str],
) -> None:
    """Enums, gateways and the rules that tie columns together."""
    order_type = cells["order_type"]
    problems.add(
        "order_type",
        present["order_type"] & ~member(order_type, _ORDER_TYPES),
        "must be NEW_SALE, UPSALE or REBILL",
    )
    problems.add(
        "response_type",
        present["response_type"] & ~member(cells["response_type"], _RESPONSE_TYPES),
        "must be SOFT_DECLINE or HARD_DECLINE",
    )
    is_rebill = np.array(order_type, dtype=object) == "REBILL"
    problems.add("purchase_id", is_rebill & ~present["purchase_id"], "required for REBILL")
    problems.add(
        "billing_cycle",
        is_rebill & ints["billing_cycle"] & (numbers["billing_cycle"] < 2),
        "must be at least 2 for REBILL",
    )
    problems.add(
        "billing_interval_days",
        present["purchase_id"] & ~present["billing_interval_days"],
        "required when purchase_id is set",
    )
    is_flexfactor = member(cells["gateway_id"], flexfactor_gateways)
    problems.add("gateway_id", is_flexfactor, "is a FlexFactor gateway; declines come from ordinary gateways")
    unknown = present["gateway_id"] & ~is_flexfactor & ~member(cells["gateway_id"], gateways)
    problems.add("gateway_id", unknown, "not a gateway in the settings")


def _non_empty(values: list[str]) -> Flags:
    if "" not in values:  # one C-level scan: most columns are full
        return np.ones(len(values), dtype=bool)
    return np.fromiter(map(bool, values), dtype=bool, count=len(values))


def _stripped(values: list[str]) -> list[str]:
    joined = "".join(values)
    # Most columns (ids, codes, flags) hold no whitespace at all: one C-level scan proves it.
    if joined.split(maxsplit=1) in ([joined], []):
        return values
    return [v.strip() for v in values]


def _replace_unreadable(
    original: pd.DataFrame, texts: dict[str, list[str]]
) -> dict[str, tuple[Flags, list[str]]]:
    """Replace, in place in the frame and in `texts` (its columns as lists), NUL characters and bytes
    that were not UTF-8 by U+FFFD; return, for each column that had any, the rows' flags and reasons."""
    found: dict[str, tuple[Flags, list[str]]] = {}
    for index, column in enumerate(original.columns):
        messages, cleaned = text_problems(texts[str(column)])
        if not any(messages):
            continue  # the usual case, without an array of flags per column
        flags = np.array(messages, dtype=object) != ""
        found[str(column)] = (flags, messages)
        positions = np.flatnonzero(flags).tolist()
        original.iloc[positions, index] = [cleaned[p] for p in positions]
        texts[str(column)] = cleaned
    return found


def _mask_card_numbers(original: pd.DataFrame, texts: dict[str, list[str]]) -> dict[int, set[str]]:
    """Replace, in place in the frame and in `texts`, every cell holding a full card number; return
    row position -> its columns."""
    found: dict[int, set[str]] = {}
    for index, column in enumerate(original.columns):
        values = texts[str(column)]
        hits = card_number_positions(values)
        for position in hits:
            found.setdefault(position, set()).add(str(column))
            values[position] = PAN_MARKER
        if hits:
            original.iloc[hits, index] = PAN_MARKER
    return found
