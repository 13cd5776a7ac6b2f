"""The report's pure transforms on tiny literal frames: rates, currencies, ages, cohorts, exceptions, rows."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recycle_engine.domain.outcomes import amount_mismatch
from recycle_engine.reports import detail, queries, reconciliation, recovery, render, saves, svg

DAY = date(2026, 6, 12)
NEW_YORK = ZoneInfo("America/New_York")
NAN = float("nan")


def facts(*rows: tuple[Any, ...]) -> pd.DataFrame:
    """Cohort facts: (cohort, state, currency, recovery_day, n, amount_minor)."""
    columns = ["cohort", "state", "currency", "recovery_day", "n", "amount_minor"]
    return pd.DataFrame(list(rows), columns=columns)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# --- rates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            [("APPROVED", 3), ("DECLINED", 1), ("SUBMITTED", 2), ("FAILED", 5)],
            {
                "handoffs": 11,
                "recovered": 3,
                "lost": 1,
                "pending": 2,
                "failed": 5,
                "to": 0.5,
                "settled": 0.75,
            },
            id="failed-stays-outside-both-rates",
        ),
        pytest.param(
            [("APPROVED", 1), ("EXPIRED", 1), ("CANCELLED", 1), ("PENDING", 1)],
            {
                "handoffs": 4,
                "recovered": 1,
                "lost": 2,
                "pending": 1,
                "failed": 0,
                "to": 1 / 4,
                "settled": 1 / 3,
            },
            id="expired-and-cancelled-are-lost",
        ),
        pytest.param(
            [("PENDING", 2)],
            {"handoffs": 2, "recovered": 0, "lost": 0, "pending": 2, "failed": 0, "to": 0.0, "settled": NAN},
            id="nothing-settled-has-no-settled-rate",
        ),
        pytest.param(
            [("FAILED", 2)],
            {"handoffs": 2, "recovered": 0, "lost": 0, "pending": 0, "failed": 2, "to": NAN, "settled": NAN},
            id="only-failed-has-no-rate",
        ),
    ],
)
def test_given_states_when_counted_then_both_rates_follow_the_section_10_definitions(
    rows: list[tuple[str, int]], expected: dict[str, float]
) -> None:
    # given
    frame = facts(*[("2026-06-12", s, "USD", None, n, 100 * n) for s, n in rows])
    # when
    row = recovery.count_summary(frame, ["cohort"]).iloc[0]
    # then
    for key in ("handoffs", "recovered", "lost", "pending", "failed"):
        assert row[key] == expected[key], key
    assert same(row["rate_to_date"], expected["to"])
    assert same(row["rate_settled"], expected["settled"])


def test_given_two_currencies_when_amounts_are_summed_then_they_stay_apart_and_failed_is_not_submitted() -> (
    None
):
    # given
    frame = facts(
        ("2026-06-12", "APPROVED", "USD", 1, 1, 4999),
        ("2026-06-12", "DECLINED", "USD", None, 1, 5001),
        ("2026-06-12", "FAILED", "USD", None, 1, 10_000),
        ("2026-06-12", "APPROVED", "EUR", 2, 1, 2500),
    )
    # when
    out = recovery.amount_summary(frame, ["cohort"], fee_percent=Decimal("2.5")).set_index("currency")
    # then
    assert out.loc["USD", "submitted_minor"] == 10_000
    assert out.loc["USD", "recovered_minor"] == 4999
    assert out.loc["USD", "rate_by_amount"] == pytest.approx(0.4999)
    assert out.loc["EUR", "submitted_minor"] == 2500
    assert out.loc["EUR", "rate_by_amount"] == 1.0
    assert out.loc["USD", "fee_minor"] == 125  # 124.975 rounds half-up
    assert out.loc["USD", "net_minor"] == 4874


def test_given_refunds_and_chargebacks_on_recoveries_then_they_are_shown_beside_and_never_subtracted() -> (
    None
):
    # given
    frame = facts(
        ("2026-06-12", "APPROVED", "USD", 1, 3, 3000),
        ("2026-06-12", "APPROVED", "USD", 2, 1, 500),
        ("2026-06-12", "APPROVED", "EUR", 2, 1, 700),
        ("2026-06-12", "DECLINED", "USD", None, 1, 100),
    ).assign(reversal=[None, "REFUNDED", "CHARGEBACK", None])
    # when
    counts = recovery.count_summary(frame, ["cohort"]).iloc[0]
    amounts = recovery.amount_summary(frame, ["cohort"]).set_index("currency")
    # then
    assert (counts["recovered"], counts["refunded"], counts["charged_back"]) == (5, 1, 1)
    assert counts["rate_settled"] == 5 / 6
    assert amounts.loc["USD", "recovered_minor"] == 3500
    assert amounts.loc["USD", "refunded_minor"] == 500
    assert amounts.loc["EUR", "charged_back_minor"] == 700
    assert amounts.loc["USD", "charged_back_minor"] == 0


def test_given_cohorts_when_split_into_periods_then_day_and_month_to_date_are_labelled() -> None:
    frame = facts(
        ("2026-05-30", "APPROVED", "USD", 1, 1, 100),
        ("2026-06-03", "APPROVED", "USD", 1, 2, 200),
        ("2026-06-12", "DECLINED", "USD", None, 4, 400),
    )
    out = recovery.with_periods(frame, day=DAY, month_first=date(2026, 6, 1))
    assert out.groupby("period")["n"].sum().to_dict() == {"day": 4, "month": 6}


# --- pending ages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_days", "bucket"),
    [(0, "0-3"), (3, "0-3"), (4, "4-7"), (7, "4-7"), (8, "8-14"), (14, "8-14"), (15, "15-21")]
    + [(21, "15-21"), (22, "over 21"), (60, "over 21")],
)
def test_given_an_age_in_days_then_it_falls_in_its_bucket(age_days: int, bucket: str) -> None:
    assert recovery.age_bucket(age_days) == bucket


def test_given_open_handoffs_when_bucketed_then_every_bucket_shows_in_order_and_over_21_is_overdue() -> None:
    # given
    frame = pd.DataFrame(
        [(2, "SUBMITTED", "USD", 1, 500), (3, "PENDING", "USD", 2, 700), (30, "SUBMITTED", "EUR", 1, 900)],
        columns=["age_days", "state", "currency", "n", "amount_minor"],
    )
    # when
    out = recovery.pending_by_age(frame)
    # then
    assert list(dict.fromkeys(out["bucket"])) == list(recovery.AGE_BUCKETS)
    first = out[out["bucket"] == "0-3"].iloc[0]
    assert (first["n"], first["amount_minor"], first["currency"]) == (3, 1200, "USD")
    assert out[out["overdue"]]["n"].sum() == 1
    assert out[out["overdue"]]["currency"].tolist() == ["EUR"]


# --- cohorts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cohort", "recovery_days", "expected"),
    [
        pytest.param(
            "2026-06-07", [0, 1, 2, None], {1: 2 / 4, 3: 3 / 4, 7: NAN}, id="5-days-old-shows-day-1-and-3"
        ),
        pytest.param(
            "2026-05-22", [1, 9, 10, 11], {7: 1 / 4, 10: 3 / 4, 14: 1.0, 21: 1.0}, id="window-closed"
        ),
        pytest.param("2026-06-12", [0], {1: NAN}, id="made-today-shows-nothing-yet"),
    ],
)
def test_given_a_cohort_when_tabled_then_share_by_day_n_counts_approvals_within_n_days(
    cohort: str, recovery_days: list[int | None], expected: dict[int, float]
) -> None:
    # given: one approval per recovery day, None = still pending
    frame = facts(
        *[(cohort, "APPROVED" if d is not None else "SUBMITTED", "USD", d, 1, 100) for d in recovery_days]
    )
    # when
    row = recovery.cohort_table(frame, day=DAY).iloc[0]
    # then
    for n, share in expected.items():
        assert same(row[f"share_d{n}"], share), n


@pytest.mark.parametrize(
    ("cohort", "states", "status"),
    [
        ("2026-06-10", ["APPROVED", "DECLINED"], "final"),
        ("2026-06-10", ["APPROVED", "SUBMITTED"], "in progress"),
        ("2026-05-22", ["PENDING"], "in progress"),  # 21 days old: the last day of its window
        ("2026-05-21", ["PENDING"], "window closed"),
        ("2026-05-21", ["EXPIRED", "FAILED"], "final"),
    ],
)
def test_given_a_cohort_then_it_is_in_progress_until_all_final_or_its_window_closes(
    cohort: str, states: list[str], status: str
) -> None:
    frame = facts(*[(cohort, s, "USD", 1 if s == "APPROVED" else None, 1, 100) for s in states])
    assert recovery.cohort_table(frame, day=DAY, window_days=21).iloc[0]["status"] == status


def test_given_cohorts_when_checked_at_day_10_then_only_old_cohorts_show_per_currency_shares() -> None:
    # given
    frame = facts(
        ("2026-06-01", "APPROVED", "USD", 4, 1, 1000),
        ("2026-06-01", "APPROVED", "USD", 12, 1, 3000),
        ("2026-06-01", "FAILED", "USD", None, 1, 9999),
        ("2026-06-01", "APPROVED", "EUR", 10, 1, 500),
        ("2026-06-05", "APPROVED", "USD", 1, 1, 1000),
    )
    # when
    out = recovery.checkpoint(frame, day=DAY, n_days=10).set_index("currency")
    # then
    assert set(out["cohort"]) == {"2026-06-01"}
    assert out.loc["USD", "share_count"] == 0.5
    assert out.loc["USD", "share_amount"] == 0.25
    assert out.loc["EUR", "share_count"] == 1.0


def test_given_cohorts_of_different_ages_then_the_curve_pools_only_cohorts_old_enough() -> None:
    frame = facts(
        ("2026-06-10", "APPROVED", "USD", 1, 1, 100),  # 2 days old
        ("2026-06-11", "DECLINED", "USD", None, 1, 100),  # 1 day old
    )
    points = dict(recovery.recovery_curve(frame, day=DAY, window_days=3))
    assert points == {0: 0.0, 1: 0.5, 2: 1.0}


@pytest.mark.parametrize(
    ("histogram", "median"),
    [([(1, 1), (3, 1), (9, 1)], 3.0), ([(1, 2), (5, 2)], 3.0), ([(2, 5), (20, 1)], 2.0), ([], None)],
)
def test_given_recovery_days_then_the_median_is_weighted_by_count(
    histogram: list[tuple[int, int]], median: float | None
) -> None:
    frame = facts(*[("2026-06-01", "APPROVED", "USD", d, n, 100) for d, n in histogram])
    assert recovery.median_recovery_days(frame) == median


# --- breakdowns ------------------------------------------------------------------------------------


def breakdown_rows(*rows: tuple[Any, ...]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["key", "code", "state", "currency", "n", "amount_minor"])


def test_given_reasons_differing_in_case_then_they_are_one_reason_per_response_code() -> None:
    frame = breakdown_rows(
        ("do not honor", "05", "APPROVED", "USD", 1, 100),
        ("DO NOT  HONOR ", "05", "DECLINED", "USD", 2, 200),
        ("do not honor", "57", "DECLINED", "USD", 1, 100),
        (None, None, "PENDING", "USD", 1, 100),
    )
    out = recovery.breakdown(frame, "reason").counts
    assert out[["key", "code", "handoffs"]].values.tolist() == [
        ["do not honor", "05", 3],
        ["(no decline on record)", "", 1],
        ["do not honor", "57", 1],
    ]


def test_given_slots_and_sources_then_the_slot_breakdown_follows_the_ladder() -> None:
    frame = breakdown_rows(
        ("CASCADE", None, "APPROVED", "USD", 9, 900),
        ("final", None, "APPROVED", "USD", 1, 100),
        ("4-6", None, "DECLINED", "USD", 1, 100),
        ("RERUN", None, "PENDING", "USD", 5, 500),
        ("7-9", None, "APPROVED", "EUR", 1, 100),
    )
    out = recovery.breakdown(frame, "slot")
    assert out.counts["key"].tolist() == ["4-6", "7-9", "final", "RERUN", "CASCADE"]
    assert set(out.amounts[out.amounts["key"] == "7-9"]["currency"]) == {"EUR"}


def test_given_many_keys_then_the_breakdown_keeps_the_largest_and_counts_the_rest() -> None:
    frame = breakdown_rows(*[(f"gw-{i}", None, "APPROVED", "USD", i, 100) for i in range(1, 6)])
    out = recovery.breakdown(frame, "declining_gateway", limit=2)
    assert out.counts["key"].tolist() == ["gw-5", "gw-4"]
    assert out.hidden == 3


def test_given_several_breakdowns_in_one_frame_then_each_table_is_the_one_it_would_be_alone() -> None:
    # given: the rows of three breakdowns as breakdowns_stmt returns them, one with no rows
    slots = breakdown_rows(
        ("4-6", None, "APPROVED", "USD", 2, 200), ("final", None, "DECLINED", "EUR", 1, 50)
    )
    reasons = breakdown_rows(
        ("Do Not Honor", "05", "APPROVED", "USD", 1, 100), ("do not honor", "05", "PENDING", "JPY", 4, 900)
    )
    gateways = breakdown_rows(*[(f"gw-{i}", None, "APPROVED", "USD", i, 10 * i) for i in range(1, 5)])
    frame = pd.concat(
        [
            slots.assign(breakdown="slot"),
            reasons.assign(breakdown="reason"),
            gateways.assign(breakdown="declining_gateway"),
        ],
        ignore_index=True,
    )
    # when
    out = recovery.breakdowns(frame, ["slot", "reason", "declining_gateway", "card_bin"], limit=2)
    # then
    alone = {
        "slot": recovery.breakdown(slots, "slot", limit=2),
        "reason": recovery.breakdown(reasons, "reason", limit=2),
        "declining_gateway": recovery.breakdown(gateways, "declining_gateway", limit=2),
    }
    for name, table in alone.items():
        pd.testing.assert_frame_equal(out[name].counts, table.counts)
        pd.testing.assert_frame_equal(out[name].amounts, table.amounts)
        assert out[name].hidden == table.hidden
    assert out["declining_gateway"].amounts["key"].tolist() == ["gw-3", "gw-4"]  # the listed keys only
    assert out["card_bin"].counts.empty
    assert out["card_bin"].amounts.empty
    assert list(out["card_bin"].counts.columns) == list(out["slot"].counts.columns)


def test_given_no_hand_off_this_month_then_every_breakdown_is_an_empty_table() -> None:
    frame = breakdown_rows().assign(breakdown=[])
    out = recovery.breakdowns(frame, ["slot", "reason"])
    assert [(t.counts.empty, t.amounts.empty, t.hidden) for t in out.values()] == [(True, True, 0)] * 2


# --- reconciliation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        ("capture_required", "CAPTURE_REQUIRED"),
        ("CAPTUREREQUIRED", "CAPTURE_REQUIRED"),
        ("chargeback", "CHARGEBACK"),
    ]
    + [("terminal conflict", "TERMINAL_CONFLICT"), (None, "UNKNOWN")],
)
def test_given_a_flag_as_written_then_it_is_normalised(raw: str | None, flag: str) -> None:
    assert reconciliation.normalise_flag(raw) == flag


def exception_frame(*rows: tuple[str, str | None, int]) -> pd.DataFrame:
    """(kind, detail, total) rows with the columns of queries.exception_stmt."""
    base = {
        "order_id": "o",
        "source": "RECYCLE",
        "gateway_id": "ff",
        "state": "SUBMITTED",
        "amount_minor": 100,
    }
    base |= {"currency": "USD", "created_at": None, "expires_at": None, "outcome_at": None}
    return pd.DataFrame(
        [
            {"kind": k, "handoff_id": f"h{i}", "detail": d, "total": t} | base
            for i, (k, d, t) in enumerate(rows)
        ]
    )


def test_given_exceptions_then_each_kind_and_flag_has_its_full_count_and_what_to_do() -> None:
    # given
    rows = reconciliation.exception_rows(
        exception_frame(
            ("PAST_EXPIRY", None, 250),
            ("ATTENTION", "capture_required", 2),
            ("ATTENTION", "capture_required", 2),
            ("ATTENTION", "something new", 1),
            ("FAILED", "zip missing", 1),
        )
    )
    hooks = pd.DataFrame(
        [
            ("ff", False, "bad signature", False, 3),
            ("ff", True, "unknown order", False, 1),
            ("ff", True, "duplicate", True, 4),
            ("ff", True, "applied", False, 9),
            ("ff", True, "ignored", False, 2),
        ],
        columns=["gateway_id", "accepted", "reason", "duplicate", "n"],
    )
    # when
    out = reconciliation.exception_summary(rows, hooks).set_index("title")
    # then
    assert out.loc["Pending past expiry", "count"] == 250
    assert out.loc["FlexFactor flag: CAPTURE_REQUIRED", "count"] == 2
    assert "capture" in str(out.loc["FlexFactor flag: CAPTURE_REQUIRED", "what_to_do"])
    assert out.loc["FlexFactor flag: SOMETHING_NEW", "what_to_do"] == reconciliation.UNKNOWN_FLAG_ADVICE
    assert out.loc["Webhook refused or not applied", "count"] == 3
    assert "hmac_signing_key" in str(out.loc["Webhook refused or not applied"])
    assert out.loc["Webhook for an unknown order", "count"] == 1
    assert out.loc["Duplicate webhook deliveries", "count"] == 4
    assert rows[rows["kind"] == "FAILED"]["detail"].tolist() == ["zip missing"]
    assert len(out) == 7
    assert all(out["what_to_do"].str.len() > 20)


def test_given_amount_mismatches_then_they_are_one_exception_with_both_amounts_and_what_to_do() -> None:
    # given: as exception_stmt lists them, the latest finding per hand-off as the detail
    found = "FlexFactor shows 25.00 USD; we handed off 27.49 USD"
    rows = reconciliation.exception_rows(
        exception_frame(("AMOUNT_MISMATCH", found, 2), ("AMOUNT_MISMATCH", "FlexFactor shows 9 JPY; we", 2))
    )
    # when
    out = reconciliation.exception_summary(
        rows, pd.DataFrame(columns=["gateway_id", "accepted", "reason", "duplicate", "n"])
    )
    # then
    assert rows["title"].unique().tolist() == ["Amount differs from what we handed off"]
    assert rows["detail"].tolist()[0] == found
    assert out[["title", "count"]].values.tolist() == [["Amount differs from what we handed off", 2]]
    assert "refund the difference" in out["what_to_do"].iloc[0]


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        pytest.param((2749, "USD"), (2749, "USD"), None, id="same"),
        pytest.param((2749, "USD"), (None, None), None, id="flexfactor-shows-none"),
        pytest.param((2749, "USD"), (2749, "usd"), None, id="case-of-the-code"),
        pytest.param(
            (2749, "USD"), (2500, "USD"), "FlexFactor shows 25.00 USD; we handed off 27.49 USD", id="amount"
        ),
        pytest.param(
            (2749, "USD"), (None, "EUR"), "FlexFactor shows 27.49 EUR; we handed off 27.49 USD", id="currency"
        ),
        pytest.param(
            (500, "JPY"),
            (5, "XXY"),
            "FlexFactor shows 5 minor units of 'XXY'; we handed off 500 JPY",
            id="unknown",
        ),
    ],
)
def test_given_what_flexfactor_shows_then_a_mismatch_names_both_amounts(
    ours: tuple[int, str], theirs: tuple[int | None, str | None], expected: str | None
) -> None:
    assert amount_mismatch(*ours, *theirs) == expected


def test_given_recycle_handoffs_by_cycle_then_saves_are_counted_per_cycle_in_cycle_order() -> None:
    # given: month-to-date rows of the "cycle" breakdown (the cycle as text)
    frame = pd.DataFrame(
        [
            ("10", None, "APPROVED", "USD", 1, 1000),
            ("2", None, "APPROVED", "USD", 3, 6000),
            ("2", None, "APPROVED", "EUR", 1, 900),
            ("2", None, "DECLINED", "USD", 1, 2000),
            ("3", None, "SUBMITTED", "USD", 2, 4000),
            ("3", None, "FAILED", "USD", 1, 2000),
        ],
        columns=["key", "code", "state", "currency", "n", "amount_minor"],
    )
    # when
    counts, amounts = saves.saves_by_cycle(frame)
    # then
    table = counts.set_index("cycle")
    assert counts["cycle"].tolist() == ["2", "3", "10"]
    assert table.loc["2", ["handoffs", "recovered", "lost", "pending"]].tolist() == [5, 4, 1, 0]
    assert table.loc["2", "rate_settled"] == pytest.approx(0.8)
    assert table.loc["3", ["recovered", "pending", "failed"]].tolist() == [0, 2, 1]
    by = amounts.set_index(["cycle", "currency"])
    assert by.loc[("2", "USD"), "recovered_minor"] == 6000
    assert by.loc[("2", "EUR"), "recovered_minor"] == 900
    assert by.loc[("10", "USD"), "submitted_minor"] == 1000


@pytest.mark.parametrize(
    ("accepted", "reason", "kind", "advice"),
    [
        (False, "bad signature", "WEBHOOK_REFUSED", "hmac_signing_key"),
        (False, "content hash mismatch", "WEBHOOK_REFUSED", "hmac_signing_key"),
        (False, "stale date", "WEBHOOK_REFUSED", "clock"),
        (False, "replayed nonce", "WEBHOOK_REFUSED", "clock"),
        (False, "unknown gateway", "WEBHOOK_REFUSED", "settings.yaml"),
        (True, "other gateway", "WEBHOOK_REFUSED", "webhook URL"),
        (True, "unknown order", "WEBHOOK_UNKNOWN_ORDER", "never sent"),
    ],
)
def test_given_a_problem_delivery_then_it_is_classed_with_advice_for_its_reason(
    accepted: bool, reason: str, kind: str, advice: str
) -> None:
    frame = pd.DataFrame(
        [("ff", accepted, reason, False, 2)], columns=["gateway_id", "accepted", "reason", "duplicate", "n"]
    )
    row = reconciliation.webhook_summary(frame).iloc[0]
    assert row["kind"] == kind
    assert advice in row["what_to_do"]


def test_given_job_runs_then_durations_and_counts_are_readable() -> None:
    frame = pd.DataFrame(
        [
            ("r1", "submit", datetime(2026, 6, 12, 6, tzinfo=UTC), datetime(2026, 6, 12, 6, 2, tzinfo=UTC))
            + ("SUCCEEDED", '{"sent": 3, "approved": 1, "failed": 0}', None),
            ("r2", "reconcile", datetime(2026, 6, 12, 7, tzinfo=UTC), None, "RUNNING", None, None),
            (
                "r3",
                "report",
                datetime(2026, 6, 12, 8, tzinfo=UTC),
                None,
                "FAILED",
                '{"rows": 0}',
                "disk full",
            ),
        ],
        columns=["id", "job", "started_at", "finished_at", "status", "counts", "error"],
    )
    out = reconciliation.job_runs_table(frame)
    assert out["duration_s"].iloc[0] == 120.0
    assert math.isnan(out["duration_s"].iloc[1])
    assert out["counts_text"].tolist() == ["approved 1, sent 3", "", "all zero"]
    assert out["error"].tolist() == ["", "", "disk full"]


# --- detail rows, formatting, charts ---------------------------------------------------------------


def a_detail_row(**values: Any) -> tuple[Any, ...]:
    """A row as queries.detail_stmt returns it: None where not given."""
    return tuple(values.get(c) for c in detail.SOURCE_COLUMNS)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_given_the_detail_statement_then_its_columns_are_the_ones_the_csv_rows_unpack(dialect: str) -> None:
    bounds = queries.ReportBounds.for_day(DAY, NEW_YORK, datetime(2026, 6, 13, 10, tzinfo=UTC))
    assert list(queries.detail_stmt(bounds, dialect).selected_columns.keys()) == detail.SOURCE_COLUMNS


def test_given_detail_rows_then_amounts_are_decimal_text_and_times_local_with_offset() -> None:
    # given
    at = datetime(2026, 6, 12, 6, tzinfo=UTC)
    rows = [
        a_detail_row(amount_minor=2999, currency="USD", created_at=at, attempt=4),
        a_detail_row(amount_minor=5000, currency="JPY", created_at=at, decline_reason="=HYPERLINK(1)"),
        a_detail_row(amount_minor=1234, currency="BHD", created_at=at, decline_reason="Do Not Honor"),
    ]
    # when
    out = [dict(zip(detail.DETAIL_COLUMNS, r, strict=True)) for r in detail.detail_rows(rows, NEW_YORK)]
    # then
    assert [r["amount"] for r in out] == ["29.99", "5000", "1.234"]
    assert out[0]["created_at"] == "2026-06-12T02:00:00-04:00"
    assert out[0]["outcome_at"] == ""
    assert [r["attempt"] for r in out] == ["4", "", ""]
    assert [r["decline_reason"] for r in out] == ["", "'=HYPERLINK(1)", "Do Not Honor"]


@pytest.mark.parametrize(
    ("instant", "text"),
    [
        pytest.param("2026-11-01 05:30:00.000000", "2026-11-01T01:30:00-04:00", id="sqlite-text-before-fold"),
        pytest.param("2026-11-01 06:30:59.999999", "2026-11-01T01:30:59-05:00", id="sqlite-text-in-fold"),
        pytest.param("2026-06-12 06:00:05", "2026-06-12T02:00:05-04:00", id="sqlite-text-no-fraction"),
        pytest.param("2026-06-12T06:00:05+00:00", "2026-06-12T02:00:05-04:00", id="other-text"),
        pytest.param(
            datetime(2026, 11, 1, 6, 30, tzinfo=UTC), "2026-11-01T01:30:00-05:00", id="repeated-hour"
        ),
        pytest.param(
            datetime(2026, 3, 8, 7, 0, 59, 999999, tzinfo=UTC), "2026-03-08T03:00:59-04:00", id="spring"
        ),
        pytest.param(datetime(2026, 3, 8, 6, 59, 59), "2026-03-08T01:59:59-05:00", id="naive-utc"),
        pytest.param(
            datetime(1850, 1, 1, 12, 0, 30, tzinfo=UTC), "1850-01-01T07:04:28-04:56:02", id="local-mean-time"
        ),
    ],
)
def test_given_detail_times_as_either_database_returns_them_then_they_are_local_with_their_offset(
    instant: object, text: str
) -> None:
    # given: SQLite returns the stored UTC text, PostgreSQL aware datetimes
    row = a_detail_row(amount_minor=-1, currency="USD", created_at=instant)
    # when
    out = dict(zip(detail.DETAIL_COLUMNS, next(detail.detail_rows([row], NEW_YORK)), strict=True))
    # then: as datetime.isoformat(timespec="seconds") writes it
    assert (out["created_at"], out["submitted_at"], out["amount"]) == (text, "", "-0.01")


@given(
    seconds=st.integers(min_value=-2_500_000_000, max_value=4_000_000_000),
    zone=st.sampled_from(["America/New_York", "Europe/London", "Asia/Kathmandu", "Australia/Lord_Howe"]),
    as_text=st.booleans(),
)
def test_given_any_instant_then_its_local_text_is_what_datetime_writes(
    seconds: int, zone: str, as_text: bool
) -> None:
    # given: instants near one another share the cache of their minute
    tz = ZoneInfo(zone)
    times = detail.LocalTimes(tz)
    for step in (0, 1, 59, 60, 1799, 3600):
        instant = datetime.fromtimestamp(seconds + step, UTC).replace(microsecond=250_000)
        value: object = instant.replace(tzinfo=None).isoformat(" ") if as_text else instant
        # when, then
        assert times.text(value) == instant.astimezone(tz).isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (123456, "USD", "1,234.56 USD"),
        (-5, "USD", "-0.05 USD"),
        (1500000, "JPY", "1,500,000 JPY"),
        (None, "USD", "—"),
    ],
)
def test_given_minor_units_then_money_is_shown_in_its_currency(
    minor: int | None, currency: str, text: str
) -> None:
    assert render.fmt_money(minor, currency) == text


@given(
    rows=st.lists(
        st.lists(
            st.one_of(
                st.none(),
                st.text(alphabet=st.sampled_from(list("ab ,\"\r\n'=é"))),
                st.integers(-5, 5),
            ),
            min_size=3,
            max_size=3,
        ),
        max_size=6,
    )
)
def test_given_any_cells_then_the_csv_is_what_the_csv_module_writes(
    tmp_path_factory: Any, rows: list[Any]
) -> None:
    # given
    path = tmp_path_factory.mktemp("csv") / "rows.csv"
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows([["a", "b", "c"], *rows])
    # when
    count = render.write_csv(path, rows, ["a", "b", "c"])
    # then
    assert path.read_bytes().decode("utf-8") == expected.getvalue()
    assert count == len(rows)


def test_given_a_frame_then_its_records_hold_the_values_to_dict_gives_with_instants_as_datetime() -> None:
    # given: every kind of column the report's frames have, with missing values
    at = datetime(2026, 6, 12, 6, 30, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "n": [1, 2],
            "share": [0.5, NAN],
            "late": [True, False],
            "text": ["a", None],
            "day": [date(2026, 6, 12), None],
            "at": [at, None],
        }
    )
    # when
    rows = render.records(frame)
    # then
    expected = frame.to_dict("records")
    assert [list(r) for r in rows] == [list(r) for r in expected]
    for row, want in zip(rows, expected, strict=True):
        for name, value in row.items():
            assert type(value) is (datetime if name == "at" and value is not pd.NaT else type(want[name]))
            assert value == want[name] or (pd.isna(value) and pd.isna(want[name]))
    assert rows[0]["at"] == at
    assert render.records(frame.iloc[:0]) == []


def test_given_an_undefined_rate_then_it_shows_a_dash() -> None:
    assert (render.fmt_pct(NAN), render.fmt_pct(0.4286)) == ("—", "42.9 %")


def test_given_a_chart_then_it_is_inline_svg_without_urls_and_escapes_its_title() -> None:
    line = str(svg.line_chart([(0, 0.1), (3, 0.5)], title="<b>curve</b>", x_max=21, x_ticks=[1, 21]))
    bars = str(svg.bar_chart([("0-3", 2), ("over 21", 1)], title="ages", highlight_last=True))
    for chart in (line, bars):
        assert chart.startswith("<svg")
        assert "http" not in chart
        assert "<script" not in chart
    assert "&lt;b&gt;curve&lt;/b&gt;" in line
    assert "<polyline" in line
    assert "#b3261e" in bars
