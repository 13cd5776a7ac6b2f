"""The hand-off lifecycle as a table: states, events and the allowed moves."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from recycle_engine.errors import IllegalTransition

__all__ = [
    "FINAL_STATES",
    "HOLDS",
    "OPEN_STATES",
    "STARTS",
    "TRANSITIONS",
    "Event",
    "OutcomeSource",
    "Source",
    "State",
    "advance",
    "reported",
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
    """What can happen to a hand-off (export and event-log column `kind`)."""

    CREATED = "CREATED"  # written, body and key fixed, before any call
    ACCEPTED = "ACCEPTED"  # FlexFactor took it and answered a non-final status
    APPROVED = "APPROVED"  # FlexFactor reports a rescue
    DECLINED = "DECLINED"  # FlexFactor reports it will not rescue
    EXPIRED = "EXPIRED"  # FlexFactor reports the window closed
    CANCELLED = "CANCELLED"  # FlexFactor reports a cancellation
    REJECTED = "REJECTED"  # FlexFactor refused the request (400), or it was never found after resends
    UNKNOWN = "UNKNOWN"  # the answer was lost (timeout, 5xx): look it up before anything else
    WINDOW_ENDED = "WINDOW_ENDED"  # our clock passed expires_at with no final outcome
    # Recorded without a move (HOLDS):
    NOT_SENT = "NOT_SENT"  # it never reached FlexFactor (unreachable, misconfigured): send it again later
    RATE_LIMITED = "RATE_LIMITED"  # FlexFactor said slow down (429): send it again later, same key
    ABSENT = "ABSENT"  # a lookup confirmed FlexFactor never got it: resend the same body and key
    LOOKUP_ERROR = "LOOKUP_ERROR"  # the lookup of a lost answer failed: look again later
    POLLED = "POLLED"  # FlexFactor is still working on it
    POLL_ERROR = "POLL_ERROR"  # the poll failed: poll again later
    POLL_NOT_FOUND = "POLL_NOT_FOUND"  # FlexFactor does not know the order it gave us
    CONFLICT = "CONFLICT"  # FlexFactor reported a move the table refuses: flagged, state kept


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

# How a hand-off comes to be: written PENDING, or FAILED at once when its request cannot be built.
STARTS: Final[Mapping[Event, State]] = {Event.CREATED: State.PENDING, Event.REJECTED: State.FAILED}

# Events recorded in the event log that leave the state as it is, and the states that may take them.
HOLDS: Final[Mapping[Event, frozenset[State]]] = {
    Event.NOT_SENT: frozenset({_P}),
    Event.RATE_LIMITED: frozenset({_P}),
    Event.ABSENT: frozenset({_P}),
    Event.LOOKUP_ERROR: frozenset({_P}),
    Event.POLLED: OPEN_STATES,
    Event.POLL_ERROR: OPEN_STATES,
    Event.POLL_NOT_FOUND: OPEN_STATES,
    Event.CONFLICT: frozenset(State),
}


def advance(state: State | None, event: Event) -> State:
    """The state after `event` (`state` None: the hand-off is being created); raises IllegalTransition
    for a pair the tables lack. Every write of a hand-off's state column goes through here."""
    if state is None:
        start = STARTS.get(event)
        if start is None:
            raise IllegalTransition(f"a hand-off cannot start with {event}")
        return start
    if state in HOLDS.get(event, ()):
        return state
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"hand-off in {state} cannot take {event}") from None


# The event a status FlexFactor reports stands for (its non-final statuses all read as SUBMITTED).
_REPORTED: Final[Mapping[State, Event]] = {
    State.SUBMITTED: Event.ACCEPTED,
    State.APPROVED: Event.APPROVED,
    State.DECLINED: Event.DECLINED,
    State.EXPIRED: Event.EXPIRED,
    State.CANCELLED: Event.CANCELLED,
}


def reported(state: State) -> Event:
    """The event of FlexFactor reporting a hand-off in `state` (an answer, a lookup, a poll)."""
    try:
        return _REPORTED[state]
    except KeyError:
        raise IllegalTransition(f"FlexFactor does not report hand-offs as {state}") from None
