"""The nightly run against the sandbox over HTTP: routing, exactly-once hand-off, lost answers, outcomes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, update

from recycle_engine import bootstrap
from recycle_engine.adapters import clock as clock_adapter
from recycle_engine.adapters.clock import FixedClock
from recycle_engine.bootstrap import processors
from recycle_engine.cli import main
from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.jobs import nightly_reconcile, nightly_submit
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.services.nightly.anomalies import check_night
from recycle_engine.services.nightly.submit import run_submit
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import (
    Attempt,
    Change,
    Fulfillment,
    Handoff,
    HandoffEvent,
    JobRun,
    Order,
    Subscription,
)
from tests.factories import SANDBOX_ENV, a_decline, a_settings_file, insert_recycling, load_test_settings
from tests.nights import reconcile_night, submit_night

# 02:00 in New York on 2026-06-10: the local day is 2026-06-10.
NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        _admin(sb, "clock", {"now": NIGHT.isoformat(), "frozen": True})
        yield sb


def _admin(sb: RunningSandbox, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        resp = requests.get(f"{sb.admin_url}/{path}", timeout=10)
    else:
        resp = requests.post(f"{sb.admin_url}/{path}", json=body, timeout=30)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def _evaluates(sb: RunningSandbox) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _admin(sb, "requests?path=/evaluate")["items"]
    return items


@pytest.fixture
def world(tmp_path: Path, db_url: str, sandbox: RunningSandbox) -> Iterator[tuple[Settings, Engine]]:
    settings = load_test_settings(a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url))
    engine = make_engine(db_url)
    yield settings, engine
    engine.dispose()


def _submit(
    settings: Settings,
    engine: Engine,
    at: datetime = NIGHT,
    *,
    send_clock: FixedClock | None = None,
    **kw: Any,
) -> Any:
    """Submit at logical time `at`, sending at `send_clock` (by default a clock standing at `at`)."""
    return submit_night(settings, engine, at, send_clock=send_clock, **kw)


def _due_tonight(engine: Engine, decline: Any = None) -> None:
    """A recycling subscription whose attempts 1 and 2 ran and whose attempt 4 (slot 4-6, FlexFactor)
    is due on NIGHT's local day."""
    insert_recycling(
        engine,
        decline if decline is not None else a_decline(),
        last_attempt=2,
        last_ran_on=date(2026, 6, 8),
        next_attempt=4,
        next_attempt_on=NIGHT.date(),
    )


def _job_clocks(
    monkeypatch: pytest.MonkeyPatch, sandbox: RunningSandbox, *, opened: datetime, sent: datetime
) -> None:
    """A scheduled job's clocks: it opens its night at `opened` by the wall clock, and its FlexFactor
    calls go out at `sent` (the sandbox's clock stands there too)."""
    _admin(sandbox, "clock", {"now": sent.isoformat(), "frozen": True})
    for name, value in SANDBOX_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bootstrap, "system_clock", lambda: FixedClock(opened))
    monkeypatch.setattr(clock_adapter, "send_clock", lambda at: FixedClock(sent))


