"""The NMI Payment API client: one pooled requests.Session per gateway, a sale by vault id with our
order id, and the lookup of a sale by that order id (docs/nmi.md)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Final

import requests
from requests.adapters import HTTPAdapter

from recycle_engine.adapters import nmi_codes
from recycle_engine.config import NmiSettings
from recycle_engine.errors import ProcessorUnknownOutcome
from recycle_engine.money import currency_exponent
from recycle_engine.ports import ChargeRequest, ChargeResult

__all__ = ["NmiClient"]

log = logging.getLogger(__name__)

_USER_AGENT: Final = "recycle-engine/0.1"


class NmiClient:
    """One NMI gateway. Thread-safe for concurrent charges (the pool holds `pool_size` connections).

    The security key travels only in request bodies; it is never logged or put in an error."""

    def __init__(self, gateway_id: str, settings: NmiSettings, *, pool_size: int = 8) -> None:
        self.gateway_id = gateway_id
        self._settings = settings
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self._root = settings.base_url.rstrip("/")
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = _USER_AGENT

    def close(self) -> None:
        self._session.close()

    def charge(self, request: ChargeRequest) -> tuple[ChargeResult, str]:
        """A sale on the vaulted card, with `request.reference` as NMI's orderid."""
        form = {
            "security_key": self._settings.security_key,
            "type": "sale",
            "customer_vault_id": request.card_token,
            "amount": _amount_text(request.amount_minor, request.currency),
            "currency": request.currency,
            "orderid": request.reference,
            "dup_seconds": str(self._settings.dup_seconds),
        }
        body = self._post("transact.php", form, request.reference)
        return nmi_codes.result_of(nmi_codes.parse_transact(body))

    def find_charge(self, reference: str) -> tuple[ChargeResult, str] | None:
        """The sale NMI holds with orderid `reference`, or None when query.php lists none."""
        form = {"security_key": self._settings.security_key, "order_id": reference}
        answer = nmi_codes.parse_query(self._post("query.php", form, reference), reference)
        return None if answer is None else nmi_codes.result_of(answer)

    def _post(self, endpoint: str, form: dict[str, str], reference: str) -> str:
        try:
            response = self._session.post(f"{self._root}/api/{endpoint}", data=form, timeout=self._timeout)
        except requests.RequestException as exc:
            # Even a refused or reset connection may follow a charge NMI made; only a lookup can tell.
            log.warning(
                "NMI answer lost",
                extra={"gateway": self.gateway_id, "order": reference, "error": type(exc).__name__},
            )
            raise ProcessorUnknownOutcome(f"NMI {endpoint}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            log.warning(
                "NMI answer lost",
                extra={"gateway": self.gateway_id, "order": reference, "status": response.status_code},
            )
            raise ProcessorUnknownOutcome(f"NMI {endpoint}: HTTP {response.status_code}")
        return response.text


def _amount_text(amount_minor: int, currency: str) -> str:
    digits = currency_exponent(currency)
    return str(Decimal(amount_minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))
