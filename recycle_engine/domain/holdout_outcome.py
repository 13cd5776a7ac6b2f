"""A holdout assignment's outcome as it now stands: recovered, lost, or still open."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = ["LOST", "RECOVERED", "Settled", "settle"]

RECOVERED: Final = "recovered"
LOST: Final = "lost"


@dataclass(frozen=True)
class Settled:
    """`outcome` RECOVERED or LOST with the instant it became final, or all None while open."""

    outcome: str | None
    final_at: datetime | None
    recovered_minor: int | None


def settle(
    assigned_at: datetime,
    flexfactor: tuple[datetime | None, int | None],
    retry: tuple[datetime | None, int | None],
    *,
    recycling: bool,
) -> Settled:
    """From the last FlexFactor approval and the last approved retry of the recycled decline (instant,
    largest amount in minor units; None when there is none) and whether the subscription is still on
    that decline's ladder.

    Recovered once approved, final at the last approval (until then a report may read an earlier
    approval's amount); FlexFactor's amount is what counts as collected when both approved. Lost, from
    its assignment on, when never approved and off that ladder: the report reads the subscription as
    it is now, whatever its day. Otherwise open."""
    approvals = [at for at, _ in (flexfactor, retry) if at is not None]
    if approvals:
        collected = flexfactor[1] if flexfactor[1] is not None else retry[1]
        return Settled(RECOVERED, max(approvals), collected)
    if recycling:
        return Settled(None, None, None)
    return Settled(LOST, assigned_at, 0)
