"""Declines feed rows (SPEC section 5): the header contract and vectorised checks of each chunk."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import String

from recycle_engine.domain.cards import contains_pan
from recycle_engine.money import is_known_currency, parse_minor
from recycle_engine.storage.models import Decline

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
# Any 13 digits, single spaces or dashes between them: a superset of what cards.contains_pan accepts.
_PATTERNS: Final = (
    ("country", r"[A-Z]{2}", "must be an ISO 3166-1 alpha-2 code"),
    ("card_last4", r"\d{4}", "must be 4 digits"),
    ("card_bin", r"\d{6,8}", "must be 6 to 8 digits"),
)
_RANGES: Final = (
    ("billing_cycle", 1, 10**9, "must be at least 1"),
    ("billing_interval_days", 1, 10**9, "must be at least 1"),
    ("card_exp_month", 1, 12, "must be 1 to 12"),
    ("card_exp_year", 2000, 2099, "must be a four-digit year"),
)
_PAN_PREFILTER: Final = re.compile(r"\d(?:[ -]?\d){12}")
_TIMESTAMP: Final = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?"
_OFFSET: Final = r"(?:Z|[+-]\d{2}:?\d{2})"
_DECIMAL: Final = r"\d+(?:\.\d+)?"
_DATED: Final = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ].*)?")
_ENDS_WITH_OFFSET: Final = re.compile(_OFFSET + "$")
_MAX_LENGTHS: Final[dict[str, int]] = {
    c.name: c.type.length
    for c in Decline.__table__.columns
    if c.name in FEED_COLUMNS and isinstance(c.type, String) and c.type.length
}


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
    """One chunk after the checks: typed records of the good rows and the reasons of the bad ones.

    `records` hold the declines-table columns (amount as `amount_minor`, `declined_at` aware UTC);
    `lines[i]` is the file line of `records[i]`. `original` is the chunk as read, indexed by line, with
    every cell that looks like a card number replaced by PAN_MARKER: the only form safe to write out.
    """

    records: list[dict[str, Any]]
    lines: list[int]
    reasons: dict[int, list[str]]  # line -> reasons, for rejected rows
    original: pd.DataFrame
    blank_lines: int = 0

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
        self.found: list[tuple[str, np.ndarray[Any, Any], str | list[str]]] = []

    def add(self, column: str, mask: pd.Series | np.ndarray[Any, Any], message: str | list[str]) -> None:
        flags = np.asarray(mask, dtype=bool)
        if flags.any():
            self.found.append((column, flags, message))

    def by_row(self, pan_columns: dict[int, set[str]]) -> dict[int, list[str]]:
        rows: dict[int, list[str]] = {}
        for position, columns in pan_columns.items():
            rows[position] = [f"{c}: looks like a full card number (removed)" for c in sorted(columns)]
        for column, flags, message in self.found:
            for position in np.flatnonzero(flags).tolist():
                if column in pan_columns.get(position, ()):
                    continue  # never describe a card number, beyond saying it was there
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
) -> CheckedChunk:
    """Check every row of one chunk read with dtype=str and keep_default_na=False.

    `first_line` is the file line of the chunk's first row (the header is line 1). `gateways` are the
    ordinary gateway ids of the settings. `seen_transactions` maps each transaction id met so far in the
    file to its first line; it is updated, so a later duplicate in another chunk is still caught.
    """
    size = len(frame)
    lines = list(range(first_line, first_line + size))
    raw = frame.set_axis(lines, axis=0)
    overflow = [c for c in raw.columns if str(c).startswith(OVERFLOW_PREFIX)]
    original = raw.drop(columns=overflow)
    pan_columns = _mask_card_numbers(original)
    cells = original.reindex(columns=FEED_COLUMNS).apply(lambda s: s.str.strip())
    for column in _UPPER:
        cells[column] = cells[column].str.upper()
    blank = (original == "").all(axis=1).to_numpy() & (raw[overflow] == "").all(axis=1).to_numpy()

    problems = _Problems()
    if overflow:
        extra_fields = (raw[overflow] != "").any(axis=1)
        problems.add("line", extra_fields, f"more fields than the {len(original.columns)} of the header")
    present = {c: cells[c] != "" for c in FEED_COLUMNS}
    for column in _REQUIRED:
        problems.add(column, ~present[column], "required")
    for column, limit in _MAX_LENGTHS.items():
        problems.add(column, cells[column].str.len() > limit, f"longer than {limit} characters")
    for column, pattern, message in _PATTERNS:
        problems.add(column, present[column] & ~_matches(cells[column], pattern), message)

    lowered = {c: cells[c].str.lower() for c in _BOOLEANS}
    for column in _BOOLEANS:
        problems.add(
            column, present[column] & ~lowered[column].isin(("true", "false")), "must be true or false"
        )
    ints = {c: _matches(cells[c], r"\d{1,9}") for c in _INTS}
    numbers = {c: pd.to_numeric(cells[c].where(ints[c], "0")).astype("int64") for c in _INTS}
    for column in _INTS:
        problems.add(column, present[column] & ~ints[column], "must be a whole number")
    for column, low, high, message in _RANGES:
        problems.add(column, ints[column] & ((numbers[column] < low) | (numbers[column] > high)), message)

    order_type, gateway, currency = cells["order_type"], cells["gateway_id"], cells["currency"]
    problems.add(
        "order_type",
        present["order_type"] & ~order_type.isin(_ORDER_TYPES),
        "must be NEW_SALE, UPSALE or REBILL",
    )
    problems.add(
        "response_type",
        present["response_type"] & ~cells["response_type"].isin(_RESPONSE_TYPES),
        "must be SOFT_DECLINE or HARD_DECLINE",
    )
    is_rebill = order_type == "REBILL"
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
    is_flexfactor = gateway.isin(list(flexfactor_gateways))
    problems.add("gateway_id", is_flexfactor, "is a FlexFactor gateway; declines come from ordinary gateways")
    problems.add(
        "gateway_id",
        present["gateway_id"] & ~is_flexfactor & ~gateway.isin(list(gateways)),
        "not a gateway in the settings",
    )
    known_currency = currency.map(is_known_currency).astype(bool)
    problems.add("currency", present["currency"] & ~known_currency, "not a known ISO 4217 currency")

    declined_at, offsets, time_problems = _parse_timestamps(cells["declined_at"])
    problems.add("declined_at", present["declined_at"] & (time_problems != ""), time_problems.tolist())
    amounts, amount_problems = _parse_amounts(cells["amount"], currency, known_currency)
    problems.add("amount", present["amount"] & (amount_problems != ""), amount_problems.tolist())
    problems.add("transaction_id", *_duplicates(cells["transaction_id"], lines, seen_transactions, blank))

    reasons_by_position = problems.by_row(pan_columns)
    good = [p for p in range(size) if p not in reasons_by_position and not blank[p]]
    return CheckedChunk(
        records=_typed(cells.iloc[good], declined_at, offsets, amounts, good),
        lines=[lines[p] for p in good],
        reasons={lines[p]: r for p, r in reasons_by_position.items() if not blank[p]},
        original=original,
        blank_lines=int(blank.sum()),
    )


def _matches(values: pd.Series, pattern: str) -> pd.Series:
    return values.str.fullmatch(pattern).fillna(False).astype(bool)


def _mask_card_numbers(original: pd.DataFrame) -> dict[int, set[str]]:
    """Replace, in place, every cell holding a full card number; return row position -> columns."""
    found: dict[int, set[str]] = {}
    for index, column in enumerate(original.columns):
        values: list[str] = original[column].tolist()
        # One regex pass over the joined column instead of one call per cell; "\n" never joins digits.
        joined = "\n".join(values)
        if _PAN_PREFILTER.search(joined) is None:
            continue
        starts = np.cumsum([0] + [len(v) + 1 for v in values[:-1]])
        candidates = {
            int(np.searchsorted(starts, m.start(), side="right")) - 1 for m in _PAN_PREFILTER.finditer(joined)
        }
        hits = sorted(p for p in candidates if contains_pan(values[p]))
        for position in hits:
            found.setdefault(position, set()).add(str(column))
        if hits:
            original.iloc[hits, index] = PAN_MARKER
    return found


def _parse_timestamps(values: pd.Series) -> tuple[list[datetime | None], list[int], np.ndarray[Any, Any]]:
    """Aware UTC instants, their original UTC offsets in minutes, and a reason for each bad value."""
    well_formed = _matches(values, _TIMESTAMP + _OFFSET).tolist()
    instants: list[datetime | None] = []
    offsets: list[int] = []
    problems = np.full(len(values), "", dtype=object)
    for position, (text, ok) in enumerate(zip(values.tolist(), well_formed, strict=True)):
        instant = None
        if ok:
            try:
                instant = datetime.fromisoformat(text)
            except ValueError:
                instant = None
        offset = instant.utcoffset() if instant is not None else None
        if instant is None or offset is None:
            instants.append(None)
            offsets.append(0)
            no_offset = _DATED.fullmatch(text) is not None and _ENDS_WITH_OFFSET.search(text) is None
            problems[position] = "no UTC offset" if no_offset else "not an ISO 8601 timestamp with offset"
            continue
        instants.append(instant.astimezone(UTC))
        offsets.append(int(offset.total_seconds()) // 60)
    return instants, offsets, problems


def _parse_amounts(
    values: pd.Series, currency: pd.Series, known_currency: pd.Series
) -> tuple[list[int], np.ndarray[Any, Any]]:
    """Minor units through money.parse_minor, once per distinct (amount, currency) pair."""
    well_formed = _matches(values, _DECIMAL).tolist()
    cache: dict[tuple[str, str], tuple[int, str]] = {}
    amounts: list[int] = []
    problems = np.full(len(values), "", dtype=object)
    rows = zip(values.tolist(), currency.tolist(), well_formed, known_currency.tolist(), strict=True)
    for position, (text, code, ok, known) in enumerate(rows):
        if not ok:
            amounts.append(0)
            problems[position] = "must be a decimal amount such as 29.99"
            continue
        if not known:
            amounts.append(0)  # the currency column already says why
            continue
        if (text, code) not in cache:
            try:
                minor = parse_minor(text, code)
                cache[(text, code)] = (minor, "" if minor > 0 else "must be more than zero")
            except ValueError:
                cache[(text, code)] = (0, f"more decimal places than {code} has")
        minor, problem = cache[(text, code)]
        amounts.append(minor)
        problems[position] = problem
    return amounts, problems


def _duplicates(
    ids: pd.Series, lines: list[int], seen: MutableMapping[str, int], blank: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], list[str]]:
    flags = np.zeros(len(lines), dtype=bool)
    messages = [""] * len(lines)
    for position, (value, line) in enumerate(zip(ids.tolist(), lines, strict=True)):
        if not value or blank[position]:
            continue
        first = seen.setdefault(value, line)
        if first != line:
            flags[position] = True
            messages[position] = f"duplicate of line {first}"
    return flags, messages


def _typed(
    cells: pd.DataFrame,
    declined_at: list[datetime | None],
    offsets: list[int],
    amounts: list[int],
    good: list[int],
) -> list[dict[str, Any]]:
    """Row dicts of the good rows, keyed by declines-table columns."""
    columns: dict[str, list[Any]] = {}
    for column in FEED_COLUMNS:
        values: list[str] = cells[column].tolist()
        if column in _BOOLEANS:
            columns[column] = [v.lower() == "true" for v in values]
        elif column in _INTS:
            columns[column] = [int(v) if v else None for v in values]
        elif column not in ("amount", "declined_at"):
            columns[column] = [v or None for v in values]
    columns["declined_at"] = [declined_at[p] for p in good]
    columns["utc_offset_minutes"] = [offsets[p] for p in good]
    columns["amount_minor"] = [amounts[p] for p in good]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
