"""The CRM (Konnektive / Checkout Champ) API client: one pooled requests.Session, the envelope, paging
of queries, the pace limit and retries (docs/crm-api.md in the shared docs; README "The CRM").

Every call is a POST with loginId and password in the form body. They travel nowhere else: never in
a URL, a log line or an error. The CRM's own messages are masked for card numbers before use.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlencode

import orjson
import requests
from requests.adapters import HTTPAdapter

from recycle_engine.adapters.flexfactor_http import TokenBucket
from recycle_engine.config import CrmSettings
from recycle_engine.domain.cards import mask_pans
from recycle_engine.errors import CrmProtocolError, CrmRefused, CrmUnavailable
from recycle_engine.ports import CrmPage as Page

__all__ = ["CrmClient", "is_empty_result"]

log = logging.getLogger(__name__)

_USER_AGENT: Final = "recycle-engine/0.1"
_EMPTY_TEXT: Final = "matching those parameters could be found"
# Digits as b"1", every other byte as b"0": a run of 20 "1"s may be an integer orjson reads as a float.
_DIGIT_SHAPES: Final = bytes(0x31 if 0x30 <= code <= 0x39 else 0x30 for code in range(256))
_LONG_NUMBER: Final = b"1" * 20
_FORM_TYPE: Final = {"Content-Type": "application/x-www-form-urlencoded"}


def is_empty_result(message: object) -> bool:
    """An ERROR envelope that only says nothing matched: zero rows, not a failure."""
    return isinstance(message, str) and _EMPTY_TEXT in message.lower()


class CrmClient:
    """One CRM account. Queries (reads) are retried on transport errors, timeouts and 5xx; updates are
    sent once by `update` and their failures left to the caller, which reads back before resending."""

    def __init__(self, settings: CrmSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._settings = settings
        self._root = settings.base_url.rstrip("/")
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self._sleep = sleep
        self._limiter = TokenBucket(settings.rate_limit_per_second, sleep=sleep)
        self._session = requests.Session()
        # A pull calls from up to five threads at once (a page ahead, two pages' look-ups): each keeps
        # its connection, rather than one being opened and dropped per call.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=8, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = _USER_AGENT
        # The environment's proxies and CA bundle, read once for the one host called: left to requests,
        # it reads them again on every call, a third of a call's own CPU (and ~/.netrc, not used here).
        found = self._session.merge_environment_settings(self._root, {}, None, None, None)
        self._session.proxies.update(found["proxies"])
        self._session.verify = found["verify"]
        self._session.trust_env = False
        self.calls = 0
        self._calls_lock = threading.Lock()  # a pull's threads count their calls together

    def __repr__(self) -> str:
        return f"CrmClient(base_url={self._root!r}, credentials=<hidden>)"

    def close(self) -> None:
        self._session.close()

    def query_page(self, endpoint: str, params: Mapping[str, str], page: int) -> Page:
        """One page of a query; the empty-result message is an empty page."""
        form = {**params, "page": str(page), "resultsPerPage": str(self._settings.results_per_page)}
        body = self._call_retrying(endpoint, form)
        if body.get("result") != "SUCCESS":
            message = body.get("message")
            if is_empty_result(message):
                return Page([], 0, self._settings.results_per_page)
            raise CrmRefused(endpoint, _text(message))
        message = body.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("data"), list):
            raise CrmProtocolError(f"CRM {endpoint}: a SUCCESS answer without message.data")
        rows = [row for row in message["data"] if isinstance(row, dict)]
        try:
            total = int(message.get("totalResults") or 0)
            per_page = int(message.get("resultsPerPage") or self._settings.results_per_page)
        except (TypeError, ValueError):
            total, per_page = 0, self._settings.results_per_page
        return Page(rows, total, per_page)

    def query_all(self, endpoint: str, params: Mapping[str, str]) -> Iterator[Page]:
        """Every page of a query in turn, until a short or empty page."""
        page = 1
        while True:
            found = self.query_page(endpoint, params, page)
            if found.rows:
                yield found
            # A full page as the CRM sized it (it may cap our resultsPerPage) means there may be more.
            if len(found.rows) < min(found.per_page, self._settings.results_per_page) or not found.rows:
                return
            page += 1

    def query_ids(self, endpoint: str, key: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Records by id, a page's worth of ids per call (a comma-separated list)."""
        wanted = sorted(set(ids))
        found: dict[str, dict[str, Any]] = {}
        size = self._settings.results_per_page
        for start in range(0, len(wanted), size):
            chunk = wanted[start : start + size]
            for page in self.query_all(endpoint, {key: ",".join(chunk)}):
                for row in page.rows:
                    found[str(row.get(key, ""))] = row
                if found.keys() >= set(chunk):
                    break  # an id names one record: a full page holding them all has no next page
        return found

    def update(self, endpoint: str, params: Mapping[str, str]) -> str:
        """One update, sent once: its success message, or CrmRefused (ERROR) / CrmUnavailable (no answer:
        it may have been applied) / CrmProtocolError."""
        body = self._call(endpoint, params)
        if body.get("result") != "SUCCESS":
            raise CrmRefused(endpoint, _text(body.get("message")))
        return _text(body.get("message"))

    def _call_retrying(self, endpoint: str, form: Mapping[str, str]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return self._call(endpoint, form)
            except CrmUnavailable as exc:
                if attempt >= self._settings.max_retries:
                    raise
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "CRM query retried", extra={"endpoint": endpoint, "error": str(exc), "wait_s": delay}
                )
                self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Capped exponential back-off with jitter, so a struggling CRM is not hit in step.
        ceiling = min(self._settings.backoff_max_s, self._settings.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2  # noqa: S311 - timing jitter, not security

    def _call(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        form = {"loginId": self._settings.login_id, "password": self._settings.password, **params}
        self._limiter.acquire()
        with self._calls_lock:
            self.calls += 1
        try:
            response = self._session.post(
                f"{self._root}{endpoint}", data=_form(form), headers=_FORM_TYPE, timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise CrmUnavailable(f"CRM {endpoint}: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise CrmUnavailable(f"CRM {endpoint}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise CrmProtocolError(f"CRM {endpoint}: HTTP {response.status_code}")
        try:
            body = _parsed(response)
        except ValueError:
            raise CrmProtocolError(f"CRM {endpoint}: the answer is not JSON") from None
        if not isinstance(body, dict) or body.get("result") not in ("SUCCESS", "ERROR"):
            raise CrmProtocolError(f"CRM {endpoint}: the answer has no result SUCCESS or ERROR")
        return body


def _form(params: Mapping[str, str]) -> bytes:
    """The form body requests would encode from `params`, to the byte. urlencode quotes a value holding
    a comma byte by byte in Python (0.26 ms for the 200 ids of a look-up); told that a comma is safe,
    it takes one C-level pass, and the commas are then written as requests writes them."""
    kept = {k: v for k, v in params.items() if v is not None}  # requests, too, leaves out a None value
    return urlencode(kept, safe=",").replace(",", "%2C").encode("ascii")


def _parsed(response: requests.Response) -> Any:
    """The answer's JSON. orjson reads the bytes at under half the CPU of response.json() (pages of
    200 rows, a few µs a row); whatever it reads differently goes through response.json() as before:
    text that is not UTF-8 (refused by orjson, replaced by requests), NaN (refused by orjson) and
    integers of 20 digits or more (orjson makes a float of those beyond 64 bits)."""
    content = response.content
    if (
        response.encoding in (None, "utf-8", "UTF-8")
        and content.translate(_DIGIT_SHAPES).find(_LONG_NUMBER) < 0
    ):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass  # the answer as requests reads it decides: JSON after all, or not JSON
    return response.json()


def _text(message: object) -> str:
    text = message if isinstance(message, str) else "" if message is None else str(message)
    return mask_pans(text)[:500]
