"""Mermaid drawings of the hand-off lifecycle table and the outcome table, generated from the data."""

from __future__ import annotations

from recycle_engine.domain.outcomes import (
    OUTCOMES,
    TRIAL_EXCEPTION,
    OrderKind,
    OutcomeEffect,
    leaves_no_payment_token,
)
from recycle_engine.domain.states import FINAL_STATES, HOLDS, STARTS, TRANSITIONS, Event, State

__all__ = ["held_events", "mermaid_outcome_table", "mermaid_state_diagram"]


def held_events() -> dict[State, list[Event]]:
    """The events each state takes without moving (states.HOLDS), by state, in table order."""
    held: dict[State, list[Event]] = {}
    for state in State:
        events = [event for event, states in HOLDS.items() if state in states]
        if events:
            held[state] = events
    return held


def mermaid_state_diagram() -> str:
    """A Mermaid `stateDiagram-v2`: one edge per start (states.STARTS) and per entry of
    states.TRANSITIONS, labelled by event, and one loop per state naming the events it holds on."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {state} : {event}" for event, state in STARTS.items()]
    lines += [f"    {source} --> {target} : {event}" for (source, event), target in TRANSITIONS.items()]
    lines += [f"    {state} --> {state} : {', '.join(events)}" for state, events in held_events().items()]
    lines += [f"    {state} --> [*]" for state in State if state in FINAL_STATES]
    return "\n".join(lines) + "\n"


def mermaid_outcome_table() -> str:
    """A Mermaid flowchart: order kind, then FlexFactor result, then what the engine does (SPEC section 1)."""
    lines = ["flowchart LR"]
    for kind in OrderKind:
        kind_id = _node_id(kind)
        lines.append(f'    {kind_id}["{kind}"]')
        for success in (True, False):
            result = "success" if success else "failure"
            node = f"{kind_id}_{result}"
            lines.append(
                f'    {kind_id} -->|{result}| {node}["{_describe(OUTCOMES[(kind, success)], kind, success)}"]'
            )
            trial = TRIAL_EXCEPTION.get((kind, success))
            if trial is not None:
                lines.append(
                    f'    {kind_id} -->|"{result}, completes a trial"| {node}_trial["{_describe(trial, kind, success)}"]'
                )
    return "\n".join(lines) + "\n"


def _node_id(kind: OrderKind) -> str:
    return kind.name.lower()


def _describe(effect: OutcomeEffect, kind: OrderKind, success: bool) -> str:
    parts: list[str] = []
    parts.append(f"order {effect.order_status}" if effect.order_status else "order status unchanged")
    if effect.subscription_status:
        parts.append(f"subscription {effect.subscription_status}")
    if effect.failure_cause:
        parts.append(f"cause {effect.failure_cause}")
    if effect.advance_cycle:
        parts.append("subscription moves to the next billing cycle")
    if effect.create_fulfillments:
        parts.append("fulfillments for shippable items")
    if effect.revert_gateway:
        parts.append("gateway reverts to the declining gateway")
    if leaves_no_payment_token(kind=kind, success=success, recurring_product=True):
        parts.append("no payment token left for rebills of recurring products")
    return "<br/>".join(parts)
