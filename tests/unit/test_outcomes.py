"""The outcome table of SPEC section 1: what a final FlexFactor result does to orders and subscriptions."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from recycle_engine.domain.declines import OrderType
from recycle_engine.domain.outcomes import (
    OUTCOMES,
    FailureCause,
    OrderKind,
    OrderStatus,
    OutcomeEffect,
    PurchaseStatus,
    effect_of,
    next_bill_date,
    order_kind,
    price_after_approval,
)
from recycle_engine.domain.states import Event, Source, State, advance
from recycle_engine.errors import IllegalTransition


def an_outcome(**overrides: Any) -> OutcomeEffect:
    values: dict[str, Any] = {
        "order_type": OrderType.NEW_SALE,
        "completes_trial": False,
        "success": True,
        "recurring_product": False,
        "source": Source.RERUN,
    }
    values.update(overrides)
    return effect_of(**values)


def test_given_the_outcome_table_then_it_has_exactly_the_four_rows_of_the_spec() -> None:
    # then
    assert set(OUTCOMES) == {(kind, success) for kind in OrderKind for success in (True, False)}


@pytest.mark.parametrize("source", [Source.RERUN, Source.CASCADE])
@pytest.mark.parametrize("order_type", [OrderType.NEW_SALE, OrderType.UPSALE])
def test_given_a_new_sale_success_then_the_order_completes_and_fulfillments_are_created(
    order_type: OrderType, source: Source
) -> None:
    # when
    effect = an_outcome(order_type=order_type, source=source, success=True)

    # then
    assert effect == OutcomeEffect(
        order_status=OrderStatus.COMPLETE,
        subscription_status=None,
        advance_cycle=False,
        create_fulfillments=True,
        revert_gateway=False,
        failure_cause=None,
        no_payment_token=False,
    )


@pytest.mark.parametrize("source", [Source.RERUN, Source.CASCADE])
def test_given_a_new_sale_failure_then_the_order_is_declined(source: Source) -> None:
    # when
    effect = an_outcome(source=source, success=False)

    # then
    assert effect == OutcomeEffect(
        order_status=OrderStatus.DECLINED,
        subscription_status=None,
        advance_cycle=False,
        create_fulfillments=False,
        revert_gateway=False,
        failure_cause=None,
    )


def test_given_a_new_sale_failure_that_completes_a_trial_then_the_order_status_is_unchanged() -> None:
    # when
    effect = an_outcome(success=False, completes_trial=True, recurring_product=True)

    # then
    assert effect.order_status is None
    assert effect == OutcomeEffect(
        order_status=None,
        subscription_status=None,
        advance_cycle=False,
        create_fulfillments=False,
        revert_gateway=False,
        failure_cause=None,
    )


def test_given_a_new_sale_success_that_completes_a_trial_then_the_order_still_completes() -> None:
    # when
    effect = an_outcome(success=True, completes_trial=True)

    # then
    assert effect.order_status is OrderStatus.COMPLETE
    assert effect.create_fulfillments is True


def test_given_a_recurring_success_then_the_subscription_advances_with_fulfillments_and_the_gateway_reverts() -> (
    None
):
    # when
    effect = an_outcome(
        order_type=OrderType.REBILL, source=Source.RECYCLE, success=True, recurring_product=True
    )

    # then
    assert effect == OutcomeEffect(
        order_status=OrderStatus.COMPLETE,
        subscription_status=None,
        advance_cycle=True,
        create_fulfillments=True,
        revert_gateway=True,
        failure_cause=None,
        no_payment_token=False,
    )


@pytest.mark.parametrize("completes_trial", [False, True])
def test_given_a_recurring_failure_then_the_subscription_is_recycle_failed_by_flexfactor(
    completes_trial: bool,
) -> None:
    # when
    effect = an_outcome(
        order_type=OrderType.REBILL,
        source=Source.RECYCLE,
        success=False,
        completes_trial=completes_trial,
        recurring_product=True,
    )

    # then
    assert effect == OutcomeEffect(
        order_status=None,
        subscription_status=PurchaseStatus.RECYCLE_FAILED,
        advance_cycle=False,
        create_fulfillments=False,
        revert_gateway=False,
        failure_cause=FailureCause.FLEXFACTOR_FAILED,
    )
    assert effect.failure_cause == "FLEXFACTOR_FAILED"


@pytest.mark.parametrize(
    ("order_type", "source", "success", "recurring_product", "no_token"),
    [
        (OrderType.NEW_SALE, Source.RERUN, True, True, True),
        (OrderType.UPSALE, Source.CASCADE, True, True, True),
        (OrderType.NEW_SALE, Source.RERUN, True, False, False),
        (OrderType.NEW_SALE, Source.RERUN, False, True, False),
        (OrderType.REBILL, Source.RECYCLE, True, True, False),
    ],
)
def test_given_a_flexfactor_recovery_of_a_new_sale_with_recurring_products_then_no_payment_token_is_left(
    order_type: OrderType, source: Source, success: bool, recurring_product: bool, no_token: bool
) -> None:
    # when
    effect = an_outcome(
        order_type=order_type, source=source, success=success, recurring_product=recurring_product
    )

    # then
    assert effect.no_payment_token is no_token


@pytest.mark.parametrize(
    ("order_type", "source"),
    [
        (OrderType.NEW_SALE, Source.RECYCLE),
        (OrderType.UPSALE, Source.RECYCLE),
        (OrderType.REBILL, Source.RERUN),
        (OrderType.REBILL, Source.CASCADE),
    ],
)
def test_given_a_source_that_cannot_carry_the_order_type_then_it_is_refused(
    order_type: OrderType, source: Source
) -> None:
    # when / then
    with pytest.raises(ValueError, match="cannot carry"):
        an_outcome(order_type=order_type, source=source)


@pytest.mark.parametrize(
    ("order_type", "kind"),
    [
        (OrderType.NEW_SALE, OrderKind.NEW_SALE),
        (OrderType.UPSALE, OrderKind.NEW_SALE),
        (OrderType.REBILL, OrderKind.RECURRING),
    ],
)
def test_given_an_order_type_then_it_reads_the_matching_row_of_the_table(
    order_type: OrderType, kind: OrderKind
) -> None:
    # when
    result = order_kind(order_type)

    # then
    assert result is kind


@pytest.mark.parametrize(
    ("approved_on", "interval", "expected"),
    [
        (date(2026, 6, 10), 30, date(2026, 7, 10)),
        (date(2026, 1, 31), 30, date(2026, 3, 2)),
        (date(2028, 2, 28), 1, date(2028, 2, 29)),
        (date(2026, 12, 15), 30, date(2027, 1, 14)),
    ],
)
def test_given_an_approval_then_the_next_bill_date_is_the_approval_date_plus_the_interval(
    approved_on: date, interval: int, expected: date
) -> None:
    # when
    result = next_bill_date(approved_on, interval)

    # then
    assert result == expected


def test_given_a_billing_interval_below_one_day_then_the_next_bill_date_is_refused() -> None:
    # when / then
    with pytest.raises(ValueError, match="at least one day"):
        next_bill_date(date(2026, 6, 10), 0)


@pytest.mark.parametrize(("hold", "expected"), [(True, 4000), (False, 4999)])
def test_given_hold_recycle_price_then_the_approved_price_becomes_the_recurring_price(
    hold: bool, expected: int
) -> None:
    # when
    result = price_after_approval(hold_recycle_price=hold, approved_minor=4000, regular_minor=4999)

    # then
    assert result == expected


def test_given_the_status_enums_then_they_carry_the_crm_spellings() -> None:
    # then
    assert [s.value for s in OrderStatus] == [
        "PARTIAL",
        "PENDING",
        "COMPLETE",
        "DECLINED",
        "REFUNDED",
        "CANCELLED",
        "COD_PENDING",
    ]
    assert [s.value for s in PurchaseStatus] == [
        "TRIAL",
        "ACTIVE",
        "PAUSED",
        "PAUSE_SCHEDULED",
        "CANCELLED",
        "CANCELLATION_SCHEDULED",
        "COMPLETE",
        "RECYCLE_BILLING",
        "RECYCLE_FAILED",
    ]
    assert [c.value for c in FailureCause] == [
        "ALL_ATTEMPTS_DECLINED",
        "HARD_DECLINE",
        "NO_PROFILE",
        "RECYCLE_DISABLED",
        "FLEXFACTOR_FAILED",
    ]


@pytest.mark.parametrize(
    ("recorded", "event", "after"),
    [
        (State.PENDING, Event.ACCEPTED, State.SUBMITTED),
        (State.SUBMITTED, Event.APPROVED, State.APPROVED),
        (State.SUBMITTED, Event.POLLED, State.SUBMITTED),  # a poll of an open hand-off records, no move
        (State.APPROVED, Event.APPROVED, State.APPROVED),  # a repeat of the same news
        (State.EXPIRED, Event.APPROVED, State.APPROVED),  # a rescue after we settled the window: real money
        (State.APPROVED, Event.ACCEPTED, None),  # a poll read before the webhook's rescue
        (State.APPROVED, Event.POLLED, None),
        (State.DECLINED, Event.UNKNOWN, None),
        (State.APPROVED, Event.CANCELLED, None),  # the table has no way back from a rescue
        (State.FAILED, Event.ACCEPTED, None),
    ],
)
def test_given_a_recorded_state_then_only_events_the_lifecycle_allows_move_it(
    recorded: State, event: Event, after: State | None
) -> None:
    if after is None:
        with pytest.raises(IllegalTransition):
            advance(recorded, event)
    else:
        assert advance(recorded, event) is after
