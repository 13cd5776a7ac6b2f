"""The fake's state: scripted answers by vault id, the duplicate window, the charge log and faults."""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = ["Answer", "Charge", "FakeNmi", "Fault"]

# response_code -> (response, responsetext), as NMI's "Result Code Table" names them.
TEXTS: Final[dict[str, tuple[str, str]]] = {
    "100": ("1", "SUCCESS"),
    "200": ("2", "DECLINE"),
    "201": ("2", "Do Not Honor"),
    "202": ("2", "Insufficient funds"),
    "203": ("2", "Over limit"),
    "204": ("2", "Transaction not allowed"),
    "220": ("2", "Incorrect payment information"),
    "221": ("2", "No such card issuer"),
    "222": ("2", "No card number on file with issuer"),
    "223": ("2", "Expired card"),
    "224": ("2", "Invalid expiration date"),
    "225": ("2", "Invalid card security code"),
    "240": ("2", "Call issuer for further information"),
    "250": ("2", "Pick up card"),
    "251": ("2", "Lost card"),
    "252": ("2", "Stolen card"),
    "253": ("2", "Fraudulent card"),
    "260": ("2", "Declined with further instructions available"),
    "261": ("2", "Declined-Stop all recurring payments"),
    "262": ("2", "Declined-Stop this recurring program"),
    "263": ("2", "Declined-Update cardholder data available"),
    "264": ("2", "Declined-Retry in a few days"),
    "300": ("3", "Transaction was rejected by gateway"),
    "400": ("3", "Transaction error returned by processor"),
    "410": ("3", "Invalid merchant configuration"),
    "411": ("3", "Merchant account is inactive"),
    "420": ("3", "Communication error"),
    "421": ("3", "Communication error with issuer"),
    "430": ("3", "Duplicate transaction at processor"),
    "440": ("3", "Processor format error"),
    "441": ("3", "Invalid transaction information"),
    "460": ("3", "Processor feature not available"),
    "461": ("3", "Unsupported card type"),
}


class Fault(enum.StrEnum):
    """What the fake does to the next transact.php call instead of answering plainly."""

    TIMEOUT_AFTER_CHARGE = "timeout_after_charge"  # charges, then holds the answer past any read timeout
    SERVER_ERROR = "server_error"  # 500 without charging
    SERVER_ERROR_AFTER_CHARGE = "server_error_after_charge"  # charges, then answers 502
    MALFORMED_AFTER_CHARGE = "malformed_after_charge"  # charges, then answers a body that is not key=value
    RESET_AFTER_CHARGE = "reset_after_charge"  # charges, then closes the connection without a word
    QUERY_ERROR = "query_error"  # the next query.php answers 500


@dataclass(frozen=True)
class Charge:
    """One sale the fake made (or declined): what the log shows. Never holds the security key."""

    transactionid: str
    orderid: str
    customer_vault_id: str
    amount: str
    currency: str
    response: str
    responsetext: str
    response_code: str
    avsresponse: str
    cvvresponse: str
    condition: str
    at: float


@dataclass(frozen=True)
class Answer:
    """What transact.php answers: the fields in NMI's order, or `fault` for the server to act out."""

    fields: dict[str, str]
    fault: Fault | None = None
    charge: Charge | None = None


