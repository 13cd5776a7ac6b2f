"""Nights on an NMI gateway (the bundled fake over HTTP) beside FlexFactor (the sandbox): each attempt
charged once with its own order id, lost answers settled by the Query API, soft and hard answers."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, MetaData, select
from sqlalchemy.exc import SAWarning

from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.errors import ConfigError
from recycle_engine.nmi_fake import FakeNmi, Fault, RunningFakeNmi, start_fake_nmi
from recycle_engine.sandbox.server import RunningSandbox, run_sandbox
from recycle_engine.services.reporting.report import run_report
from recycle_engine.services.reporting.status import gather_status, render_status
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Attempt, Handoff, ProcessorCharge, Subscription
from tests.factories import NMI_TEST_KEY, a_decline, a_settings_file, insert_recycling, load_test_settings
from tests.nights import submit_night

NIGHT = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
TODAY = date(2026, 6, 10)
# A run's hold on a charge: a send and a lookup at full timeouts (5 s + 2 s each) and 60 s.
AFTER_LEASE = timedelta(seconds=2 * (5 + 2) + 61)


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with run_sandbox() as sb:
        requests.post(
            f"{sb.admin_url}/clock", json={"now": NIGHT.isoformat(), "frozen": True}, timeout=10
        ).raise_for_status()
        yield sb


@pytest.fixture
def nmi() -> Iterator[RunningFakeNmi]:
    running = start_fake_nmi(FakeNmi(NMI_TEST_KEY, hold_s=4.0))
    yield running
    running.stop()


@pytest.fixture
def world(
    tmp_path: Path, db_url: str, sandbox: RunningSandbox, nmi: RunningFakeNmi
) -> Iterator[tuple[Settings, Engine]]:
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url, nmi_url=nmi.url)
    engine = make_engine(db_url)
    yield load_test_settings(path), engine
    engine.dispose()


def _due(engine: Engine, sub: str, token: str, *, attempt: int = 1, last: int = 0) -> None:
    decline = a_decline(
        transaction_id=f"txn-{sub}",
        order_id=f"ord-{sub}",
        purchase_id=sub,
        customer_id=f"c-{sub}",
        card_token=token,
    )
    insert_recycling(
        engine,
        decline,
        last_attempt=last,
        last_ran_on=date(2026, 6, 8),
        next_attempt=attempt,
        next_attempt_on=TODAY,
    )


def _subs(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {s.id: s for s in conn.execute(select(Subscription))}


def _charges(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(ProcessorCharge)))


def test_given_a_night_mixing_nmi_attempts_and_a_hand_off_when_run_twice_then_each_attempt_is_charged_once(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi, caplog: pytest.LogCaptureFixture
) -> None:
    # given: attempts 1 on NMI that approve, soft-decline and hard-decline, and attempt 4 on FlexFactor
    settings, engine = world
    nmi.fake.script(by_vault={"v-soft": "202", "v-hard": "252"})
    _due(engine, "s-ok", "v-ok")
    _due(engine, "s-soft", "v-soft")
    _due(engine, "s-hard", "v-hard", attempt=2, last=1)
    _due(engine, "s-ff", "v-ff", attempt=4, last=2)
    caplog.set_level(logging.DEBUG)
    # when
    first = submit_night(settings, engine, NIGHT)
    second = submit_night(settings, engine, NIGHT)
    # then: three sales, each with the order id of its charge row; the hand-off went to FlexFactor
    log = nmi.fake.log()
    charges = {c.id: c for c in _charges(engine)}
    assert sorted(e["orderid"] for e in log) == sorted(charges)
    assert sorted(c.subscription_id for c in charges.values()) == ["s-hard", "s-ok", "s-soft"]
    assert {c.state for c in charges.values()} == {"ANSWERED"}
    assert first.counts["charged"] == 3
    assert second.counts["charged"] == 0
    subs = _subs(engine)
    assert subs["s-ok"].status != "RECYCLE_BILLING"
    assert (subs["s-soft"].status, subs["s-soft"].next_attempt, subs["s-soft"].next_attempt_on) == (
        "RECYCLE_BILLING",
        2,
        date(2026, 6, 11),
    )
    assert (subs["s-hard"].status, subs["s-hard"].failure_cause) == ("RECYCLE_FAILED", "HARD_DECLINE")
    with engine.connect() as conn:
        results = {r[0]: r[1] for r in conn.execute(select(Attempt.subscription_id, Attempt.result))}
        handoff = conn.execute(select(Handoff.purchase_id, Handoff.state)).one()
    assert results == {"s-ok": "APPROVED", "s-soft": "SOFT_DECLINE", "s-hard": "HARD_DECLINE"}
    assert tuple(handoff) == ("s-ff", "SUBMITTED")
    # and the security key is nowhere: not in the log records, any table or the day's report
    report = run_report(
        settings, engine, day=TODAY, night=Night.of(NIGHT + timedelta(hours=1), settings.timezone)
    )
    written = "".join(p.read_text(encoding="utf-8") for p in report.html_path.parent.iterdir() if p.is_file())
    assert written
    assert NMI_TEST_KEY not in written
    assert NMI_TEST_KEY not in caplog.text
    assert NMI_TEST_KEY not in _every_value(engine)


def test_given_nmi_charges_but_the_answer_times_out_when_submit_runs_then_the_query_settles_it_without_a_second_charge(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi
) -> None:
    # given: the fake charges, then holds its answer past the 2 s read timeout
    settings, engine = world
    _due(engine, "s-1", "v-1")
    nmi.fake.add_faults(Fault.TIMEOUT_AFTER_CHARGE)
    # when
    result = submit_night(settings, engine, NIGHT)
    # then
    assert len(nmi.fake.log()) == 1
    (charge,) = _charges(engine)
    assert (charge.state, charge.result, charge.sends, charge.lookups) == ("ANSWERED", "APPROVED", 1, 1)
    assert result.counts["charge_lookups"] == 1
    assert _subs(engine)["s-1"].status != "RECYCLE_BILLING"


def test_given_a_lost_answer_and_no_charge_when_the_next_run_looks_it_up_then_only_then_it_charges(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi
) -> None:
    # given: a 500 before charging; the lookup right after is not trusted, so the charge stays PENDING
    settings, engine = world
    _due(engine, "s-1", "v-1")
    nmi.fake.add_faults(Fault.SERVER_ERROR)
    first = submit_night(settings, engine, NIGHT)
    (pending,) = _charges(engine)
    assert (pending.state, first.counts["charge_unknown"]) == ("PENDING", 1)
    assert _subs(engine)["s-1"].next_attempt_on is None
    assert nmi.fake.log() == []
    status = gather_status(engine, now=NIGHT, crons={}, next_fire_times={})
    assert "processor charges with a lost answer: 1" in "\n".join(render_status(status, settings.timezone))
    # when: the next run looks it up, finds no sale with that order id, and charges with the same id
    second = submit_night(settings, engine, NIGHT + AFTER_LEASE)
    # then
    assert [e["orderid"] for e in nmi.fake.log()] == [pending.id]
    (charge,) = _charges(engine)
    assert (charge.id, charge.state, charge.sends, charge.lookups) == (pending.id, "ANSWERED", 2, 2)
    assert second.counts["charges_to_look_up"] == 1


def test_given_a_charge_made_but_its_answer_lost_twice_when_the_next_run_looks_it_up_then_it_is_not_charged_again(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi
) -> None:
    # given: the fake charged and answered 502, and the lookup right after failed too
    settings, engine = world
    _due(engine, "s-1", "v-1")
    nmi.fake.add_faults(Fault.SERVER_ERROR_AFTER_CHARGE, Fault.QUERY_ERROR)
    submit_night(settings, engine, NIGHT)
    assert _charges(engine)[0].state == "PENDING"
    # when
    second = submit_night(settings, engine, NIGHT + AFTER_LEASE)
    # then: found by the Query API, recorded, and the fake holds one sale
    assert len(nmi.fake.log()) == 1
    (charge,) = _charges(engine)
    assert (charge.state, charge.result, charge.sends) == ("ANSWERED", "APPROVED", 1)
    assert second.counts["charge_found_by_lookup"] == 1
    assert second.counts["charge_sends"] == 0


def _every_value(engine: Engine) -> str:
    meta = MetaData()
    with warnings.catch_warnings():
        # SQLite's reflection skips indexes on expressions; only the tables' rows are read here.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression", SAWarning)
        meta.reflect(engine)
    out: list[str] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                out.extend(str(v) for v in row)
    return "\n".join(out)


def test_each_due_attempt_counts_once_per_order_id(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi
) -> None:
    # given: ten attempts with a malformed answer and a reset connection among them
    settings, engine = world
    for i in range(10):
        _due(engine, f"s-{i}", f"v-{i}")
    nmi.fake.add_faults(Fault.MALFORMED_AFTER_CHARGE, Fault.RESET_AFTER_CHARGE)
    # when
    submit_night(settings, engine, NIGHT)
    submit_night(settings, engine, NIGHT + AFTER_LEASE)
    # then
    per_order = Counter(e["orderid"] for e in nmi.fake.log())
    assert len(per_order) == 10
    assert max(per_order.values()) == 1
    assert {c.state for c in _charges(engine)} == {"ANSWERED"}


def test_given_a_mapping_rule_for_nmi_gateways_when_nmi_soft_declines_with_that_text_then_the_ladder_ends(
    tmp_path: Path, db_url: str, sandbox: RunningSandbox, nmi: RunningFakeNmi
) -> None:
    # given: "Do Not Honor" (201, soft by its code) mapped to HARD on every NMI gateway
    rule = (
        'decline_mapping:\n  - {gateway_type: nmi, order_type: ALL, contains: "do not honor", map_to: HARD}\n'
    )
    path = a_settings_file(tmp_path, db_url=db_url, base_url=sandbox.base_url, nmi_url=nmi.url, extra=rule)
    settings, engine = load_test_settings(path), make_engine(db_url)
    nmi.fake.script(by_vault={"v-dnh": "201"})
    _due(engine, "s-1", "v-dnh")
    # when
    result = submit_night(settings, engine, NIGHT)
    # then
    sub = _subs(engine)["s-1"]
    engine.dispose()
    assert (sub.status, sub.failure_cause) == ("RECYCLE_FAILED", "HARD_DECLINE")
    assert result.counts["charge_hard_declined"] == 1


def test_given_the_security_key_written_in_the_file_when_settings_load_then_it_is_refused(
    tmp_path: Path, db_url: str
) -> None:
    path = a_settings_file(tmp_path, db_url=db_url, nmi_url="http://127.0.0.1:9")
    path.write_text(path.read_text().replace("${NMI_SECURITY_KEY}", "literal-key-123"))
    with pytest.raises(ConfigError) as caught:
        load_test_settings(path)
    assert "security_key" in str(caught.value)
    assert "literal-key-123" not in str(caught.value)


def test_given_two_runs_at_once_when_both_claim_the_same_night_then_each_attempt_is_charged_once(
    world: tuple[Settings, Engine], nmi: RunningFakeNmi
) -> None:
    # given: 40 attempts due, and answers slow enough for the two runs to overlap
    settings, engine = world
    for i in range(40):
        _due(engine, f"s-{i}", f"v-{i}")
    nmi.fake.answer_delay_s = 0.05
    # when
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [f.result() for f in [pool.submit(submit_night, settings, engine, NIGHT) for _ in range(2)]]
    # then
    per_order = Counter(e["orderid"] for e in nmi.fake.log())
    charges = _charges(engine)
    assert max(per_order.values()) == 1
    assert sorted(c.subscription_id for c in charges) == sorted(f"s-{i}" for i in range(40))
    assert sum(r.counts["charged"] for r in runs) == 40
