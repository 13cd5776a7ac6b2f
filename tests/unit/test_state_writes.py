"""No module writes a hand-off's state column except through the lifecycle table.

Every write of `handoffs.state` goes through `storage.handoff_repo._state_column`, which only ever holds a
state `domain.states.advance` returned. This test walks the source of every package we ship and fails on
any other place that sets a `state` key, keyword, item or attribute, unless it is listed below with the
reason it is not a hand-off's state."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from recycle_engine.domain.states import (
    FINAL_STATES,
    HOLDS,
    OPEN_STATES,
    STARTS,
    TRANSITIONS,
    Event,
    State,
    advance,
    reported,
)
from recycle_engine.errors import IllegalTransition
from recycle_engine.storage.handoff_repo import HandoffUpdate

ROOT = Path(__file__).resolve().parents[2]
PACKAGES: Final = ("recycle_engine", "jobs", "reports")
# FlexFactor's and NMI's stand-ins keep their own orders' states, never ours.
NOT_OURS: Final = ("recycle_engine/sandbox/", "recycle_engine/nmi_fake/", "recycle_engine/crm_fake/")

# (module, enclosing function) -> why the `state` written there is not a hand-off's state column.
ALLOWED: Final = {
    ("recycle_engine/storage/handoff_repo.py", "_state_column"): "the one write of handoffs.state",
    ("recycle_engine/services/nightly/processor_charges.py", "claim_charges"): "processor_charges.state",
    ("recycle_engine/storage/processor_charge_repo.py", "record_charge_attempt"): "processor_charges.state",
    ("recycle_engine/services/export.py", "submission_rows"): "a row of the export file, read back",
    ("recycle_engine/demo/book.py", "_base"): "a generated customer's address",
    ("recycle_engine/services/initial_sales/cascade.py", "cascade_order"): "a log line's fields",
    (
        "recycle_engine/services/nightly/claiming.py",
        "_handoff_request",
    ): "the customer's address in the request",
    ("recycle_engine/adapters/flexfactor_payload.py", "build_evaluate_body"): "the address in the body",
    ("recycle_engine/storage/order_repo.py", "handoff_views"): "a hand-off's state, read into a view",
    ("recycle_engine/adapters/flexfactor_codes.py", "evaluate_answer"): "FlexFactor's answer, read",
    ("recycle_engine/adapters/flexfactor_codes.py", "order_snapshot"): "FlexFactor's order, read",
    ("recycle_engine/reports/rollup_queries.py", "_as_of"): "a rollup's state as of the report day, read",
    ("recycle_engine/storage/delivery_repo.py", "claim_delivery"): "report_deliveries.state",
    ("recycle_engine/adapters/crm_rows.py", "<module>"): "the CRM's address field, mapped",
    ("recycle_engine/services/crm/push.py", "queue"): "crm_deliveries.state",
    ("recycle_engine/services/crm/push.py", "_fresh"): "crm_deliveries.state",
    ("recycle_engine/services/crm/push.py", "_set"): "crm_deliveries.state",
    ("recycle_engine/storage/crm_repo.py", "mark_sending"): "crm_deliveries.state",
    ("recycle_engine/storage/delivery_repo.py", "finish_delivery"): "report_deliveries.state",
}


def state_writes(root: Path) -> Iterator[tuple[str, str, int]]:
    """(module, enclosing function, line) of every `"state": ...`, `state=...`, `x["state"] = ...`,
    `x.state = ...` and `{Model.state: ...}` under the shipped packages of `root`."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = path.relative_to(root).as_posix()
            if module.startswith(NOT_OURS) or "/migrations/" in module:
                continue
            yield from _writes_in(module, ast.parse(path.read_text(encoding="utf-8")))


def _writes_in(module: str, tree: ast.Module) -> Iterator[tuple[str, str, int]]:
    def walk(node: ast.AST, function: str) -> Iterator[tuple[str, str, int]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if _writes_state(node):
            yield module, function, getattr(node, "lineno", 0)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, function)

    return walk(tree, "<module>")


