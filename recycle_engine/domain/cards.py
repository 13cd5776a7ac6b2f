"""Card data rules: spot anything that looks like a full card number (PAN), and mask for display."""

from __future__ import annotations

import re

__all__ = ["contains_pan", "looks_like_pan", "luhn_ok", "mask"]

# 13-19 digits, optionally grouped by single spaces or dashes, not glued to other digits.
_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn_ok(digits: str) -> bool:
    """True if the digit string passes the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def looks_like_pan(value: str) -> bool:
    """True if `value` as a whole is 13-19 digits (spaces/dashes allowed) passing Luhn."""
    digits = re.sub(r"[ -]", "", value.strip())
    return 13 <= len(digits) <= 19 and digits.isdigit() and luhn_ok(digits)


def contains_pan(text: str) -> bool:
    """True if any run of 13-19 digits inside `text` passes Luhn."""
    if len(text) < 13:
        return False
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return True
    return False


def mask(value: str) -> str:
    """Keep only the last four characters: "************1111"."""
    return "*" * max(len(value) - 4, 0) + value[-4:]
