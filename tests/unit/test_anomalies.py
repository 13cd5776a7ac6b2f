"""Anomaly rules over plain numbers: each fires on a crafted night and stays quiet on a normal one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from recycle_engine.domain.anomalies import (
    AnomalyKind,
    AnomalyThresholds,
    NightFacts,
    check_night_facts,
    error_rate_anomaly,
    handoff_count_anomaly,
    missed_job_anomalies,
    refused_webhooks_anomaly,
    webhook_backlog_anomaly,
    webhook_silence_anomaly,
)

T = AnomalyThresholds()
NOW = datetime(2026, 6, 20, 6, 30, tzinfo=UTC)
HISTORY = [100, 90, 110, 95, 105, 100, 98, 102, 97, 103, 99, 101, 100, 100]  # median 100


def a_normal_night(**overrides: object) -> NightFacts:
    values: dict[str, object] = {
        "handoffs": 100,
        "history": HISTORY,
        "sent": 100,
        "errors": 2,
        "refused_webhooks": 3,
        "last_webhook_at": NOW - timedelta(hours=2),
        "old_submitted": 40,
        "jobs_due": {"submit": date(2026, 6, 19), "reconcile": date(2026, 6, 19)},
        "jobs_succeeded": {"submit": True, "reconcile": True},
    }
    values.update(overrides)
    return NightFacts(**values)  # type: ignore[arg-type]


def test_given_a_normal_night_when_checked_then_nothing_fires() -> None:
    assert check_night_facts(a_normal_night(), T, now=NOW) == []


@pytest.mark.parametrize(
    ("handoffs", "fires"), [(33, True), (34, False), (300, False), (301, True), (0, True)]
)
def test_given_tonights_count_around_median_over_3_and_times_3_then_only_outside_fires(
    handoffs: int, fires: bool
) -> None:
    # given: median 100, so the normal range is 33.3..300
    # when
    found = handoff_count_anomaly(handoffs, HISTORY, T)
    # then
    assert (found is not None) is fires
    if found:
        assert found.kind is AnomalyKind.HANDOFF_COUNT
        assert "median 100" in found.reason
        assert "\n" not in found.reason


def test_given_fewer_than_seven_nights_of_history_then_the_count_is_not_judged() -> None:
    assert handoff_count_anomaly(1000, HISTORY[:6], T) is None
    assert handoff_count_anomaly(1000, HISTORY[:7], T) is not None


def test_given_only_the_last_14_nights_count_then_older_history_is_ignored() -> None:
    # given: 20 old nights of 10 000, then the 14 usual nights of about 100
    history = [10_000] * 20 + HISTORY
    # then
    assert handoff_count_anomaly(100, history, T) is None


@pytest.mark.parametrize(("errors", "fires"), [(5, False), (6, True)])
def test_given_error_rate_at_and_above_5_percent_then_only_above_fires(errors: int, fires: bool) -> None:
    found = error_rate_anomaly(100, errors, T)
    assert (found is not None) is fires
    if found:
        assert found.reason.startswith("FlexFactor error rate 6.0 %")


def test_given_nothing_sent_then_the_error_rate_is_quiet() -> None:
    assert error_rate_anomaly(0, 0, T) is None


@pytest.mark.parametrize(("refused", "fires"), [(20, False), (21, True)])
def test_given_refused_webhooks_at_and_above_20_then_only_above_fires(refused: int, fires: bool) -> None:
    assert (refused_webhooks_anomaly(refused, T) is not None) is fires


def test_given_no_webhook_for_24_hours_while_old_handoffs_wait_then_silence_fires() -> None:
    # given: exactly 24 h of silence counts as silence; a second less does not
    assert webhook_silence_anomaly(NOW - timedelta(hours=24), 3, NOW, T) is not None
    assert webhook_silence_anomaly(NOW - timedelta(hours=24) + timedelta(seconds=1), 3, NOW, T) is None
    assert webhook_silence_anomaly(None, 3, NOW, T) is not None


def test_given_silence_but_nothing_waiting_on_flexfactor_then_it_is_quiet() -> None:
    assert webhook_silence_anomaly(None, 0, NOW, T) is None


def test_given_a_job_without_a_successful_run_for_its_day_then_it_fires_with_the_job_named() -> None:
    # given
    due = {"reconcile": date(2026, 6, 19), "report": date(2026, 6, 19)}
    # when
    found = missed_job_anomalies(due, {"reconcile": True, "report": False})
    # then
    assert [(a.kind, a.subject) for a in found] == [(AnomalyKind.JOB_NOT_RUN, "report")]
    assert found[0].reason == "job report has no successful run for its scheduled day 2026-06-19"


def test_given_every_rule_broken_then_each_anomaly_is_listed_once_in_a_fixed_order() -> None:
    night = a_normal_night(
        handoffs=5,
        errors=50,
        refused_webhooks=50,
        last_webhook_at=None,
        jobs_succeeded={"submit": True, "reconcile": False},
    )
    kinds = [a.kind for a in check_night_facts(night, T, now=NOW)]
    assert kinds == [
        AnomalyKind.HANDOFF_COUNT,
        AnomalyKind.ERROR_RATE,
        AnomalyKind.REFUSED_WEBHOOKS,
        AnomalyKind.WEBHOOK_SILENCE,
        AnomalyKind.JOB_NOT_RUN,
    ]


def test_given_webhooks_acknowledged_15_minutes_ago_and_still_unapplied_then_the_backlog_fires() -> None:
    # given: exactly 15 minutes counts as stuck; a second less does not
    assert webhook_backlog_anomaly(3, NOW - timedelta(minutes=15), NOW) is not None
    assert webhook_backlog_anomaly(3, NOW - timedelta(minutes=15) + timedelta(seconds=1), NOW) is None
    assert webhook_backlog_anomaly(0, None, NOW) is None


def test_given_a_stuck_webhook_inbox_when_the_night_is_checked_then_it_is_named_with_its_size() -> None:
    # when
    found = check_night_facts(
        a_normal_night(inbox_waiting=7, inbox_oldest_at=NOW - timedelta(hours=2)), T, now=NOW
    )
    # then
    assert [a.kind for a in found] == [AnomalyKind.WEBHOOK_BACKLOG]
    assert found[0].reason.startswith(
        "7 webhooks acknowledged but not applied, the oldest since 2026-06-20T04:30"
    )
