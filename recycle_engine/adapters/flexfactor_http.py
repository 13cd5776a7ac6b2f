"""The FlexFactor HTTP client: the one requests.Session, token cache, timeouts, retries, throttle."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from recycle_engine.adapters import flexfactor_codes as codes
from recycle_engine.config import BatchingSettings, FlexFactorSettings, HttpSettings
from recycle_engine.domain.cards import contains_pan, looks_like_pan
from recycle_engine.errors import (
    FlexFactorConfigError,
    FlexFactorConflict,
    FlexFactorError,
    FlexFactorNotFoundError,
    FlexFactorNotSent,
    FlexFactorProtocolError,
    FlexFactorRateLimited,
    FlexFactorRejected,
    FlexFactorUnknownOutcome,
    InputError,
)
from recycle_engine.ports import (
    BearerToken,
    Clock,
    EvaluateAnswer,
    FlexFactorGateway,
    OrderSnapshot,
    TokenCache,
)

__all__ = ["FlexFactorClient", "TokenBucket", "retry_after_s"]

log = logging.getLogger(__name__)

TOKEN_MARGIN: Final = timedelta(seconds=60)  # A16: renew this long before `expires`
# How far back external_cancel looks for the order after a 400: windows last at most 21 days.
EXTERNAL_CANCEL_LOOKBACK: Final = timedelta(days=45)
_SERVER_ERRORS: Final = frozenset({500, 502, 503, 504})
_USER_AGENT: Final = "recycle-engine/0.1"
# Back-pressure (429): a Retry-After longer than this is not waited out in one go; the rate halves at
# each push back down to 1/SLOWEST_FRACTION of the configured one, and climbs back in RECOVERY_STEPS.
MAX_RETRY_AFTER_S: Final = 120.0
SLOWEST_FRACTION: Final = 32
RECOVERY_STEPS: Final = 128


class TokenBucket:
    """Thread-safe token bucket: at most `rate_per_s` calls a second, bursts up to `burst`.

    It is also the client's answer to back-pressure: `back_off` pauses every caller and halves the
    rate (down to 1/32 of the configured one), and each `eased` call wins a little of it back."""

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._configured = rate_per_s
        self._rate = rate_per_s
        self._floor = rate_per_s / SLOWEST_FRACTION
        self._step = rate_per_s / RECOVERY_STEPS
        self._max_capacity = burst if burst is not None else max(1.0, rate_per_s)
        self._capacity = self._max_capacity
        self._tokens = self._capacity
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()
        self._paused_until = self._last
        self._cut_until = self._last  # one halving per pause, however many callers met the 429
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """The rate now in force (the configured one unless FlexFactor pushed back)."""
        return self._rate

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited. Rate <= 0: no limit
        (a pause still holds)."""
        with self._lock:
            now = self._monotonic()
            start = max(now, self._paused_until)
            if self._rate <= 0:
                wait = start - now
            else:
                if start > self._last:
                    self._tokens = min(self._capacity, self._tokens + (start - self._last) * self._rate)
                    self._last = start
                # Going negative reserves a future token, so waiters queue fairly without holding the lock.
                self._tokens -= 1.0
                wait = (start - now) + (-self._tokens / self._rate if self._tokens < 0 else 0.0)
        if wait > 0:
            self._sleep(wait)
        return wait

    def back_off(self, pause_s: float) -> None:
        """FlexFactor said slow down: nobody calls for `pause_s`, then at half the rate (floor 1/32)."""
        with self._lock:
            now = self._monotonic()
            self._paused_until = max(self._paused_until, now + max(0.0, pause_s))
            if self._rate > 0 and now >= self._cut_until:
                self._rate = max(self._floor, self._rate / 2)
                self._capacity = max(1.0, min(self._max_capacity, self._rate))
                self._cut_until = self._paused_until
            if self._rate > 0:
                # What accrued before the pause is not spent at once after it: one probe, then the rate.
                if self._last < now:
                    self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
                self._tokens = min(self._tokens, 1.0)
                self._last = max(self._last, self._paused_until)

    def eased(self) -> None:
        """A call went through: win back 1/128 of the configured rate, up to it."""
        if self._rate >= self._configured:
            return
        with self._lock:
            self._rate = min(self._configured, self._rate + self._step)
            self._capacity = max(1.0, min(self._max_capacity, self._rate))


