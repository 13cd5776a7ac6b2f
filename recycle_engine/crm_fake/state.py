"""The fake CRM's state: records, the query and update rules, injectable faults and the request log.

Choices the public clients leave open, made here and documented in README ("The CRM"):
- A transaction row's time is `dateCreated`, "YYYY-MM-DD HH:MM:SS" in UTC; `startDate`/`endDate`
  (m/d/Y) select whole days of it, both inclusive; `sortDir` 1 is oldest first (the default, 0,
  newest first). Within one second, rows keep the order they were created in.
- `orderId` and `purchaseId` of `/order/query/` and `/purchase/query/` take a comma-separated list.
- An empty result, a page past the last and every refusal are `result: ERROR` with a text message.
"""

from __future__ import annotations

import enum
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Final

__all__ = ["Answer", "FakeCrm", "Fault", "FaultKind", "empty_message"]

MAX_PAGE: Final = 200
DEFAULT_PAGE: Final = 25
QUERIES: Final = {
    "/transactions/query/": "transactions",
    "/order/query/": "orders",
    "/purchase/query/": "purchases",
}
UPDATES: Final = ("/purchase/update/", "/fulfillment/update/", "/purchase/cancel/")
PURCHASE_STATUSES: Final = ("ACTIVE", "TRIAL", "RECYCLE_BILLING", "RECYCLE_FAILED", "CANCELLED", "COMPLETE")


class FaultKind(enum.StrEnum):
    """What the fake does to a call instead of (or after) answering plainly."""

    SERVER_ERROR = "server_error"  # 500 without doing anything
    TIMEOUT = "timeout"  # holds the answer past any read timeout, without doing anything
    ERROR_ENVELOPE = "error_envelope"  # result ERROR with `message`, without doing anything
    SLOW = "slow"  # answers after `seconds`
    APPLIED_THEN_SERVER_ERROR = "applied_then_server_error"  # an update is applied, the answer is a 502
    APPLIED_THEN_TIMEOUT = "applied_then_timeout"  # an update is applied, the answer never comes in time


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    endpoint: str | None = None  # None: the next call to any API endpoint
    message: str = "Temporary error, please try again"
    seconds: float = 0.0


@dataclass(frozen=True)
class Answer:
    """What the server sends: an HTTP status and a JSON body, delayed or held as the fault says."""

    status: int
    body: dict[str, Any] | None
    delay_s: float = 0.0
    hold: bool = False  # keep the connection waiting until the server stops
    # The body as JSON, written by `call` under the fake's lock: the body holds the records themselves,
    # which an update in another serving thread may change while this answer waits out its latency.
    text: str | None = None


def empty_message(endpoint: str) -> str:
    noun = {"transactions": "transactions", "orders": "orders", "purchases": "purchases"}[QUERIES[endpoint]]
    return f"No {noun} matching those parameters could be found"


def _day(text: str) -> date | None:
    try:
        month, day, year = (int(part) for part in text.strip().split("/"))
        return date(year, month, day)
    except ValueError:
        return None


