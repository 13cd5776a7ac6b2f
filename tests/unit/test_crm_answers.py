"""The CRM's calls and answers: forms encoded and answers read as requests itself would."""

from __future__ import annotations

import pytest
import requests

from recycle_engine.adapters.crm_http import _form, _parsed


def _answer(content: bytes, content_type: str = "application/json") -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers["Content-Type"] = content_type
    response._content = content
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    return response


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(
            b'{"result": "SUCCESS", "message": {"data": [{"id": 7, "x": "caf\xc3\xa9"}]}}', id="utf-8"
        ),
        pytest.param(b'{"n": 123456789012345678901234567890}', id="an integer beyond 64 bits stays exact"),
        pytest.param(b'{"n": NaN}', id="NaN, which only the json module reads"),
        pytest.param(b'{"s": "\\ud800"}', id="a lone surrogate"),
        pytest.param(b'{"s": "caf\xe9"}', id="bytes that are not UTF-8, replaced"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', id="a byte-order mark, no charset named"),
        pytest.param('{"a": "é"}'.encode("utf-16"), id="UTF-16, no charset named"),
    ],
)
def test_given_an_answer_when_read_then_its_values_are_those_requests_reads(content: bytes) -> None:
    # given: without a charset, requests guesses one from the bytes
    answer = _answer(content, "application/json" if content.startswith(b"{") else "application/x-unnamed")

    # when
    body = _parsed(answer)

    # then
    assert repr(body) == repr(answer.json())


def test_given_an_answer_in_another_charset_when_read_then_that_charset_decodes_it() -> None:
    # given
    answer = _answer('{"city": "Bogotá"}'.encode("latin-1"), "application/json; charset=ISO-8859-1")

    # when
    body = _parsed(answer)

    # then
    assert body == {"city": "Bogotá"}


def test_given_text_that_is_not_json_when_read_then_it_is_a_value_error() -> None:
    with pytest.raises(requests.exceptions.JSONDecodeError):
        _parsed(_answer(b"<html>bad gateway</html>"))


@pytest.mark.parametrize(
    "params",
    [
        {
            "loginId": "crm-user",
            "password": "p@ss w0rd/+&=?%",
            "orderId": ",".join(f"O-{n}" for n in range(200)),
        },
        {"startDate": "06/01/2026", "endDate": "06/02/2026", "sortDir": "1", "page": "3"},
        {"purchaseId": "P-1", "cancelReason": "Recycle billing ended", "note": "Bogotá ü €, ok~_.-"},
        {"empty": "", "gone": None, "comma,key": "a,b"},
    ],
)
def test_given_a_form_when_encoded_then_the_body_is_the_one_requests_would_send(
    params: dict[str, str],
) -> None:
    # given
    expected = requests.Request("POST", "http://crm.test/x", data=params).prepare().body

    # when
    body = _form(params)

    # then
    assert body.decode("ascii") == expected
