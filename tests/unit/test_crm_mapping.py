"""The CRM's records as declines feed rows, and outbox changes as CRM calls: pure translations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recycle_engine.adapters.crm_changes import CrmRequest, is_applied, request_for
from recycle_engine.adapters.crm_rows import declined_at, feed_columns, feed_row
from recycle_engine.services.intake.feed_rows import FEED_COLUMNS

TRANSACTION = {
    "transactionId": 9001,
    "dateCreated": "2026-06-01 14:30:05",
    "responseType": "SOFT_DECLINE",
    "responseText": "Do Not Honor",
    "merchantId": 12,
    "orderId": 501,
    "purchaseId": 77,
    "billingCycleNumber": 2,
    "totalAmount": 29.99,
    "currencyCode": "USD",
    "cardExpiryDate": "09/2029",
    "notes": "a field no column takes",
}
ORDER = {
    "orderId": 501,
    "orderType": "RECURRING",
    "campaignId": 3,
    "items": [{"productId": "", "shippable": True}],
}
PURCHASE = {"purchaseId": 77, "productId": 41, "billingIntervalDays": 30, "trialEnabled": True}


def test_given_json_numbers_and_crm_words_when_mapped_then_the_row_reads_as_the_csv_would() -> None:
    # when
    row = feed_row(TRANSACTION, ORDER, PURCHASE, {"12": "nmi-main"}.get)  # type: ignore[arg-type]

    # then
    assert list(row) == list(FEED_COLUMNS)
    assert row["transaction_id"] == "9001"
    assert row["declined_at"] == "2026-06-01T14:30:05+00:00"
    assert (row["order_type"], row["billing_cycle"], row["completes_trial"]) == ("REBILL", "2", "true")
    assert (row["amount"], row["currency"], row["gateway_id"]) == ("29.99", "USD", "nmi-main")
    assert (row["product_id"], row["billing_interval_days"], row["shippable"]) == ("41", "30", "true")
    assert (row["card_exp_month"], row["card_exp_year"], row["recurring_product"]) == ("09", "2029", "true")
    assert "a field no column takes" not in row.values()


def test_given_a_new_sale_without_a_purchase_when_mapped_then_it_is_cycle_1_and_not_recurring() -> None:
    # given
    sale = {**TRANSACTION, "purchaseId": None, "billingCycleNumber": None}

    # when
    row = feed_row(sale, {**ORDER, "orderType": "NEW_SALE"}, None, str)

    # then
    assert (row["order_type"], row["billing_cycle"], row["recurring_product"], row["completes_trial"]) == (
        "NEW_SALE",
        "1",
        "false",
        "false",
    )
    assert row["gateway_id"] == "12"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-06-01 14:30:05", datetime(2026, 6, 1, 14, 30, 5, tzinfo=UTC)),
        ("2026-06-01T10:30:05-04:00", datetime(2026, 6, 1, 14, 30, 5, tzinfo=UTC)),
        ("06/01/2026", None),
        (None, None),
    ],
)
def test_given_a_transaction_time_when_read_then_it_is_aware_utc_or_none(
    raw: object, expected: object
) -> None:
    assert declined_at({"dateCreated": raw}) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-06-01 14:30:05", "2026-06-01T14:30:05+00:00"),
        ("2026-06-01T14:30:05", "2026-06-01T14:30:05+00:00"),
        ("2026-06-01 14:30:05.250000", "2026-06-01T14:30:05.250000+00:00"),
        ("2026-06-01T10:30:05-04:00", "2026-06-01T14:30:05+00:00"),
        (" 2026-06-01 14:30:05 ", "2026-06-01T14:30:05+00:00"),
        ("2026-06-01 14:30+01", "2026-06-01T13:30:00+00:00"),
        ("2026-06-31 14:30:05", "2026-06-31 14:30:05"),
        ("06/01/2026", "06/01/2026"),
        (20260601, "20260601"),
        (None, ""),
    ],
)
def test_given_a_transaction_time_when_mapped_then_the_row_holds_its_utc_isoformat_or_its_text(
    raw: object, expected: str
) -> None:
    assert feed_row({**TRANSACTION, "dateCreated": raw}, ORDER, PURCHASE, str)["declined_at"] == expected


def test_given_transactions_lacking_fields_when_mapped_then_those_columns_are_empty() -> None:
    # given: the second transaction has only an id and a time
    sparse = {"transactionId": "T-2", "dateCreated": "2026-06-01 15:00:00"}

    # when
    columns = feed_columns(
        [TRANSACTION, sparse], [ORDER, None], [PURCHASE, None], str, [declined_at(TRANSACTION), None]
    )

    # then
    assert columns["transaction_id"] == ["9001", "T-2"]
    assert (columns["amount"], columns["gateway_id"], columns["card_exp_month"]) == (
        ["29.99", ""],
        ["12", ""],
        ["09", ""],
    )
    assert columns["declined_at"] == ["2026-06-01T14:30:05+00:00", "2026-06-01 15:00:00"]
    assert feed_row(sparse, None, None, str) == {c: v[1] for c, v in columns.items()} | {
        "declined_at": "2026-06-01T15:00:00+00:00"
    }


@pytest.mark.parametrize(
    ("entity", "field", "value", "expected"),
    [
        ("SUBSCRIPTION", "status", "RECYCLE_FAILED", CrmRequest("/purchase/update/", {"purchaseId": "P1", "status": "RECYCLE_FAILED"})),
        ("SUBSCRIPTION", "status", "CANCELLED", CrmRequest("/purchase/cancel/", {"purchaseId": "P1", "cancelReason": "Recycle billing ended"})),
        ("SUBSCRIPTION", "next_bill_on", "2026-07-01", CrmRequest("/purchase/update/", {"purchaseId": "P1", "nextBillDate": "07/01/2026"})),
        ("SUBSCRIPTION", "failure_cause", "HARD_DECLINE", None),
        ("ORDER", "status", "COMPLETE", None),
        ("FULFILLMENT", "status", "HOLD", None),
    ],
)  # fmt: skip
def test_given_an_outbox_change_when_translated_then_it_is_the_crm_call_or_none(
    entity: str, field: str, value: str, expected: CrmRequest | None
) -> None:
    assert request_for(entity, field, "P1", value) == expected


def test_given_the_purchase_as_the_crm_holds_it_when_compared_then_a_change_already_there_is_seen() -> None:
    purchase = {"purchaseId": "P1", "status": "recycle_billing", "nextBillDate": "07/01/2026"}
    assert is_applied("status", "RECYCLE_BILLING", purchase)
    assert not is_applied("status", "RECYCLE_FAILED", purchase)
    assert is_applied("next_bill_on", "2026-07-01", purchase)
    assert not is_applied("next_bill_on", "2026-07-02", purchase)
    assert not is_applied("status", "RECYCLE_BILLING", None)
