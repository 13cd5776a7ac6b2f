"""Pure pandas for the holdout comparison: each group's recovery, the lift and its 95 % interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import pandas as pd

from recycle_engine.reports.recovery import rate

__all__ = ["ARMS", "Z_95", "Lift", "difference_interval", "lift_summary"]

ARMS: Final = ("FLEXFACTOR", "HOLDOUT")
Z_95: Final = 1.959963984540054  # two-sided 95 % quantile of the standard normal
_OUTCOMES: Final = ("recovered", "lost", "pending")


@dataclass(frozen=True)
class Lift:
    """FlexFactor group against holdout group, on the subscriptions whose outcome is settled."""

    groups: pd.DataFrame  # per arm: assigned, recovered, lost, pending, settled, rate_settled, rate_to_date
    amounts: pd.DataFrame  # per currency: each arm's submitted and recovered minor units and rate by amount
    lift: float  # rate_settled(FLEXFACTOR) - rate_settled(HOLDOUT); NaN without both groups
    low: float  # 95 % interval of the lift (normal approximation)
    high: float
    n_flexfactor: int  # settled sample sizes the rates and the interval use
    n_holdout: int


def difference_interval(
    recovered_a: int, n_a: int, recovered_b: int, n_b: int, *, z: float = Z_95
) -> tuple[float, float, float]:
    """(p_a - p_b, low, high): the difference of two proportions with a Wald interval.

    Standard error sqrt(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b); NaN when either group is empty. The normal
    approximation is poor for small groups or rates near 0 or 1; the report says so beside it."""
    if n_a == 0 or n_b == 0:
        nan = float("nan")
        return nan, nan, nan
    p_a, p_b = recovered_a / n_a, recovered_b / n_b
    diff = p_a - p_b
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return diff, diff - z * se, diff + z * se


def lift_summary(facts: pd.DataFrame) -> Lift:
    """From rows (arm, currency, outcome, n, assigned_minor, recovered_minor): both groups and the lift.

    Settled = recovered + lost; the rates, the lift and the sample sizes use settled subscriptions
    only, so that FlexFactor's 21-day window and the holdout's shorter ladder compare like with like.
    Counts from every currency add up (they are subscriptions); amounts never mix currencies."""
    counts: dict[str, dict[str, int]] = {}
    for arm in ARMS:
        part = facts[facts["arm"] == arm] if not facts.empty else facts
        n = {o: int(part[part["outcome"] == o]["n"].sum()) if not part.empty else 0 for o in _OUTCOMES}
        counts[arm] = n | {"settled": n["recovered"] + n["lost"]}
    groups = pd.DataFrame(
        [
            {
                "arm": arm,
                "assigned": n["settled"] + n["pending"],
                **n,
                "rate_settled": rate(n["recovered"], n["settled"]),
                "rate_to_date": rate(n["recovered"], n["settled"] + n["pending"]),
            }
            for arm, n in counts.items()
        ]
    )
    ff, ho = counts["FLEXFACTOR"], counts["HOLDOUT"]
    diff, low, high = difference_interval(ff["recovered"], ff["settled"], ho["recovered"], ho["settled"])
    return Lift(groups, _amounts(facts), diff, low, high, ff["settled"], ho["settled"])


def _amounts(facts: pd.DataFrame) -> pd.DataFrame:
    """Per currency and arm: the attempt amounts of every subscription that reached the slot (pending
    ones too), what was recovered of them, and the rate by amount, recovered ÷ submitted, as every
    table of the report defines it."""
    columns = ["currency"] + [
        f"{m}_{arm.lower()}" for arm in ARMS for m in ("submitted_minor", "recovered_minor")
    ]
    if facts.empty:
        return pd.DataFrame({c: [] for c in [*columns, "rate_flexfactor", "rate_holdout", "difference"]})
    wide = facts.groupby(["currency", "arm"])[["assigned_minor", "recovered_minor"]].sum().unstack("arm")
    out = pd.DataFrame({"currency": wide.index})
    for arm in ARMS:
        for src, name in (("assigned_minor", "submitted_minor"), ("recovered_minor", "recovered_minor")):
            values = wide[(src, arm)] if (src, arm) in wide.columns else pd.Series(0, index=wide.index)
            out[f"{name}_{arm.lower()}"] = values.fillna(0).astype("int64").to_numpy()
    for arm in ARMS:
        low = arm.lower()
        out[f"rate_{low}"] = [
            rate(r, s)
            for r, s in zip(out[f"recovered_minor_{low}"], out[f"submitted_minor_{low}"], strict=True)
        ]
    out["difference"] = out["rate_flexfactor"] - out["rate_holdout"]
    return out.sort_values("currency").reset_index(drop=True)
