"""The NMI client over real HTTP against the bundled fake: answers, lost answers, lookups by order id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from recycle_engine.adapters.nmi_codes import HARD_CODES, NmiAnswer, parse_query, result_of
from recycle_engine.adapters.nmi_http import NmiClient
from recycle_engine.config import NmiSettings
from recycle_engine.errors import ProcessorConfigError, ProcessorUnknownOutcome
from recycle_engine.nmi_fake import FakeNmi, Fault, RunningFakeNmi, start_fake_nmi
from recycle_engine.nmi_fake.state import TEXTS
from recycle_engine.ports import ChargeRequest, ChargeResult

KEY = "nmi-test-key-7c1f0e9a"


@pytest.fixture
def fake() -> Iterator[RunningFakeNmi]:
    running = start_fake_nmi(FakeNmi(KEY, hold_s=5.0))
    yield running
    running.stop()


def _client(fake: RunningFakeNmi, *, key: str = KEY, read_timeout_s: float = 2.0) -> NmiClient:
    return NmiClient("nmi-1", NmiSettings(key, base_url=fake.url, read_timeout_s=read_timeout_s))


def _sale(reference: str = "ord-1", token: str = "vault-1", amount_minor: int = 2999) -> ChargeRequest:
    return ChargeRequest("nmi-1", reference, amount_minor, "USD", token, "1111")


def test_given_an_approving_card_when_charged_then_approved_and_the_fake_logs_one_sale_with_our_order_id(
    fake: RunningFakeNmi,
) -> None:
    # when
    result, text = _client(fake).charge(_sale())
    # then
    assert result is ChargeResult.APPROVED
    log = fake.fake.log()
    assert [(c["orderid"], c["amount"], c["currency"]) for c in log] == [("ord-1", "29.99", "USD")]
    assert KEY not in repr(log)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("202", ChargeResult.SOFT_DECLINE),
        ("264", ChargeResult.SOFT_DECLINE),
        ("252", ChargeResult.HARD_DECLINE),
    ],
)
def test_given_a_declining_card_when_charged_then_the_code_family_says_soft_or_hard(
    fake: RunningFakeNmi, code: str, expected: ChargeResult
) -> None:
    # given
    fake.fake.script(by_vault={"vault-d": code})
    # when
    result, text = _client(fake).charge(_sale(token="vault-d"))
    # then
    assert result is expected
    assert text == TEXTS[code][1]


def test_every_documented_result_code_maps_to_a_result() -> None:
    for code, (response, text) in TEXTS.items():
        result, _ = result_of(NmiAnswer(response, text, code, "1", "o"))
        if response == "1":
            assert result is ChargeResult.APPROVED
        elif code in HARD_CODES:
            assert result is ChargeResult.HARD_DECLINE
        else:
            assert result is ChargeResult.SOFT_DECLINE, code


@pytest.mark.parametrize(
    "fault",
    [
        Fault.TIMEOUT_AFTER_CHARGE,
        Fault.SERVER_ERROR_AFTER_CHARGE,
        Fault.MALFORMED_AFTER_CHARGE,
        Fault.RESET_AFTER_CHARGE,
    ],
)
def test_given_an_answer_lost_after_the_charge_when_looked_up_by_order_id_then_the_charge_is_found(
    fake: RunningFakeNmi, fault: Fault
) -> None:
    # given
    fake.fake.add_faults(fault)
    client = _client(fake, read_timeout_s=0.5)
    # when
    with pytest.raises(ProcessorUnknownOutcome):
        client.charge(_sale("ord-lost"))
    found = client.find_charge("ord-lost")
    # then
    assert found == (ChargeResult.APPROVED, "SUCCESS")
    assert len(fake.fake.log()) == 1


def test_given_a_500_before_charging_when_looked_up_then_the_absence_is_confirmed(
    fake: RunningFakeNmi,
) -> None:
    # given
    fake.fake.add_faults(Fault.SERVER_ERROR)
    client = _client(fake)
    # when
    with pytest.raises(ProcessorUnknownOutcome):
        client.charge(_sale("ord-none"))
    # then
    assert client.find_charge("ord-none") is None
    assert fake.fake.log() == []


def test_given_the_query_fails_when_looking_up_then_the_outcome_stays_unknown(fake: RunningFakeNmi) -> None:
    fake.fake.add_faults(Fault.QUERY_ERROR)
    with pytest.raises(ProcessorUnknownOutcome):
        _client(fake).find_charge("ord-x")


def test_given_a_wrong_key_when_charging_then_a_config_error_names_no_key(fake: RunningFakeNmi) -> None:
    with pytest.raises(ProcessorConfigError) as caught:
        _client(fake, key="wrong-key-123").charge(_sale())
    assert "wrong-key-123" not in str(caught.value)
    assert fake.fake.log() == []


def test_given_the_same_card_and_amount_inside_the_window_then_the_fake_refuses_a_duplicate(
    fake: RunningFakeNmi,
) -> None:
    # given: a gateway that asks NMI for a 60 s duplicate window
    client = NmiClient("nmi-1", NmiSettings(KEY, base_url=fake.url, dup_seconds=60))
    client.charge(_sale("ord-a"))
    # when
    result, text = client.charge(_sale("ord-b"))
    # then
    assert result is ChargeResult.SOFT_DECLINE
    assert text.startswith("Duplicate transaction REFID:")
    assert len(fake.fake.log()) == 1


def test_the_fake_answers_form_posts_in_key_value_form(fake: RunningFakeNmi) -> None:
    body = {"security_key": KEY, "type": "sale", "customer_vault_id": "v", "amount": "1.00", "orderid": "o"}
    text = requests.post(f"{fake.url}/api/transact.php", data=body, timeout=5).text
    assert text.startswith("response=1&responsetext=SUCCESS&")
    xml = requests.post(f"{fake.url}/api/query.php", data={"security_key": KEY, "order_id": "o"}, timeout=5)
    assert "<order_id>o</order_id>" in xml.text


def test_a_card_number_in_nmis_text_is_masked_before_it_is_kept() -> None:
    answer = NmiAnswer("2", "Declined card 4111 1111 1111 1111", "200", "1", "o")
    _, text = result_of(answer)
    assert "4111 1111 1111 1111" not in text
    assert text.startswith("Declined card")


@pytest.mark.parametrize(
    "xml",
    [
        "<nm_response><error_response>Temporarily unavailable</error_response></nm_response>",
        "<html>",
        "<other/>",
    ],
)
def test_a_query_answer_that_is_an_error_or_unreadable_is_unknown_never_an_absence(xml: str) -> None:
    with pytest.raises(ProcessorUnknownOutcome):
        parse_query(xml, "ord-1")


def test_a_query_answer_without_our_order_id_is_a_confirmed_absence() -> None:
    assert parse_query("<nm_response></nm_response>", "ord-1") is None