@dataclass
class FakeNmi:
    """All state behind one fake; thread-safe. `security_key` is the one key it accepts."""

    security_key: str
    answer_delay_s: float = 0.0  # held after charging, before answering (lets a test kill mid-call)
    hold_s: float = 30.0  # how long TIMEOUT_AFTER_CHARGE holds the answer
    by_vault: dict[str, str] = field(default_factory=dict)  # customer_vault_id -> response_code
    default_code: str = "100"
    charges: list[Charge] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    requests_seen: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(5_000_000_001))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scripting ---------------------------------------------------------------------------------

    def script(self, *, by_vault: dict[str, str] | None = None, default_code: str | None = None) -> None:
        with self._lock:
            if by_vault is not None:
                self.by_vault.update(by_vault)
            if default_code is not None:
                self.default_code = default_code

    def add_faults(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(c) for c in self.charges]

    # -- the API -----------------------------------------------------------------------------------

    def transact(self, form: dict[str, str]) -> Answer:
        with self._lock:
            self.requests_seen += 1
            fault = self.faults.popleft() if self.faults and self.faults[0] is not Fault.QUERY_ERROR else None
            if fault is Fault.SERVER_ERROR:
                return Answer({}, fault)
            problem = self._problem(form)
            if problem is not None:
                return Answer(_error(problem))
            vault = form["customer_vault_id"]
            amount = form["amount"]
            duplicate = self._duplicate_of(vault, amount, form.get("orderid", ""), form.get("dup_seconds"))
            if duplicate is not None:
                return Answer(_error(f"Duplicate transaction REFID:{duplicate.transactionid}"))
            code = self.by_vault.get(vault, self.default_code)
            response, text = TEXTS.get(code, ("3", "Unknown result code"))
            charge = Charge(
                transactionid=str(next(self._ids)),
                orderid=form.get("orderid", ""),
                customer_vault_id=vault,
                amount=amount,
                currency=form.get("currency", "USD").upper(),
                response=response,
                responsetext=text,
                response_code=code,
                avsresponse="Y" if response == "1" else "N",
                cvvresponse="M" if response == "1" else "",
                condition="pendingsettlement" if response == "1" else "failed",
                at=time.monotonic(),
            )
            self.charges.append(charge)
        fields = {
            "response": charge.response,
            "responsetext": charge.responsetext,
            "authcode": "123456" if charge.response == "1" else "",
            "transactionid": charge.transactionid,
            "avsresponse": charge.avsresponse,
            "cvvresponse": charge.cvvresponse,
            "orderid": charge.orderid,
            "type": "sale",
            "response_code": charge.response_code,
            "customer_vault_id": charge.customer_vault_id,
        }
        return Answer(fields, fault, charge)

    def query(self, form: dict[str, str]) -> tuple[int, str]:
        with self._lock:
            if self.faults and self.faults[0] is Fault.QUERY_ERROR:
                self.faults.popleft()
                return 500, "Internal Server Error"
            if form.get("security_key") != self.security_key:
                return 200, _xml_error("Authentication Failed")
            order_id = form.get("order_id", "")
            found = [c for c in self.charges if order_id and c.orderid == order_id]
        return 200, _query_xml(found)

    def _problem(self, form: dict[str, str]) -> str | None:
        if form.get("security_key") != self.security_key:
            return "Authentication Failed"
        if form.get("type") != "sale":
            return "Invalid Transaction Type REFID:1"
        if not form.get("customer_vault_id"):
            return "Invalid Customer Vault Id REFID:2"
        try:
            if Decimal(form.get("amount", "")) <= 0:
                return "Invalid amount REFID:3"
        except InvalidOperation:
            return "Invalid amount REFID:3"
        return None

    def _duplicate_of(self, vault: str, amount: str, orderid: str, dup_seconds: str | None) -> Charge | None:
        # NMI refuses the same card and amount within dup_seconds (default 1200 s); 0 turns it off.
        window = float(dup_seconds) if dup_seconds not in (None, "") else 1200.0
        if window <= 0:
            return None
        now = time.monotonic()
        for c in reversed(self.charges):
            if now - c.at > window:
                break
            if c.customer_vault_id == vault and c.amount == amount and c.response == "1":
                return c
        return None


def _error(text: str) -> dict[str, str]:
    return {
        "response": "3",
        "responsetext": text,
        "authcode": "",
        "transactionid": "",
        "avsresponse": "",
        "cvvresponse": "",
        "orderid": "",
        "type": "sale",
        "response_code": "300",
    }


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_error(text: str) -> str:
    return f"<nm_response><error_response>{_esc(text)}</error_response></nm_response>"


def _query_xml(charges: list[Charge]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<nm_response>']
    for c in charges:
        parts.append(
            "<transaction>"
            f"<transaction_id>{c.transactionid}</transaction_id>"
            "<transaction_type>cc</transaction_type>"
            f"<condition>{c.condition}</condition>"
            f"<order_id>{_esc(c.orderid)}</order_id>"
            f"<customerid>{_esc(c.customer_vault_id)}</customerid>"
            f"<currency>{c.currency}</currency>"
            f"<avs_response>{c.avsresponse}</avs_response>"
            f"<csc_response>{c.cvvresponse}</csc_response>"
            "<action>"
            f"<amount>{c.amount}</amount>"
            "<action_type>sale</action_type>"
            f"<success>{1 if c.response == '1' else 0}</success>"
            f"<response_text>{_esc(c.responsetext)}</response_text>"
            f"<response_code>{c.response_code}</response_code>"
            "</action>"
            "</transaction>"
        )
    parts.append("</nm_response>")
    return "".join(parts)