class FlexFactorClient:
    """ports.FlexFactorGateway over HTTP for one FlexFactor gateway (one credential set). Thread-safe."""

    def __init__(
        self,
        settings: FlexFactorSettings,
        http: HttpSettings,
        batching: BatchingSettings,
        clock: Clock,
        *,
        gateway_id: str,
        sleep: Callable[[float], None] = time.sleep,
        token_cache: TokenCache | None = None,
    ) -> None:
        """`token_cache`: where the token outlives this process (bootstrap passes the database's);
        without one each client fetches its own."""
        self._settings = settings
        self._http = http
        self._clock = clock
        self.gateway_id = gateway_id
        self._base = settings.base_url.rstrip("/")
        self._timeout = (http.connect_timeout_s, http.read_timeout_s)
        self._sleep = sleep
        self._limiter = TokenBucket(batching.rate_limit_per_second, sleep=sleep)
        self._session = requests.Session()
        pool = max(batching.concurrency, 10)
        # Retries are ours (they must know what is safe to resend), so urllib3's are off.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({"Accept": "application/json", "User-Agent": _USER_AGENT})
        _environment_read_once(self._session, self._base)
        self._token: BearerToken | None = None
        self._token_lock = threading.Lock()
        self._token_cache = token_cache
        self.token_fetches = 0  # for operators and tests: how many times we asked for a token

    def __repr__(self) -> str:
        return f"FlexFactorClient(gateway_id={self.gateway_id!r}, base_url={self._base!r})"

    def __enter__(self) -> FlexFactorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (and the token cache's); the client is unusable afterwards."""
        self._session.close()
        if self._token_cache is not None:
            self._token_cache.close()

    # --- the port ---------------------------------------------------------------------------------

    def evaluate(self, body: Mapping[str, Any]) -> EvaluateAnswer:
        """POST /evaluate once; resends only what provably never reached FlexFactor (same bytes, same key).

        Raises FlexFactorRejected (400 or a FAILED envelope), FlexFactorUnknownOutcome (read timeout,
        5xx, unreadable answer), FlexFactorNotSent, FlexFactorRateLimited (429 on every try),
        FlexFactorConflict (409 after retries), FlexFactorConfigError, InputError (no idempotencyKey,
        a card number in cardNumber, or one written in a payer or billingInformation field)."""
        _refuse_unsafe_body(body)
        response = self._send("POST", "/evaluate", body=body, resendable=False)
        try:
            answer = self._json(response, "/evaluate")
            failure = codes.envelope_failure(answer)
            if failure is not None:
                raise FlexFactorRejected(failure)
            return codes.evaluate_answer(answer)
        except FlexFactorProtocolError as exc:
            # FlexFactor answered 200, so it most likely holds an order we cannot identify from this
            # answer; calling it anything but unknown could hand the same decline off twice.
            raise FlexFactorUnknownOutcome(
                f"gateway {self.gateway_id}: /evaluate answer unreadable ({exc}); look the order up"
            ) from exc

    def get_order(self, flexfactor_order_id: str) -> OrderSnapshot:
        """GET /orders/{id}; raises FlexFactorNotFoundError (404) or FlexFactorProtocolError."""
        path = f"/orders/{quote(flexfactor_order_id, safe='')}"
        response = self._send("GET", path, resendable=True)
        with self._naming_gateway(path):
            return codes.order_snapshot(self._json(response, path), now=self._clock.now())

    def list_orders(
        self,
        *,
        placed_from: datetime,
        placed_to: datetime,
        statuses: Sequence[int] = (),
        query: str | None = None,
        page_size: int = 100,
    ) -> Iterator[OrderSnapshot]:
        """GET /orders for our MID placed in [placed_from, placed_to], page by page until hasNextPage
        is false; lazily, one page per request."""
        params: list[tuple[str, str | int]] = [
            ("mid", self._settings.mid),
            ("from", _utc_text(placed_from)),
            ("to", _utc_text(placed_to)),
            ("orderBy", "createdOn"),
            ("sort", "asc"),
            ("pageSize", page_size),
        ]
        params.extend(("status", s) for s in statuses)
        if query:
            params.append(("query", query))
        page_number = 1
        while True:
            response = self._send(
                "GET", "/orders", params=[*params, ("pageNumber", page_number)], resendable=True
            )
            page = self._json(response, "/orders")
            items = codes.get_ci(page, "items")
            if not isinstance(items, list):
                raise FlexFactorProtocolError(f"gateway {self.gateway_id}: order list page has no items")
            now = self._clock.now()
            with self._naming_gateway("/orders"):
                snapshots = [codes.order_snapshot(_object(item), now=now) for item in items]
            yield from snapshots
            if not _has_next_page(page, page_number, len(items)):
                return
            page_number += 1

    def find_by_external_id(
        self, external_order_id: str, *, placed_from: datetime, placed_to: datetime
    ) -> OrderSnapshot | None:
        """The order we sent with orderId = external_order_id (exact match on externalOrderId), or None."""
        for order in self.list_orders(placed_from=placed_from, placed_to=placed_to, query=external_order_id):
            # `query` is a search, not a filter: only an exact match is ours.
            if order.external_order_id == external_order_id:
                return order
        return None

    def cancel(self, flexfactor_order_id: str) -> OrderSnapshot | None:
        """POST /orders/{id}/cancel. None when cancelled; after a 400 the order is re-read and returned
        if it is already final (A9), for the caller to apply; otherwise FlexFactorRejected is raised."""
        path = f"/orders/{quote(flexfactor_order_id, safe='')}/cancel"
        try:
            self._send_cancel(path)
        except FlexFactorRejected as rejected:
            order = self.get_order(flexfactor_order_id)
            return _final_or_raise(order, rejected)
        return None

    def external_cancel(self, external_order_id: str) -> OrderSnapshot | None:
        """POST /orders/{orderId}/external-cancel by our orderId; returns as `cancel` does, looking the
        order up by orderId over the last 45 days after a 400. FlexFactorNotFoundError on a 404."""
        path = f"/orders/{quote(external_order_id, safe='')}/external-cancel"
        try:
            self._send_cancel(path)
        except FlexFactorRejected as rejected:
            now = self._clock.now()
            order = self.find_by_external_id(
                external_order_id,
                placed_from=now - EXTERNAL_CANCEL_LOOKBACK,
                placed_to=now + timedelta(days=1),
            )
            if order is None:
                raise
            return _final_or_raise(order, rejected)
        return None

    # --- transport --------------------------------------------------------------------------------

    def _send_cancel(self, path: str) -> None:
        # The optional key makes a cancel replayable for 24 h, so a lost answer may be retried safely.
        self._send("POST", path, body={"idempotencyKey": str(uuid.uuid4())}, resendable=True)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Sequence[tuple[str, str | int]] | None = None,
        resendable: bool,
    ) -> requests.Response:
        """One logical call with bounded retries. `resendable` says a lost answer may be asked again
        (GET, keyed cancel); /evaluate is not: its 5xx and read timeouts are FlexFactorUnknownOutcome."""
        data = json.dumps(body, separators=(",", ":")).encode("utf-8") if body is not None else None
        url = self._base + path
        attempts = self._http.max_retries + 1
        token_renewed = False
        attempt = 0
        while True:
            attempt += 1
            last_try = attempt >= attempts
            token = self._current_token()
            self._limiter.acquire()
            started = time.monotonic()
            try:
                response = self._session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers=_headers(token.value, data is not None),
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                kind = codes.error_for_transport(exc)
                self._log_failure(method, path, attempt, started, exc)
                if not last_try and (
                    kind is FlexFactorNotSent or (resendable and kind is FlexFactorUnknownOutcome)
                ):
                    self._backoff(attempt)
                    continue
                raise self._transport_error(kind, method, path, attempt) from exc
            status = response.status_code
            self._log_response(method, path, status, attempt, started)
            if 200 <= status < 300:
                self._limiter.eased()
                return response
            if status == 401 and not token_renewed:
                # Expired or revoked early: one new token, one more try (A16); not counted as a retry.
                token_renewed = True
                self._drop_token(token)
                attempt -= 1
                continue
            if status == 429:
                # Back-pressure: every caller of this client pauses and slows down, not this thread alone.
                retry_after = self._pushed_back(response, attempt)
                if last_try:
                    raise FlexFactorRateLimited(
                        f"gateway {self.gateway_id}: {method} {path} still rate limited (HTTP 429) "
                        f"after {attempt} attempts",
                        retry_after=retry_after,
                    )
                continue
            error = self._status_error(status, response, method, path, attempt)
            retry = status == 409 or (resendable and status in _SERVER_ERRORS)
            if retry and not last_try:
                self._backoff(attempt)
                continue
            raise error

    def _status_error(
        self, status: int, response: requests.Response, method: str, path: str, attempt: int
    ) -> FlexFactorError:
        where = f"gateway {self.gateway_id}: {method} {path} answered HTTP {status}"
        if status == 400:
            return FlexFactorRejected(codes.parse_error_body(400, response.content))
        if status == 401:
            return FlexFactorConfigError(f"{where} with a fresh token: check the gateway's credentials")
        if status == 404 and path.startswith("/orders/"):
            return FlexFactorNotFoundError(where)
        if status == 409:
            detail = codes.parse_error_body(409, response.content).summary()
            return FlexFactorConflict(f"{where} after {attempt} attempts: {detail}")
        if status >= 500:
            trace = codes.parse_error_body(status, response.content).trace_id
            return FlexFactorUnknownOutcome(f"{where}; FlexFactor may hold the request" + _trace(trace))
        if status in (403, 404, 405) or 300 <= status < 400:
            return FlexFactorConfigError(f"{where}: check base_url and the gateway's permissions")
        return FlexFactorProtocolError(f"{where}, which the contract does not define")

    def _transport_error(
        self, kind: type[FlexFactorError], method: str, path: str, attempt: int
    ) -> FlexFactorError:
        what = {
            FlexFactorNotSent: "never reached FlexFactor",
            FlexFactorUnknownOutcome: "may have reached FlexFactor but its answer was lost",
            FlexFactorConfigError: "could not be built: check base_url",
        }.get(kind, "failed in transport")
        return kind(f"gateway {self.gateway_id}: {method} {path} {what} (attempt {attempt})")

    def _json(self, response: requests.Response, path: str) -> dict[str, Any]:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise FlexFactorProtocolError(
                f"gateway {self.gateway_id}: {path} answered HTTP {response.status_code} with a non-JSON body"
            ) from None
        if not isinstance(body, dict):
            raise FlexFactorProtocolError(
                f"gateway {self.gateway_id}: {path} answered a non-object JSON body"
            )
        return body

    @contextmanager
    def _naming_gateway(self, path: str) -> Iterator[None]:
        # codes.py knows the vendor's words but not which gateway spoke them; operators need both.
        try:
            yield
        except FlexFactorProtocolError as exc:
            raise FlexFactorProtocolError(f"gateway {self.gateway_id}: {path}: {exc}") from exc

    def _backoff(self, attempt: int) -> None:
        delay = self._backoff_delay(attempt)
        if delay > 0:
            self._sleep(delay)

    def _backoff_delay(self, attempt: int) -> float:
        # Capped exponential back-off with full jitter, so parallel workers do not retry in step.
        ceiling = min(self._http.backoff_max_s, self._http.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def _pushed_back(self, response: requests.Response, attempt: int) -> float | None:
        """A 429: pause the shared limiter for Retry-After (capped; back-off when absent) and halve
        its rate. Returns the Retry-After read, in seconds."""
        retry_after = retry_after_s(response.headers, self._clock.now())
        self._limiter.back_off(retry_after if retry_after is not None else self._backoff_delay(attempt))
        return retry_after

    # --- token ------------------------------------------------------------------------------------

    def _current_token(self) -> BearerToken:
        token = self._token
        if token is not None and self._clock.now() < token.renew_at:
            return token
        with self._token_lock:
            # Another thread may have fetched it while we waited for the lock.
            token = self._token
            now = self._clock.now()
            if token is None or now >= token.renew_at:
                if self._token_cache is None:
                    token = self._fetch_token()
                else:
                    token = self._token_cache.current(now, self._fetch_token)
                self._token = token
            return token

    def _new_token(self, value: str, expires_at: datetime) -> BearerToken:
        now = self._clock.now()
        renew_at = expires_at - TOKEN_MARGIN
        if renew_at <= now:
            # Our clock runs ahead of FlexFactor's: trusting `expires` would fetch a token per call.
            # Use it for one margin's length; a 401 still renews it at once if FlexFactor disagrees.
            log.warning(
                "FlexFactor token already due for renewal on arrival; check clock skew",
                extra={"gateway": self.gateway_id, "expires_at": expires_at.isoformat()},
            )
            renew_at = now + TOKEN_MARGIN
        return BearerToken(value=value, expires_at=expires_at, renew_at=renew_at)

    def _drop_token(self, failed: BearerToken) -> None:
        with self._token_lock:
            # Only the token that failed: 64 threads seeing one 401 must cause one new fetch, and
            # one write to the shared cache, which itself keeps a token another process put after it.
            if self._token is failed:
                self._token = None
                if self._token_cache is not None:
                    self._token_cache.drop(failed, self._clock.now())

    def _fetch_token(self) -> BearerToken:
        path = "/oauth2/token"
        data = json.dumps({"AppKey": self._settings.app_key, "AppSecret": self._settings.app_secret}).encode()
        attempts = self._http.max_retries + 1
        for attempt in range(1, attempts + 1):
            self._limiter.acquire()
            started = time.monotonic()
            self.token_fetches += 1
            try:
                response = self._session.request(
                    "POST",
                    self._base + path,
                    data=data,
                    headers={"Content-Type": "application/json"},
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                kind = codes.error_for_transport(exc)
                self._log_failure("POST", path, attempt, started, exc)
                if kind is FlexFactorConfigError:
                    raise self._transport_error(kind, "POST", path, attempt) from exc
                if attempt < attempts:
                    self._backoff(attempt)
                    continue
                # Without a token the business request never left, whatever happened to this one.
                raise FlexFactorNotSent(
                    f"gateway {self.gateway_id}: no token after {attempt} attempts"
                ) from exc
            status = response.status_code
            self._log_response("POST", path, status, attempt, started)
            if status == 200:
                try:
                    value, expires_at = codes.read_token(self._json(response, path))
                except FlexFactorProtocolError as exc:
                    raise FlexFactorProtocolError(
                        f"gateway {self.gateway_id}: unreadable token answer"
                    ) from exc
                return self._new_token(value, expires_at)
            if status in (400, 401, 403, 405):
                # Wrong AppKey/AppSecret: this gateway's work is skipped, never retried.
                raise FlexFactorConfigError(
                    f"gateway {self.gateway_id}: FlexFactor refused the credentials (HTTP {status} at {path})"
                )
            if status == 429:
                retry_after = self._pushed_back(response, attempt)
                if attempt < attempts:
                    continue
                raise FlexFactorRateLimited(
                    f"gateway {self.gateway_id}: no token, still rate limited (HTTP 429 at {path})",
                    retry_after=retry_after,
                )
            if attempt < attempts and status >= 500:
                self._backoff(attempt)
                continue
            raise FlexFactorNotSent(f"gateway {self.gateway_id}: no token (HTTP {status} at {path})")
        raise AssertionError("unreachable")  # pragma: no cover

    # --- logging ----------------------------------------------------------------------------------

    def _log_response(self, method: str, path: str, status: int, attempt: int, started: float) -> None:
        level = logging.DEBUG if status < 400 else logging.WARNING
        log.log(
            level,
            "FlexFactor %s %s -> %s",
            method,
            path,
            status,
            extra=self._extra(method, path, attempt, started, status=status),
        )

    def _log_failure(self, method: str, path: str, attempt: int, started: float, exc: BaseException) -> None:
        # The exception class only: its text can carry URLs, never needed here.
        log.warning(
            "FlexFactor %s %s failed: %s",
            method,
            path,
            type(exc).__name__,
            extra=self._extra(method, path, attempt, started, error=type(exc).__name__),
        )

    def _extra(
        self, method: str, path: str, attempt: int, started: float, **more: object
    ) -> dict[str, object]:
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        return {
            "gateway": self.gateway_id,
            "method": method,
            "path": path,
            "attempt": attempt,
            "elapsed_ms": elapsed_ms,
            **more,
        }


def _headers(token: str, has_body: bool) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers


def _refuse_unsafe_body(body: Mapping[str, Any]) -> None:
    key = body.get("idempotencyKey")
    if not isinstance(key, str) or not key:
        raise InputError("evaluate body has no idempotencyKey; build it with flexfactor_payload")
    payment = body.get("paymentMethod")
    card_number = payment.get("cardNumber") if isinstance(payment, Mapping) else None
    if isinstance(card_number, str) and looks_like_pan(card_number):
        # The last gate before the wire: a raw card number must never leave us (contract 5.3).
        raise InputError(f"evaluate body {body.get('orderId')!s:.64}: cardNumber looks like a card number")
    for section in ("payer", "billingInformation"):
        fields = body.get(section)
        if not isinstance(fields, Mapping):
            continue
        for name, value in fields.items():
            if isinstance(value, str) and contains_pan(value):
                raise InputError(
                    f"evaluate body {body.get('orderId')!s:.64}: {section}.{name} holds a card number"
                )


def _object(item: object) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise FlexFactorProtocolError("order list item is not an object")
    return item


def _final_or_raise(order: OrderSnapshot, rejected: FlexFactorRejected) -> OrderSnapshot:
    if order.state is None:
        raise rejected  # not final: the 400 meant something else
    return order


def _has_next_page(page: Mapping[str, Any], page_number: int, item_count: int) -> bool:
    has_next = codes.get_ci(page, "hasNextPage")
    if isinstance(has_next, bool):
        return has_next and item_count > 0  # an empty "next" page would loop forever
    is_last = codes.get_ci(page, "isLastPage")
    if isinstance(is_last, bool):
        return not is_last and item_count > 0
    page_count = codes.get_ci(page, "pageCount")
    return isinstance(page_count, int) and page_number < page_count


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float | None:
    """A 429's Retry-After in seconds, capped at MAX_RETRY_AFTER_S; None when absent or unreadable.

    Either delta-seconds or an HTTP date; a date counts from the answer's own Date header when it has
    one (so a skewed clock of ours does not stretch it), else from `now`."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        if when is None:
            return None
        sent = _http_date(headers.get("Date") or "")
        seconds = (when - (sent or now)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _http_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _utc_text(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise InputError("order list bounds must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _trace(trace_id: str | None) -> str:
    return f" (trace {trace_id})" if trace_id else ""


if TYPE_CHECKING:  # mypy proves the client satisfies the port

    def _implements_port(client: FlexFactorClient) -> FlexFactorGateway:
        return client


def _environment_read_once(session: requests.Session, base_url: str) -> None:
    """Honour the proxy and CA-bundle variables as they are at start-up, then stop requests from
    reading the environment again: with trust_env on it scans every variable twice per call, which
    cost more CPU than the rest of a hand-off (bench/client_throughput.py)."""
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