def _ids(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


@dataclass
class _Arrival:
    after_page: int
    rows: list[dict[str, Any]]


@dataclass
class FakeCrm:
    """One CRM account: its API user, the IPs allowed to call, the records and what happened."""

    login_id: str
    password: str
    allowed_ips: frozenset[str] | None = None  # None: any caller
    hold_s: float = 30.0  # how long a TIMEOUT fault holds the answer
    page_cap: int | None = None  # a CRM that serves fewer rows a page than asked (and says so)
    latency_ms: int = 0  # every API answer waits this long, as from a CRM across the internet
    # Run as each API call arrives, in its serving thread and outside the lock: a test may hold a
    # call there (until another one arrives, say) to see which calls a client makes at once.
    on_arrival: Callable[[str, Mapping[str, str]], None] | None = None
    transactions: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    purchases: dict[str, dict[str, Any]] = field(default_factory=dict)
    fulfillments: dict[str, str] = field(default_factory=dict)  # orderId -> fulfillmentStatus
    _faults: deque[Fault] = field(default_factory=deque)
    _arrivals: list[_Arrival] = field(default_factory=list)
    _log: list[dict[str, Any]] = field(default_factory=list)
    _version: int = 0  # bumped by every added transaction: the selection cache's key
    _selected: dict[tuple[Any, ...], list[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Each call arrived and not yet answered, by a number of its own: its endpoint and those of the
    # calls in flight beside it.
    _in_flight: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    _arrivals_seen: int = 0

    # Records

    def add(
        self,
        transactions: Iterable[Mapping[str, Any]] = (),
        orders: Iterable[Mapping[str, Any]] = (),
        purchases: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        with self._lock:
            self._add(transactions, orders, purchases)

    def _add(
        self,
        transactions: Iterable[Mapping[str, Any]],
        orders: Iterable[Mapping[str, Any]],
        purchases: Iterable[Mapping[str, Any]],
    ) -> None:
        for order in orders:
            self.orders[str(order["orderId"])] = dict(order)
        for purchase in purchases:
            self.purchases[str(purchase["purchaseId"])] = dict(purchase)
        added = [dict(t) for t in transactions]
        self.transactions.extend(added)
        if added:
            self._version += 1
            self._selected.clear()
            self.transactions.sort(key=lambda t: str(t["dateCreated"]))  # stable: creation order kept

    def arrive_after_page(self, page: int, transactions: Iterable[Mapping[str, Any]]) -> None:
        """Add `transactions` just after transaction page `page` is served (rows landing mid-paging)."""
        with self._lock:
            self._arrivals.append(_Arrival(page, [dict(t) for t in transactions]))

    def add_faults(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        """Drops the faults no call has met yet: the CRM is healthy again."""
        with self._lock:
            self._faults.clear()

    def log(self) -> list[dict[str, Any]]:
        """Every API call: endpoint, parameters (credentials left out), result, what it changed, and
        the endpoints of the calls in flight beside it (`alongside`)."""
        with self._lock:
            return [{**entry, "alongside": sorted(entry["alongside"])} for entry in self._log]

    def in_flight(self) -> Counter[str]:
        """The API calls arrived and not yet answered, by endpoint."""
        with self._lock:
            return Counter(endpoint for endpoint, _ in self._in_flight.values())

    def purchase_records(self) -> dict[str, dict[str, Any]]:
        """The purchases as they stand, copied under the lock (an update may be changing one)."""
        with self._lock:
            return {purchase_id: dict(record) for purchase_id, record in self.purchases.items()}

    def applied(self) -> list[dict[str, Any]]:
        """The updates that changed a record, in order."""
        return [entry for entry in self.log() if entry.get("applied")]

    # Calls

    @contextmanager
    def serving(self, endpoint: str, params: Mapping[str, str]) -> Iterator[list[str]]:
        """One API call from its arrival until its answer is sent. Yields the endpoints of the calls in
        flight beside it, a list that grows as more arrive; `call` logs it as `alongside`."""
        alongside: list[str] = []
        with self._lock:
            for other, beside_other in self._in_flight.values():
                beside_other.append(endpoint)
                alongside.append(other)
            self._arrivals_seen += 1
            number = self._arrivals_seen
            self._in_flight[number] = (endpoint, alongside)
        try:
            if self.on_arrival is not None:
                self.on_arrival(endpoint, params)
            yield alongside
        finally:
            with self._lock:
                del self._in_flight[number]

    def call(
        self, endpoint: str, params: Mapping[str, str], client_ip: str, alongside: list[str] | None = None
    ) -> Answer:
        """Answer one API call; `alongside` (from `serving`) is logged with it."""
        with self._lock:
            entry: dict[str, Any] = {
                "endpoint": endpoint,
                "params": {k: v for k, v in params.items() if k not in ("loginId", "password")},
                "alongside": alongside if alongside is not None else [],
            }
            self._log.append(entry)
            answer = self._answer(endpoint, params, client_ip, entry)
            entry["status"] = answer.status
            if answer.body is None:
                return answer
            entry["result"] = answer.body.get("result")
            return replace(answer, text=json.dumps(answer.body))

    def _answer(self, endpoint: str, params: Mapping[str, str], ip: str, entry: dict[str, Any]) -> Answer:
        if endpoint not in QUERIES and endpoint not in UPDATES:
            return Answer(404, None)
        if params.get("loginId") != self.login_id or params.get("password") != self.password:
            return _error("Invalid login credentials")
        if self.allowed_ips is not None and ip not in self.allowed_ips:
            return _error(f"API access from IP address {ip} is not allowed for this user")
        fault = self._next_fault(endpoint)
        if fault is not None:
            entry["fault"] = fault.kind.value
        match fault.kind if fault else None:
            case FaultKind.SERVER_ERROR:
                return Answer(500, None)
            case FaultKind.TIMEOUT:
                return Answer(200, None, hold=True)
            case FaultKind.ERROR_ENVELOPE:
                return _error(fault.message if fault else "")
        if endpoint in QUERIES:
            answer = self._query(endpoint, params)
        else:
            answer = self._update(endpoint, params, entry)
        match fault.kind if fault else None:
            case FaultKind.SLOW:
                return Answer(answer.status, answer.body, delay_s=fault.seconds if fault else 0.0)
            case FaultKind.APPLIED_THEN_SERVER_ERROR:
                return Answer(502, None)
            case FaultKind.APPLIED_THEN_TIMEOUT:
                return Answer(200, answer.body, hold=True)
        return answer

    def _next_fault(self, endpoint: str) -> Fault | None:
        for fault in self._faults:
            if fault.endpoint in (None, endpoint):
                self._faults.remove(fault)
                return fault
        return None

    def _query(self, endpoint: str, params: Mapping[str, str]) -> Answer:
        try:
            per_page = int(params.get("resultsPerPage") or DEFAULT_PAGE)
            page = int(params.get("page") or 1)
        except ValueError:
            return _error("resultsPerPage and page must be whole numbers")
        if not 1 <= per_page <= MAX_PAGE or page < 1:
            return _error(f"resultsPerPage must be 1 to {MAX_PAGE}, page at least 1")
        if self.page_cap is not None:
            per_page = min(per_page, self.page_cap)
        kind = QUERIES[endpoint]
        if kind == "transactions":
            found = self._transactions(params)
        else:
            key = "orderId" if kind == "orders" else "purchaseId"
            wanted = _ids(params.get(key, ""))
            if not wanted:
                return _error(f"{key} is required")
            records = self.orders if kind == "orders" else self.purchases
            found = [records[i] for i in sorted(wanted) if i in records]
        if isinstance(found, str):
            return _error(found)
        rows = found[(page - 1) * per_page : page * per_page]
        if kind == "transactions":
            self._land_arrivals(page)
        if not rows:
            return _error(empty_message(endpoint))
        message = {"totalResults": len(found), "resultsPerPage": per_page, "page": page, "data": rows}
        return Answer(200, {"result": "SUCCESS", "message": message})

    def _transactions(self, params: Mapping[str, str]) -> list[dict[str, Any]] | str:
        start, end = _day(params.get("startDate", "")), _day(params.get("endDate", ""))
        if start is None or end is None or end < start:
            return "startDate and endDate (m/d/Y, startDate first) are required"
        wanted = {k: params[k] for k in ("responseType", "txnType", "merchantId") if params.get(k)}
        key = (self._version, start, end, tuple(sorted(wanted.items())), params.get("sortDir"))
        if key in self._selected:  # paging re-selects the same rows page after page
            return self._selected[key]
        rows = [
            t
            for t in self.transactions
            if start <= date.fromisoformat(str(t["dateCreated"])[:10]) <= end
            and all(str(t.get(k)) == v for k, v in wanted.items())
        ]
        self._selected[key] = rows if params.get("sortDir") == "1" else rows[::-1]
        return self._selected[key]

    def _land_arrivals(self, page: int) -> None:
        due = [a for a in self._arrivals if a.after_page == page]
        for arrival in due:
            self._arrivals.remove(arrival)
            self._add(arrival.rows, (), ())

    def _update(self, endpoint: str, params: Mapping[str, str], entry: dict[str, Any]) -> Answer:
        if endpoint == "/fulfillment/update/":
            order_id = params.get("orderId", "")
            status = params.get("fulfillmentStatus", "")
            if order_id not in self.orders:
                return _error(f"No order {order_id} could be found")
            if status not in ("SHIPPED", "RMA_PENDING", "RETURNED", "CANCELLED"):
                return _error(f"Invalid fulfillmentStatus {status}")
            self.fulfillments[order_id] = status
            entry["applied"] = {"orderId": order_id, "fulfillmentStatus": status}
            return Answer(200, {"result": "SUCCESS", "message": "Fulfillment updated"})
        purchase_id = params.get("purchaseId", "")
        purchase = self.purchases.get(purchase_id)
        if purchase is None:
            return _error(f"No purchase {purchase_id} could be found")
        if endpoint == "/purchase/cancel/":
            if not params.get("cancelReason"):
                return _error("cancelReason is required")
            changes: dict[str, Any] = {"status": "CANCELLED"}
        else:
            changes = {}
            if params.get("status"):
                if params["status"] not in PURCHASE_STATUSES:
                    return _error(f"Invalid status {params['status']}")
                changes["status"] = params["status"]
            if params.get("nextBillDate"):
                day = _day(params["nextBillDate"])
                if day is None:
                    return _error("nextBillDate must be m/d/Y")
                changes["nextBillDate"] = day.isoformat()
            if params.get("price"):
                changes["price"] = params["price"]
            if not changes:
                return _error("Nothing to update")
        purchase.update(changes)
        entry["applied"] = {"purchaseId": purchase_id, **changes}
        return Answer(200, {"result": "SUCCESS", "message": "Purchase updated"})


def _error(message: str) -> Answer:
    return Answer(200, {"result": "ERROR", "message": message})
