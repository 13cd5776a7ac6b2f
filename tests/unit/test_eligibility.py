"""FlexFactor eligibility: recycle slots, reruns of declined new sales, and real-time cascades."""

from __future__ import annotations

from typing import Any

import pytest

from recycle_engine.domain.declines import DeclineType, OrderType
from recycle_engine.domain.eligibility import (
    Eligibility,
    Refusal,
    cascade_eligibility,
    cascade_refusal,
    recycle_handoff_allowed,
    rerun_eligibility,
    rerun_refusal,
)
from recycle_engine.domain.outcomes import OrderStatus
from recycle_engine.domain.profiles import Slot


def a_rerun(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "order_type": OrderType.NEW_SALE,
        "order_status": OrderStatus.DECLINED,
        "decline_type": DeclineType.SOFT,
        "gateway_is_flexfactor": True,
        "named_via_atri": False,
        "has_open_handoff": False,
    }
    values.update(overrides)
    return values


def a_cascade(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "order_type": OrderType.NEW_SALE,
        "decline_type": DeclineType.SOFT,
        "response_text": "05 - Do Not Honor",
        "insufficient_funds_phrases": ("insufficient funds",),
        "ip_address": "203.0.113.7",
        "gateway_in_cascade_path": True,
        "cascade_all": False,
    }
    values.update(overrides)
    return values


# --- recycle slots -------------------------------------------------------------------------------


@pytest.mark.parametrize("slot", [Slot.S4_6, Slot.S7_9, Slot.FINAL])
def test_given_a_soft_decline_on_a_flexfactor_slot_then_it_goes_to_flexfactor(slot: Slot) -> None:
    # when
    result = recycle_handoff_allowed(DeclineType.SOFT, slot)

    # then
    assert result == Eligibility(eligible=True)


def test_given_a_soft_decline_on_slot_1_3_then_it_never_goes_to_flexfactor() -> None:
    # when
    result = recycle_handoff_allowed(DeclineType.SOFT, Slot.BASIC)

    # then
    assert (result.eligible, result.reason_code) == (False, Refusal.BASIC_SLOT)
    assert result.reason


@pytest.mark.parametrize("slot", list(Slot))
def test_given_a_hard_decline_on_any_slot_then_it_never_goes_to_flexfactor(slot: Slot) -> None:
    # when
    result = recycle_handoff_allowed(DeclineType.HARD, slot)

    # then
    assert (result.eligible, result.reason_code) == (False, Refusal.HARD_DECLINE)


# --- reruns --------------------------------------------------------------------------------------


def test_given_a_soft_declined_new_sale_on_a_flexfactor_gateway_named_directly_then_it_may_be_rerun() -> None:
    # when
    reason = rerun_refusal(**a_rerun())

    # then
    assert reason is None


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"order_type": OrderType.UPSALE}, Refusal.NOT_NEW_SALE),
        ({"order_type": OrderType.REBILL}, Refusal.NOT_NEW_SALE),
        ({"order_status": OrderStatus.COMPLETE}, Refusal.ORDER_COMPLETE),
        ({"order_status": OrderStatus.PENDING}, Refusal.NOT_DECLINED),
        ({"order_status": OrderStatus.REFUNDED}, Refusal.NOT_DECLINED),
        ({"named_via_atri": True}, Refusal.VIA_ATRI),
        ({"gateway_is_flexfactor": False}, Refusal.NOT_FLEXFACTOR),
        ({"decline_type": DeclineType.HARD}, Refusal.HARD_DECLINE),
        ({"has_open_handoff": True}, Refusal.OPEN_HANDOFF),
    ],
    ids=lambda value: str(value) if isinstance(value, Refusal) else ",".join(value),
)
def test_given_an_order_failing_one_rerun_check_then_it_is_refused_with_that_reason(
    overrides: dict[str, Any], code: Refusal
) -> None:
    # when
    result = rerun_eligibility(**a_rerun(**overrides))

    # then
    assert (result.eligible, result.reason_code) == (False, code)
    assert rerun_refusal(**a_rerun(**overrides)) == result.reason
    assert str(result.reason).endswith(".")


def test_given_a_declined_upsale_then_the_reason_names_the_order_type() -> None:
    # when
    reason = rerun_refusal(**a_rerun(order_type=OrderType.UPSALE))

    # then
    assert reason == "Only declined new sales can be rerun, not UPSALE orders."


def test_given_an_order_failing_several_rerun_checks_then_the_order_type_is_reported_first() -> None:
    # when
    result = rerun_eligibility(
        **a_rerun(order_type=OrderType.REBILL, decline_type=DeclineType.HARD, has_open_handoff=True)
    )

    # then
    assert result.reason_code is Refusal.NOT_NEW_SALE


# --- cascades ------------------------------------------------------------------------------------


def test_given_a_soft_declined_new_sale_covered_by_a_cascade_profile_then_it_may_cascade() -> None:
    # when
    reason = cascade_refusal(**a_cascade())

    # then
    assert reason is None


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"order_type": OrderType.UPSALE}, Refusal.NOT_NEW_SALE),
        ({"order_type": OrderType.REBILL}, Refusal.NOT_NEW_SALE),
        ({"decline_type": DeclineType.HARD}, Refusal.HARD_DECLINE),
        ({"decline_type": DeclineType.HARD, "cascade_all": True}, Refusal.HARD_DECLINE),
        ({"response_text": "51 - INSUFFICIENT FUNDS"}, Refusal.INSUFFICIENT_FUNDS),
        ({"response_text": "51 - Insufficient Funds", "cascade_all": True}, Refusal.INSUFFICIENT_FUNDS),
        (
            {"response_text": "61 - NSF", "insufficient_funds_phrases": ("insufficient funds", "nsf")},
            Refusal.INSUFFICIENT_FUNDS,
        ),
        ({"ip_address": None}, Refusal.NO_IP_ADDRESS),
        ({"ip_address": ""}, Refusal.NO_IP_ADDRESS),
        ({"ip_address": "   "}, Refusal.NO_IP_ADDRESS),
        ({"gateway_in_cascade_path": False}, Refusal.NOT_IN_CASCADE_PATH),
    ],
    ids=lambda value: str(value) if isinstance(value, Refusal) else ",".join(value),
)
def test_given_a_decline_failing_one_cascade_check_then_it_is_refused_with_that_reason(
    overrides: dict[str, Any], code: Refusal
) -> None:
    # when
    result = cascade_eligibility(**a_cascade(**overrides))

    # then
    assert (result.eligible, result.reason_code) == (False, code)
    assert cascade_refusal(**a_cascade(**overrides)) == result.reason


def test_given_cascade_all_then_a_gateway_outside_every_cascade_profile_still_cascades() -> None:
    # when
    reason = cascade_refusal(**a_cascade(gateway_in_cascade_path=False, cascade_all=True))

    # then
    assert reason is None


def test_given_no_phrases_configured_then_the_default_insufficient_funds_phrase_applies() -> None:
    # given
    values = a_cascade(response_text="Insufficient funds")
    del values["insufficient_funds_phrases"]

    # when
    result = cascade_eligibility(**values)

    # then
    assert result.reason_code is Refusal.INSUFFICIENT_FUNDS
