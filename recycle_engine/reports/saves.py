"""Pure pandas for the recycle saves per billing cycle: which cycles FlexFactor hand-offs win back."""

from __future__ import annotations

import pandas as pd

from recycle_engine.reports.recovery import amount_summary, count_summary

__all__ = ["saves_by_cycle"]


def _cycle_order(cycle: object) -> int:
    text = str(cycle)
    return int(text) if text.isdigit() else 10**9  # a cycle is an int >= 1; anything else goes last


def saves_by_cycle(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts, amounts) per billing cycle, in cycle order, from rows `key` (the cycle), `state`,
    `currency`, `n`, `amount_minor`: hand-offs made, recovered (the saves), lost, pending, both rates;
    and per cycle and currency, submitted and recovered minor units. Currencies never mix."""
    f = frame.rename(columns={"key": "cycle"}).drop(columns=["code"], errors="ignore")
    f["cycle"] = f["cycle"].astype(str)
    counts = count_summary(f, ["cycle"])
    counts = (
        counts.assign(_o=counts["cycle"].map(_cycle_order))
        .sort_values(["_o", "cycle"])
        .drop(columns="_o")
        .reset_index(drop=True)
    )
    return counts, amount_summary(f, ["cycle"])
