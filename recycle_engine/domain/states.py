"""The hand-off lifecycle as a table: states, events and the allowed moves."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from recycle_engine.errors import IllegalTransition

__all__ = [
    "FINAL_STATES",
    "OPEN_STATES",
    "TRANSITIONS",
    "Event",
    "OutcomeSource",
    "Source",
    "State",
    "advance",
    "may_overwrite",
]


class State(enum.StrEnum):
    """Where one FlexFactor hand-off stands (export column `state`)."""

    PENDING = "PENDING"  # written before sending, or sent with its answer lost
    SUBMITTED = "SUBMITTED"  # FlexFactor accepted it and is still working
    APPROVED = "APPROVED"  # rescued: money collected
    DECLINED = "DECLINED"  # FlexFactor would not or could not rescue it
    EXPIRED = "EXPIRED"  # the retry window closed without a rescue
    CANCELLED = "CANCELLED"  # cancelled by FlexFactor or by us
    FAILED = "FAILED"  # never accepted (validation error, or absent after resends)


class Event(enum.StrEnum):
    """What can happen to a hand-off."""

    ACCEPTED = "ACCEPTED"  # FlexFactor took it and answered a non-final status
    APPROVED = "APPROVED"  # FlexFactor reports a rescue
    DECLINED = "DECLINED"  # FlexFactor reports it will not rescue
    EXPIRED = "EXPIRED"  # FlexFactor reports the window closed
    CANCELLED = "CANCELLED"  # FlexFactor reports a cancellation
    REJECTED = "REJECTED"  # FlexFactor refused the request (400), or it was never found after resends
    UNKNOWN = "UNKNOWN"  # the answer was lost (timeout, 5xx): look it up before anything else
    WINDOW_ENDED = "WINDOW_ENDED"  # our clock passed expires_at with no final outcome


class Source(enum.StrEnum):
    """Hand-off kind (export column `source`)."""

    RECYCLE = "RECYCLE"
    RERUN = "RERUN"
    CASCADE = "CASCADE"


class OutcomeSource(enum.StrEnum):
    """How an outcome reached us (export column `outcome_source`)."""

    RESPONSE = "RESPONSE"
    WEBHOOK = "WEBHOOK"
    POLL = "POLL"
    EXPIRY = "EXPIRY"


OPEN_STATES: Final = frozenset({State.PENDING, State.SUBMITTED})
FINAL_STATES: Final = frozenset(State) - OPEN_STATES

_P, _S = State.PENDING, State.SUBMITTED

TRANSITIONS: Final[Mapping[tuple[State, Event], State]] = {
    (_P, Event.ACCEPTED): _S,
    (_P, Event.APPROVED): State.APPROVED,
    (_P, Event.DECLINED): State.DECLINED,
    (_P, Event.EXPIRED): State.EXPIRED,
    (_P, Event.CANCELLED): State.CANCELLED,
    (_P, Event.REJECTED): State.FAILED,
    (_P, Event.UNKNOWN): _P,
    (_P, Event.WINDOW_ENDED): State.EXPIRED,
    (_S, Event.ACCEPTED): _S,
    (_S, Event.APPROVED): State.APPROVED,
    (_S, Event.DECLINED): State.DECLINED,
    (_S, Event.EXPIRED): State.EXPIRED,
    (_S, Event.CANCELLED): State.CANCELLED,
    (_S, Event.WINDOW_ENDED): State.EXPIRED,
    # A rescue reported after we settled the window ourselves is real money: apply it and flag it.
    (State.EXPIRED, Event.APPROVED): State.APPROVED,
    # Repeats of the same final news change nothing.
    (State.APPROVED, Event.APPROVED): State.APPROVED,
    (State.DECLINED, Event.DECLINED): State.DECLINED,
    (State.EXPIRED, Event.EXPIRED): State.EXPIRED,
    (State.EXPIRED, Event.WINDOW_ENDED): State.EXPIRED,
    (State.CANCELLED, Event.CANCELLED): State.CANCELLED,
}


def advance(state: State, event: Event) -> State:
    """The state after `event`; raises IllegalTransition for a pair the table lacks."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"hand-off in {state} cannot take {event}") from None


def may_overwrite(current: State, new: State) -> bool:
    """Whether `new` may be written over `current`: a move the table allows, or a repeat. A state read
    before another writer recorded a final outcome (a poll racing a webhook) must not undo it."""
    if current in OPEN_STATES or new == current:
        return True
    return any(TRANSITIONS.get((current, event)) == new for event in Event)


def state_for_event(event: Event) -> State | None:
    """The final state an outcome event leads to from an open hand-off (None if not final)."""
    target = TRANSITIONS.get((State.SUBMITTED, event)) or TRANSITIONS.get((State.PENDING, event))
    return target if target in FINAL_STATES else None
