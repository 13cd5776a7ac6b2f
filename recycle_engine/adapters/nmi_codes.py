"""The one module that knows NMI's answers: the key=value transact.php answer, the query.php XML,
and which response codes are soft or hard declines (docs/nmi.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from recycle_engine.domain.cards import mask_pans
from recycle_engine.errors import ProcessorConfigError, ProcessorUnknownOutcome
from recycle_engine.ports import ChargeResult

__all__ = ["HARD_CODES", "NmiAnswer", "parse_query", "parse_transact", "result_of"]

# Declines (response=2) that no retry can cure: the card or account is wrong, lost, stolen or
# fraudulent, or the issuer asked to stop recurring charges. Every other 2xx is soft.
HARD_CODES: Final = frozenset(
    {"220", "221", "222", "223", "224", "250", "251", "252", "253", "261", "262", "263", "461"}
)
_RESPONSES: Final = frozenset({"1", "2", "3"})


@dataclass(frozen=True)
class NmiAnswer:
    """One sale as NMI reports it, from transact.php or from query.php."""

    response: str  # 1 approved, 2 declined, 3 error
    responsetext: str
    response_code: str
    transactionid: str
    orderid: str
    avsresponse: str = ""
    cvvresponse: str = ""


def parse_transact(body: str) -> NmiAnswer:
    """Read transact.php's `a=1&b=2` answer; an answer without a known `response` is lost to us."""
    fields = dict(parse_qsl(body.strip(), keep_blank_values=True))
    if fields.get("response") not in _RESPONSES or "response_code" not in fields:
        raise ProcessorUnknownOutcome("NMI answered a body that is not a transact.php answer")
    return NmiAnswer(
        response=fields["response"],
        responsetext=fields.get("responsetext", ""),
        response_code=fields["response_code"],
        transactionid=fields.get("transactionid", ""),
        orderid=fields.get("orderid", ""),
        avsresponse=fields.get("avsresponse", ""),
        cvvresponse=fields.get("cvvresponse", ""),
    )


def result_of(answer: NmiAnswer) -> tuple[ChargeResult, str]:
    """Our result and text for an NMI answer. Raises ProcessorConfigError on refused credentials."""
    # NMI's text is stored and shown in reports: a card number in it never gets that far.
    text = mask_pans(answer.responsetext) or answer.response_code
    if answer.response == "1":
        return ChargeResult.APPROVED, text
    if answer.response == "3" and text.lower().startswith("authentication failed"):
        raise ProcessorConfigError("NMI refused the security key (Authentication Failed)")
    if answer.response_code in HARD_CODES:
        return ChargeResult.HARD_DECLINE, text
    # Declines outside the hard list, and gateway or processor errors (response 3, codes 3xx/4xx)
    # that charged nothing: the attempt failed softly and the ladder moves on.
    return ChargeResult.SOFT_DECLINE, text


def parse_query(xml_text: str, order_id: str) -> NmiAnswer | None:
    """The sale query.php lists for `order_id`, or None when it lists none (a confirmed absence).

    An error_response or unreadable XML is not an absence: it raises ProcessorUnknownOutcome."""
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 - our own gateway's answer, parsed without DTDs
    except ET.ParseError as exc:
        raise ProcessorUnknownOutcome("NMI query answered unreadable XML") from exc
    if root.tag != "nm_response":
        raise ProcessorUnknownOutcome("NMI query answered without nm_response")
    error = root.findtext("error_response")
    if error is not None:
        if error.lower().startswith("authentication failed"):
            raise ProcessorConfigError("NMI refused the security key on query.php")
        raise ProcessorUnknownOutcome(f"NMI query error: {error[:200]}")
    for tx in root.findall("transaction"):
        if (tx.findtext("order_id") or "") != order_id:
            continue
        for action in tx.findall("action"):
            if (action.findtext("action_type") or "") != "sale":
                continue
            code = action.findtext("response_code") or ""
            success = (action.findtext("success") or "") == "1"
            return NmiAnswer(
                response="1" if success else ("2" if code.startswith("2") else "3"),
                responsetext=action.findtext("response_text") or "",
                response_code=code,
                transactionid=tx.findtext("transaction_id") or "",
                orderid=order_id,
                avsresponse=tx.findtext("avs_response") or "",
                cvvresponse=tx.findtext("csc_response") or "",
            )
    return None
