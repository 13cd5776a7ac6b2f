"""Card data rules: spot anything that looks like a full card number (PAN), and mask it for display.

One rule, shared by the feed import, the /evaluate gate and the scrubbing of vendor messages:

- Digits are any Unicode decimal digits (full-width "４", Arabic-Indic "٤", ...), read as 0-9.
- A card number may be written in groups: digit groups joined by 1 to 3 separator characters
  (whitespace or punctuation of any script: "4539.5787.6362.1486", "4539  5787  6362  1486",
  "4539/5787/6362/1486", "4539-5787-6362-1486", no-break spaces, ideographic full stops).
- A candidate is a run of whole consecutive groups holding 13 to 19 digits, whose first digit is
  not 0 (ISO/IEC 7812 issues no payment card under major industry identifier 0), passing Luhn.
- Shape, not Luhn alone: a digit group glued to a letter ("tok_r00012739561822", a hex id such as
  "9f3e1422...") is part of a word or token, not a card number written out, and takes no part.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["PanSpan", "contains_pan", "find_pans", "looks_like_pan", "luhn_ok", "mask", "mask_pans"]

_MIN_DIGITS: Final = 13
_MAX_DIGITS: Final = 19
_MAX_SEPARATORS: Final = 3  # characters between two groups of one number ("4539 - 5787" still counts)


@dataclass(frozen=True)
class PanSpan:
    """Where a card number sits in a text: [start, end) and its digits in ASCII."""

    start: int
    end: int
    digits: str


def luhn_ok(digits: str) -> bool:
    """True if the ASCII digit string passes the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


@dataclass(frozen=True)
class _Group:
    start: int
    end: int
    digits: str  # ASCII
    glued: bool  # a letter (or other non-separator, non-digit character) touches it


def _groups(text: str) -> list[_Group]:
    groups: list[_Group] = []
    i, n = 0, len(text)
    while i < n:
        if not text[i].isdecimal():
            i += 1
            continue
        start = i
        while i < n and text[i].isdecimal():
            i += 1
        digits = "".join(str(unicodedata.decimal(ch)) for ch in text[start:i])
        glued = (start > 0 and text[start - 1].isalpha()) or (i < n and text[i].isalpha())
        groups.append(_Group(start, i, digits, glued))
    return groups


def _chains(text: str, groups: list[_Group]) -> Iterator[list[_Group]]:
    """Runs of groups that may together be one written number: unglued, close, separators between."""
    chain: list[_Group] = []
    for group in groups:
        if group.glued:
            if chain:
                yield chain
            chain = []
            continue
        if chain:
            gap = text[chain[-1].end : group.start]
            if not (len(gap) <= _MAX_SEPARATORS and all(map(_is_separator, gap))):
                yield chain
                chain = []
        chain.append(group)
    if chain:
        yield chain


def find_pans(text: str) -> Iterator[PanSpan]:
    """Every card number written in `text` (see the module's rule), left to right, not overlapping."""
    if len(text) < _MIN_DIGITS or sum(ch.isdecimal() for ch in text) < _MIN_DIGITS:
        return
    for chain in _chains(text, _groups(text)):
        yield from _chain_pans(chain)


def _chain_pans(chain: list[_Group]) -> Iterator[PanSpan]:
    first = 0
    while first < len(chain):
        found = None
        digits = ""
        for last in range(first, len(chain)):
            digits += chain[last].digits
            if len(digits) > _MAX_DIGITS:
                break
            if len(digits) >= _MIN_DIGITS and digits[0] != "0" and luhn_ok(digits):
                found = PanSpan(chain[first].start, chain[last].end, digits)
                first = last
                break
        if found is not None:
            yield found
        first += 1


def contains_pan(text: str) -> bool:
    """True if `text` holds a card number anywhere, written in any of the ways the rule covers."""
    return next(find_pans(text), None) is not None


def looks_like_pan(value: str) -> bool:
    """True if `value` as a whole is a card number: nothing but digits and separators, and a PAN in it."""
    text = value.strip()
    if not all(ch.isdecimal() or _is_separator(ch) for ch in text):
        return False
    return contains_pan(text)


def mask(value: str) -> str:
    """Keep only the last four characters: "************1111"."""
    return "*" * max(len(value) - 4, 0) + value[-4:]


def mask_pans(text: str) -> str:
    """`text` with every written number that holds a card number masked whole, down to its last four
    digits ("************1111"): the whole run of digit groups, so that no digits of the card number
    stay beside a window the rule matched first."""
    if not contains_pan(text):
        return text
    parts: list[str] = []
    at = 0
    for chain in _chains(text, _groups(text)):
        if next(_chain_pans(chain), None) is None:
            continue
        parts.extend((text[at : chain[0].start], mask("".join(g.digits for g in chain))))
        at = chain[-1].end
    parts.append(text[at:])
    return "".join(parts)