def _is_state(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return node.value == "state"
    return isinstance(node, ast.Attribute) and node.attr == "state"


def _writes_state(node: ast.AST) -> bool:
    if isinstance(node, ast.Dict):
        return any(_is_state(key) for key in node.keys)
    if isinstance(node, ast.keyword):
        return node.arg == "state"
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(
            (isinstance(t, ast.Subscript) and _is_state(t.slice))
            or (isinstance(t, ast.Attribute) and t.attr == "state")
            for t in targets
        )
    return False


def test_given_the_code_base_then_no_module_writes_a_state_column_outside_the_lifecycle_table() -> None:
    # when
    found = list(state_writes(ROOT))

    # then
    stray = [
        f"{module}:{line} in {function}()"
        for module, function, line in found
        if (module, function) not in ALLOWED
    ]
    assert stray == [], "a hand-off state may only change through domain.states.advance and handoff_repo"
    stale = set(ALLOWED) - {(module, function) for module, function, _ in found}
    assert stale == set(), "listed places that no longer write a `state`: take them off the list"


def test_given_a_module_that_writes_a_state_key_then_the_walk_finds_it() -> None:
    # given
    tree = ast.parse('def settle(conn):\n    conn.execute(update(Handoff).values({"state": "EXPIRED"}))\n')

    # when
    found = list(_writes_in("recycle_engine/services/settle.py", tree))

    # then
    assert found == [("recycle_engine/services/settle.py", "settle", 2)]


@pytest.mark.parametrize(
    "source",
    [
        "def f(v):\n    v.update(state='FAILED')\n",
        "def f(v):\n    v['state'] = 'FAILED'\n",
        "def f(h):\n    h.state = 'FAILED'\n",
        "def f(conn):\n    conn.execute(update(Handoff).values({Handoff.state: 'FAILED'}))\n",
    ],
)
def test_given_other_spellings_of_a_state_write_then_the_walk_finds_each(source: str) -> None:
    assert [function for _, function, _ in _writes_in("m.py", ast.parse(source))] == ["f"]


def test_given_an_update_that_carries_a_state_value_then_it_is_refused() -> None:
    with pytest.raises(ValueError, match="follows from the event"):
        HandoffUpdate("h1", {"state": State.APPROVED.value}, Event.APPROVED, "POLL")


@pytest.mark.parametrize(("event", "state"), [(Event.CREATED, State.PENDING), (Event.REJECTED, State.FAILED)])
def test_given_no_hand_off_yet_then_only_a_creation_event_starts_one(event: Event, state: State) -> None:
    assert advance(None, event) is state


@pytest.mark.parametrize("event", [e for e in Event if e not in STARTS])
def test_given_no_hand_off_yet_then_any_other_event_is_refused(event: Event) -> None:
    with pytest.raises(IllegalTransition):
        advance(None, event)


@pytest.mark.parametrize(("event", "states"), list(HOLDS.items()))
def test_given_an_event_that_holds_then_it_keeps_the_state_where_it_may_and_is_refused_elsewhere(
    event: Event, states: frozenset[State]
) -> None:
    for state in State:
        if state in states:
            assert advance(state, event) is state
        else:
            with pytest.raises(IllegalTransition):
                advance(state, event)


def test_given_the_tables_then_every_event_is_named_by_one_of_them() -> None:
    named = {event for _, event in TRANSITIONS} | set(STARTS) | set(HOLDS)
    assert named == set(Event)


@pytest.mark.parametrize("state", sorted(FINAL_STATES - {State.FAILED}) + [State.SUBMITTED])
def test_given_a_status_flexfactor_reports_then_its_event_moves_an_open_hand_off_there(state: State) -> None:
    for start in OPEN_STATES:
        assert advance(start, reported(state)) is state


def test_given_pending_then_flexfactor_never_reports_it() -> None:
    with pytest.raises(IllegalTransition):
        reported(State.PENDING)