def _one(engine: Engine, stmt: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(stmt).one()


def test_given_an_attempt_on_a_flexfactor_slot_when_submit_runs_twice_then_it_is_handed_off_once(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: attempts 1 and 2 ran; attempt 4 (slot 4-6, FlexFactor) is due tonight
    settings, engine = world
    _due_tonight(engine)
    # when
    first = _submit(settings, engine)
    second = _submit(settings, engine)
    # then
    h = _one(engine, select(Handoff))
    assert (h.state, h.slot, h.attempt, h.source) == ("SUBMITTED", "4-6", 4, "RECYCLE")
    assert h.amount_minor == 4499  # 49.99 less a cumulative 10 % (5 + skipped 0 + 5)
    assert h.expires_at == NIGHT + timedelta(days=21)
    assert h.flexfactor_order_id
    assert first.counts["handoffs_created"] == 1
    assert second.counts["handoffs_created"] == 0
    calls = _evaluates(sandbox)
    assert [c["order_id"] for c in calls] == [h.id]
    sub = _one(engine, select(Subscription))
    assert (sub.status, sub.open_handoff_id, sub.next_attempt_on) == ("RECYCLE_BILLING", h.id, None)


def test_given_a_decline_at_minus_five_hours_when_handed_off_then_its_own_offset_is_sent(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: a decline at 09:30 -05:00 (Chicago in winter), attempt 4 due tonight on FlexFactor
    settings, engine = world
    declined = a_decline(declined_at=datetime(2026, 6, 1, 14, 30, tzinfo=UTC), utc_offset_minutes=-300)
    _due_tonight(engine, declined)
    # when
    _submit(settings, engine)
    # then: the body sent (stored byte for byte before the call) carries -5, not 0, beside the UTC time
    h = _one(engine, select(Handoff))
    assert h.state == "SUBMITTED"
    transaction = json.loads(h.request_body)["transaction"]
    assert (transaction["timezoneUtcOffset"], transaction["timestampUtc"]) == (-5, "2026-06-01T14:30:00Z")


def test_given_a_run_at_a_past_logical_time_when_it_hands_off_then_the_window_counts_from_the_send_clock(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: the run replays the night of 10 June (--at), but it really sends two days later, and
    # FlexFactor's clock says so; attempt 4 is due on the replayed night
    settings, engine = world
    sent = NIGHT + timedelta(days=2, hours=3)
    _admin(sandbox, "clock", {"now": sent.isoformat(), "frozen": True})
    _due_tonight(engine)
    # when
    _submit(settings, engine, send_clock=FixedClock(sent))
    # then: 21 days from the send, in the body FlexFactor accepted and in the hand-off's own expiry
    h = _one(engine, select(Handoff))
    assert h.state == "SUBMITTED"
    assert (h.expires_at, h.first_sent_at, h.created_at) == (sent + timedelta(days=21), sent, NIGHT)
    assert json.loads(h.request_body)["expiryDateUtc"] == "2026-07-03T09:00:00Z"


def test_given_the_scheduled_submit_job_when_it_hands_off_then_the_window_counts_from_the_real_send(
    tmp_path: Path, db_url: str, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the job opens its night at NIGHT by the wall clock; the call goes out 40 minutes later
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url)
    sent = NIGHT + timedelta(minutes=40)
    engine = make_engine(db_url)
    _due_tonight(engine)
    _job_clocks(monkeypatch, sandbox, opened=NIGHT, sent=sent)
    # when
    counts = nightly_submit.run(str(path))
    # then: the hand-off belongs to the night, its 21 days to the send
    h = _one(engine, select(Handoff))
    engine.dispose()
    assert counts["accepted"] == 1, counts
    assert (h.state, h.created_at, h.first_sent_at) == ("SUBMITTED", NIGHT, sent)
    assert h.expires_at == sent + timedelta(days=21)


def test_given_a_handoff_left_unsent_when_the_scheduled_reconcile_sends_it_then_the_window_counts_from_the_real_send(
    tmp_path: Path, db_url: str, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: submit made the hand-off at NIGHT but reached no FlexFactor gateway; the reconcile job
    # opens its night an hour later by the wall clock, and its call goes out 40 minutes after that
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url)
    settings = load_test_settings(path)
    engine = make_engine(db_url)
    _due_tonight(engine)
    run_submit(
        settings,
        engine,
        {},
        processors(settings),
        night=Night.of(NIGHT, settings.timezone),
        send_clock=FixedClock(NIGHT),
    )
    opened = NIGHT + timedelta(hours=1)
    sent = opened + timedelta(minutes=40)
    _job_clocks(monkeypatch, sandbox, opened=opened, sent=sent)
    # when
    counts = nightly_reconcile.run(str(path))
    # then: the hand-off still belongs to the night it was made, its 21 days to the send
    h = _one(engine, select(Handoff))
    engine.dispose()
    assert counts["sent"] == 1, counts
    assert (h.state, h.created_at, h.first_sent_at) == ("SUBMITTED", NIGHT, sent)
    assert h.expires_at == sent + timedelta(days=21)


def test_given_a_handoff_sent_once_when_it_is_sent_again_then_its_window_and_body_stay_as_first_sent(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: a hand-off first sent at NIGHT, then confirmed absent and queued for a resend
    settings, engine = world
    _due_tonight(engine)
    _submit(settings, engine)
    first = _one(engine, select(Handoff))
    with engine.begin() as conn:
        conn.execute(update(Handoff).values(state="PENDING", send_started_at=None, resend_count=1))
    # when: the resend goes out a day later by the send clock
    later = NIGHT + timedelta(days=1)
    _admin(sandbox, "clock", {"now": later.isoformat(), "frozen": True})
    _submit(settings, engine, at=later, send_clock=FixedClock(later))
    # then: the same body (same key) and the same window
    again = _one(engine, select(Handoff))
    assert (again.request_body, again.expires_at, again.first_sent_at) == (
        first.request_body,
        NIGHT + timedelta(days=21),
        NIGHT,
    )


def test_given_handoffs_that_fail_when_submit_runs_from_the_cli_then_the_console_says_why(
    tmp_path: Path, db_url: str, sandbox: RunningSandbox
) -> None:
    # given: two due FlexFactor attempts whose subscriptions have no card token
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url)
    engine = make_engine(db_url)
    for n in (1, 2):
        decline = a_decline(
            transaction_id=f"txn-{n}", order_id=f"ord-{n}", purchase_id=f"sub-{n}", card_token=""
        )
        insert_recycling(
            engine,
            decline,
            last_attempt=2,
            last_ran_on=date(2026, 6, 8),
            next_attempt=4,
            next_attempt_on=NIGHT.date(),
        )
    engine.dispose()
    # when
    run = CliRunner().invoke(
        main, ["run", "submit", "--at", NIGHT.isoformat(), "--config", str(path)], env=SANDBOX_ENV
    )
    # then: not just a count: one line per reason, with how many it struck
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert sorted(line for line in lines if line.startswith("failed ")) == [
        "failed 1: subscription sub-1: missing card_token",
        "failed 1: subscription sub-2: missing card_token",
    ]


def test_given_a_pending_handoff_whose_answer_was_lost_when_a_poll_settles_it_then_it_gets_the_order_placed_time(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: a hand-off FlexFactor placed at NIGHT (card 3184: rescued), whose answer we never read
    settings, engine = world
    _due_tonight(engine, a_decline(card_last4="3184"))
    _submit(settings, engine)
    with engine.begin() as conn:
        # FlexFactor's id came by a webhook that moved nothing; no lookup holds it (not sending)
        conn.execute(
            update(Handoff).values(
                state="PENDING", submitted_at=None, send_started_at=None, next_poll_at=NIGHT
            )
        )
    # when: three days later the poll finds it settled
    later = NIGHT + timedelta(days=3)
    _admin(sandbox, "clock", {"now": later.isoformat()})
    reconcile_night(settings, engine, later)
    # then: settled, and submitted when FlexFactor placed the order, not when the poll ran
    h = _one(engine, select(Handoff))
    assert (h.state, h.outcome_source, h.submitted_at) == ("APPROVED", "POLL", NIGHT)


def test_given_an_attempt_on_the_declining_gateway_when_it_soft_declines_then_the_next_attempt_is_booked(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: attempt 1 is due on the simulated gateway, which soft-declines by default
    settings, engine = world
    insert_recycling(engine, a_decline(card_last4="1234"), next_attempt_on=date(2026, 6, 10))
    # when
    result = _submit(settings, engine)
    # then: attempt 2 is due a day after the run; attempt 3 is skipped
    sub = _one(engine, select(Subscription))
    assert (sub.status, sub.recycle_last_attempt, sub.next_attempt, sub.next_attempt_on) == (
        "RECYCLE_BILLING",
        1,
        2,
        date(2026, 6, 11),
    )
    attempt = _one(engine, select(Attempt))
    assert (attempt.result, attempt.amount_minor, attempt.gateway_id) == ("SOFT_DECLINE", 4999, "nmi")
    assert result.counts["charge_soft_declined"] == 1
    assert _evaluates(sandbox) == []


def test_given_a_card_the_processor_approves_when_submit_runs_then_the_subscription_moves_to_its_next_cycle(
    world: tuple[Settings, Engine],
) -> None:
    # given
    settings, engine = world
    insert_recycling(engine, a_decline(card_last4="0000"), next_attempt_on=date(2026, 6, 10))
    # when
    _submit(settings, engine)
    # then
    sub = _one(engine, select(Subscription))
    assert (sub.status, sub.billing_cycle, sub.next_bill_on, sub.gateway_id) == (
        "ACTIVE",
        4,
        date(2026, 7, 10),
        "nmi",
    )
    assert _one(engine, select(Order.status)).status == "COMPLETE"
    assert _one(engine, select(func.count()).select_from(Fulfillment))[0] == 1


def test_given_a_hard_decline_on_a_reattempt_then_recycling_ends_in_recycle_failed(
    world: tuple[Settings, Engine],
) -> None:
    settings, engine = world
    insert_recycling(engine, a_decline(card_last4="0002"), next_attempt_on=date(2026, 6, 10))
    _submit(settings, engine)
    sub = _one(engine, select(Subscription))
    assert (sub.status, sub.failure_cause) == ("RECYCLE_FAILED", "HARD_DECLINE")
    with engine.connect() as conn:
        changes = conn.execute(
            select(Change.field, Change.new_value).where(Change.entity == "SUBSCRIPTION").order_by(Change.id)
        ).all()
    # the status is the domain's own word; the cause is a change of its own
    assert [tuple(c) for c in changes] == [("status", "RECYCLE_FAILED"), ("failure_cause", "HARD_DECLINE")]


def test_given_attempts_not_yet_due_when_submit_runs_then_nothing_happens(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    settings, engine = world
    insert_recycling(engine, a_decline(), next_attempt_on=date(2026, 6, 11))
    result = _submit(settings, engine)
    assert result.counts["selected"] == 0
    assert _evaluates(sandbox) == []


def test_given_due_attempts_when_a_dry_run_runs_then_it_reports_them_and_writes_nothing(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given
    settings, engine = world
    insert_recycling(
        engine,
        a_decline(),
        last_attempt=2,
        last_ran_on=date(2026, 6, 8),
        next_attempt=4,
        next_attempt_on=date(2026, 6, 9),
    )
    # when
    result = _submit(settings, engine, dry_run=True)
    # then
    assert result.counts["would_flexfactor"] == 1
    assert result.by_slot[("4-6", "ff")] == 1
    assert result.preview[0]["amount_minor"] == 4499
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Handoff)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(JobRun)).scalar_one() == 0
    assert _evaluates(sandbox) == []


def test_given_the_answer_is_lost_after_flexfactor_took_the_order_when_submit_runs_again_then_it_adopts_it_without_resending(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: FlexFactor creates the order, then its answer never arrives (500 after processing)
    settings, engine = world
    _due_tonight(engine)
    _admin(sandbox, "faults", {"script": [{"path": "/evaluate", "action": "500_after", "count": 1}]})
    first = _submit(settings, engine)
    assert first.counts["unknown"] == 1
    assert _one(engine, select(Handoff.state)).state == "PENDING"
    # when
    second = _submit(settings, engine)
    # then: found by our order id, adopted, never sent again
    h = _one(engine, select(Handoff))
    assert second.counts["adopted"] == 1
    assert (h.state, h.resend_count) == ("SUBMITTED", 0)
    assert len(_evaluates(sandbox)) == 1


def test_given_a_lost_answer_whose_lookup_fails_when_runs_go_on_then_the_errors_are_counted_recorded_and_raised(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: the answer to a hand-off is lost, and every "was it received?" look-up then fails
    settings, engine = world
    _due_tonight(engine)
    _admin(sandbox, "faults", {"script": [{"path": "/evaluate", "action": "500_after", "count": 1}]})
    _submit(settings, engine)
    _admin(sandbox, "faults", {"script": [{"path": "/orders", "action": "503", "count": 50}]})
    # when
    second = _submit(settings, engine)
    # then: the run counts the failed look-up (not only those given up after resends) ...
    assert (second.counts["lookup_errors"], second.counts["lookup_failed"]) == (1, 0)
    with engine.connect() as conn:
        kinds = list(conn.execute(select(HandoffEvent.kind).order_by(HandoffEvent.id)).scalars())
    # ... records it on the hand-off ...
    assert kinds[-1] == "LOOKUP_ERROR"
    assert _one(engine, select(Handoff.state)).state == "PENDING"
    # ... and a day on, the hand-off still unresolved is an anomaly
    found = check_night(settings, engine, day=date(2026, 6, 11), now=NIGHT + timedelta(days=1, hours=1))
    unresolved = [a for a in found if a.kind == "UNRESOLVED_HANDOFFS"]
    assert len(unresolved) == 1
    assert unresolved[0].reason.startswith("1 hand-offs sent over 24 h ago are still unresolved")


def test_given_flexfactor_never_got_the_order_when_submit_runs_again_then_it_resends_the_same_body_and_key(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: a 503 before processing: FlexFactor holds nothing
    settings, engine = world
    _due_tonight(engine)
    _admin(sandbox, "faults", {"script": [{"path": "/evaluate", "action": "503", "count": 1}]})
    _submit(settings, engine)
    # when
    second = _submit(settings, engine)
    # then
    h = _one(engine, select(Handoff))
    assert second.counts["queued_resend"] == 1
    assert (h.state, h.resend_count) == ("SUBMITTED", 1)
    calls = _evaluates(sandbox)
    assert [c["status"] for c in calls] == [503, 200]
    assert (calls[1]["order_id"], calls[1]["idempotency_key"]) == (h.id, h.idempotency_key)
    assert len(_admin(sandbox, "orders")["items"]) == 1


def test_given_a_validation_error_from_flexfactor_then_the_handoff_fails_and_the_ladder_moves_on(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: this FlexFactor account refuses windows longer than 10 days; ours asks for 21
    settings, engine = world
    _admin(sandbox, "config", {"max_expiry_days": 10})
    _due_tonight(engine)
    # when
    result = _submit(settings, engine)
    # then: FAILED with FlexFactor's reason; it counts as a declined attempt, so the final attempt is booked
    h = _one(engine, select(Handoff))
    sub = _one(engine, select(Subscription))
    assert h.state == "FAILED"
    assert "ExpiryDateUtc" in h.last_error
    assert result.counts["failed"] == 1
    assert (sub.status, sub.open_handoff_id, sub.next_attempt, sub.next_attempt_on) == (
        "RECYCLE_BILLING",
        None,
        10,
        date(2026, 6, 13),
    )


def test_given_a_handoff_missing_a_required_field_then_it_fails_locally_without_a_call(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    settings, engine = world
    _due_tonight(engine, a_decline(response_code=""))
    result = _submit(settings, engine)
    h = _one(engine, select(Handoff))
    assert (h.state, result.counts["handoffs_invalid"]) == ("FAILED", 1)
    assert "response_code" in h.last_error
    assert _evaluates(sandbox) == []
    assert _one(engine, select(Subscription.next_attempt)).next_attempt == 10


def test_given_one_subscription_with_bad_data_when_submit_runs_then_the_others_still_go(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: an unknown currency on one subscription, a good one beside it
    settings, engine = world
    insert_recycling(engine, a_decline(currency="XXX"), next_attempt_on=date(2026, 6, 10))
    _due_tonight(engine, a_decline(transaction_id="txn-2", order_id="ord-2", purchase_id="sub-2"))
    # when
    result = _submit(settings, engine)
    # then
    with engine.connect() as conn:
        subs = {s.id: s for s in conn.execute(select(Subscription))}
        change = conn.execute(select(Change).where(Change.reason == "ATTEMPT_ERROR")).one()
    assert result.counts["errors"] == 1
    assert result.counts["handoffs_created"] == 1
    assert subs["sub-1"].next_attempt_on == date(2026, 6, 11)
    assert "unknown currency" in change.new_value
    assert subs["sub-2"].open_handoff_id is not None


def test_given_handoffs_with_each_outcome_when_reconcile_runs_past_the_window_then_the_outcome_table_applies(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: two hand-offs tonight: 3184 is rescued a day later, 0259 is never rescued
    settings, engine = world
    for n, last4 in ((1, "3184"), (2, "0259")):
        insert_recycling(
            engine,
            a_decline(
                transaction_id=f"txn-{n}", order_id=f"ord-{n}", purchase_id=f"sub-{n}", card_last4=last4
            ),
            last_attempt=2,
            last_ran_on=date(2026, 6, 8),
            next_attempt=4,
            next_attempt_on=date(2026, 6, 10),
        )
    _submit(settings, engine)
    # when: 22 days pass (no webhooks configured: the poll must find both outcomes)
    later = NIGHT + timedelta(days=22)
    _admin(sandbox, "clock", {"now": later.isoformat()})
    first = reconcile_night(settings, engine, later)
    again = reconcile_night(settings, engine, later)
    # then
    with engine.connect() as conn:
        states = dict(conn.execute(select(Handoff.purchase_id, Handoff.state)).all())
        subs = {s.id: s for s in conn.execute(select(Subscription))}
    assert states == {"sub-1": "APPROVED", "sub-2": "EXPIRED"}
    assert (subs["sub-1"].status, subs["sub-1"].billing_cycle, subs["sub-1"].gateway_id) == (
        "ACTIVE",
        4,
        "nmi",
    )
    assert (subs["sub-2"].status, subs["sub-2"].failure_cause) == ("RECYCLE_FAILED", "FLEXFACTOR_FAILED")
    assert first.counts["applied_approved"] == 1
    assert sum(v for k, v in again.counts.items() if k.startswith("applied_")) == 0


def test_given_a_handoff_still_at_work_when_reconcile_polls_it_then_the_event_records_it_still_submitted(
    world: tuple[Settings, Engine], sandbox: RunningSandbox
) -> None:
    # given: a hand-off FlexFactor keeps working on (expires at the window's end)
    settings, engine = world
    _due_tonight(engine, a_decline(card_last4="0259"))
    _submit(settings, engine)
    # when: two days later, its first look falls due
    later = NIGHT + timedelta(days=2)
    _admin(sandbox, "clock", {"now": later.isoformat()})
    result = reconcile_night(settings, engine, later)
    # then
    with engine.connect() as conn:
        event = conn.execute(select(HandoffEvent).where(HandoffEvent.kind == "POLLED")).one()
        h = conn.execute(select(Handoff)).one()
    assert result.counts["polled"] == 1
    assert (event.state_after, event.source) == ("SUBMITTED", "POLL")
    assert (h.state, h.poll_count, h.next_poll_at) == ("SUBMITTED", 1, later + timedelta(days=1))


# Runs around New York's clock changes: (instant, the attempts it newly runs as "subscription#attempt").
SPRING_NIGHTS = [
    (datetime(2026, 3, 8, 4, 30, tzinfo=UTC), {"s-0307#2"}),  # 23:30 EST on 7 March: the UTC date is the 8th
    (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), {"s-0308#2"}),  # 03:30 EDT on the 8th, clocks just went forward
    (datetime(2026, 3, 9, 3, 59, tzinfo=UTC), set()),  # 23:59 EDT on the 8th: nothing due on the 9th runs
]
AUTUMN_NIGHTS = [
    (datetime(2026, 11, 1, 3, 30, tzinfo=UTC), {"s-1031#2"}),  # 23:30 EDT on 31 October
    (datetime(2026, 11, 1, 6, 30, tzinfo=UTC), {"s-1101#2"}),  # 01:30 EST on 1 November, the repeated hour
    (datetime(2026, 11, 2, 4, 30, tzinfo=UTC), set()),  # 23:30 EST on the 1st
    # Midnight EST: the 2nd begins, and with it the 31st's attempt 4 (2 days on, attempt 3 skipped).
    (datetime(2026, 11, 2, 5, 0, tzinfo=UTC), {"s-1102#2", "s-1031#4"}),
]


@pytest.mark.parametrize(
    ("due", "nights"),
    [
        ([date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)], SPRING_NIGHTS),
        ([date(2026, 10, 31), date(2026, 11, 1), date(2026, 11, 2)], AUTUMN_NIGHTS),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_given_attempts_due_around_a_clock_change_when_runs_fall_either_side_of_local_midnight_then_each_runs_on_its_new_york_day(
    world: tuple[Settings, Engine], sandbox: RunningSandbox, due: list[date], nights: list[Any]
) -> None:
    # given: an attempt 2 (on the declining gateway) due on each of three New York dates
    settings, engine = world
    for day in due:
        sub = f"s-{day:%m%d}"
        decline = a_decline(
            transaction_id=f"txn-{sub}", order_id=f"ord-{sub}", purchase_id=sub, customer_id=f"c-{sub}"
        )
        insert_recycling(
            engine,
            decline,
            last_attempt=1,
            last_ran_on=day - timedelta(days=1),
            next_attempt=2,
            next_attempt_on=day,
        )
    done: set[str] = set()
    for at, expected in nights:
        _admin(sandbox, "clock", {"now": at.isoformat(), "frozen": True})
        # when: the night runs at this instant
        result = _submit(settings, engine, at)
        # then: exactly the attempts due by the run's New York date ran (charged or handed off)
        with engine.connect() as conn:
            charged = conn.execute(select(Attempt.subscription_id, Attempt.attempt)).all()
            handed_off = conn.execute(select(Handoff.purchase_id, Handoff.attempt)).all()
        now_done = {f"{sub}#{n}" for sub, n in [*charged, *handed_off]}
        assert now_done - done == expected, at
        assert result.counts["selected"] == len(expected)
        done = now_done
