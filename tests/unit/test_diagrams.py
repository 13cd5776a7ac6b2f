"""Mermaid drawings of the lifecycle and outcome tables, for the README."""

from __future__ import annotations

from recycle_engine.domain.diagrams import held_events, mermaid_outcome_table, mermaid_state_diagram
from recycle_engine.domain.outcomes import OrderKind
from recycle_engine.domain.states import FINAL_STATES, HOLDS, STARTS, TRANSITIONS, State


def test_given_the_lifecycle_table_then_every_transition_is_drawn_once() -> None:
    # when
    lines = mermaid_state_diagram().splitlines()

    # then
    assert lines[0] == "stateDiagram-v2"
    edges = [line.strip() for line in lines if " : " in line]
    expected = [f"{source} --> {target} : {event}" for (source, event), target in TRANSITIONS.items()]
    expected += [f"[*] --> {state} : {event}" for event, state in STARTS.items()]
    expected += [f"{state} --> {state} : {', '.join(events)}" for state, events in held_events().items()]
    assert sorted(edges) == sorted(expected)


def test_given_the_hold_table_then_each_held_event_is_drawn_on_every_state_that_takes_it() -> None:
    # when
    lines = {line.strip() for line in mermaid_state_diagram().splitlines()}

    # then
    for event, states in HOLDS.items():
        for state in states:
            loops = [line.split(" : ")[1] for line in lines if line.startswith(f"{state} --> {state} : ")]
            assert any(event in loop.split(", ") for loop in loops)


def test_given_the_lifecycle_table_then_it_starts_at_pending_and_ends_at_every_final_state() -> None:
    # when
    lines = {line.strip() for line in mermaid_state_diagram().splitlines()}

    # then
    assert f"[*] --> {State.PENDING} : CREATED" in lines
    assert {f"{state} --> [*]" for state in FINAL_STATES} <= lines


def test_given_the_outcome_table_then_each_row_and_the_trial_exception_are_drawn() -> None:
    # when
    text = mermaid_outcome_table()

    # then
    assert text.startswith("flowchart LR\n")
    for kind in OrderKind:
        assert f'["{kind}"]' in text
        assert f"{kind.name.lower()} -->|success|" in text
        assert f"{kind.name.lower()} -->|failure|" in text
    assert '-->|"failure, completes a trial"|' in text


def test_given_the_outcome_table_then_the_effects_of_the_spec_are_named() -> None:
    # when
    text = mermaid_outcome_table()

    # then
    for phrase in (
        "order COMPLETE",
        "order DECLINED",
        "order status unchanged",
        "fulfillments for shippable items",
        "subscription moves to the next billing cycle",
        "gateway reverts to the declining gateway",
        "subscription RECYCLE_FAILED",
        "cause FLEXFACTOR_FAILED",
        "no payment token",
    ):
        assert phrase in text
