"""`crm pull`: the CRM's declined transactions over a closed window, through the CSV import's pipeline.

A pull reads [cursor - lookback, until) where `until` is at least `settle_minutes` in the past, so the
window has closed: new declines land after it. Pages are read oldest first, one decline type after the
other in one stream, and gathered into chunks of up to CHUNK_ROWS rows (the first ones smaller); each
chunk, with its orders and purchases fetched a page of ids per call, is checked and written exactly as
a CSV chunk is (same checks, dedupe by transaction id, card-number rule, classification). The cursor
moves to `until` only once every page of both decline types is written, so a pull stopped at any
point reads the same window again: rows already written are duplicates and change nothing.

Paging is not stable while rows arrive. Oldest first, a row landing inside the window shifts later
rows by one: a row is then read twice (deduped here), never skipped; the late row itself is caught by
a second pass when the CRM's total changed during paging, or by the next pull's lookback.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import pandas as pd

from recycle_engine.adapters.crm_rows import declined_at, feed_columns
from recycle_engine.config import CrmSettings, Settings
from recycle_engine.errors import ConfigError, InputError, RecycleEngineError, StorageError
from recycle_engine.ports import CrmApi, CrmPage
from recycle_engine.services.intake.decline_effects import ImportSession
from recycle_engine.services.intake.feed_stage import collection_deferred
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.storage import crm_repo
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["JOB", "PullResult", "pull_declines"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_Read = tuple[Mapping[str, Any], datetime | None]  # a transaction row and its time, read once

JOB: Final = "pull"  # the job name of settings.yaml, so status and the missed-job check find its runs
TRANSACTIONS: Final = "/transactions/query/"
ORDERS: Final = "/order/query/"
PURCHASES: Final = "/purchase/query/"
DECLINE_TYPES: Final = ("SOFT_DECLINE", "HARD_DECLINE")
FIRST_WINDOW: Final = timedelta(days=1)  # the first pull, with no cursor and no --since
CHUNK_ROWS: Final = 5_000  # pages gathered into one checked and written chunk (a chunk costs ~20 ms fixed)
_RAMP: Final = 16  # the first chunk is this fraction of CHUNK_ROWS
MAX_PASSES: Final = 3  # reads of one decline type while the CRM's total keeps changing
# Look-up calls at once: a page's orders and purchases (a call each) for two pages, as the next page's
# start before this one's are done. More would not help: the transactions pages come one at a time.
DETAIL_WORKERS: Final = 4
_NO_ORDER: Final = "order_id: the CRM has no such order (/order/query/)"
_FROM_ORDER: Final = ("order_type: required", "shippable: required")


@dataclass
class PullResult:
    run_id: str
    window_start: datetime
    window_end: datetime
    counts: dict[str, int] = field(default_factory=dict)


def pull_declines(
    settings: Settings,
    engine: Engine,
    client: CrmApi,
    *,
    now: datetime,
    until: datetime | None = None,
    since: datetime | None = None,
) -> PullResult:
    """Read the next window of declines; raises CrmError (recorded on the run) when the CRM fails."""
    crm = _crm(settings)
    end = until if until is not None else now - timedelta(minutes=crm.pull.settle_minutes)
    if end > now:
        raise InputError(f"--until {end.isoformat()} is in the future; a window must have closed")
    with engine.connect() as conn:
        cursor = crm_repo.read_cursor(conn)
    if since is not None:
        start = since
    elif cursor is not None:
        start = cursor - timedelta(minutes=crm.pull.lookback_minutes)
    else:
        start = end - FIRST_WINDOW
    run_id = start_run(engine, JOB, logical_at=end, now=now)
    result = PullResult(run_id, start, end)
    puller = _Pull(settings, crm, engine, client, run_id, now, start, end)
    try:
        if start < end:
            puller.read()
            with engine.begin() as conn:
                crm_repo.save_cursor(conn, end, run_id=run_id, now=now)
    except DatabaseFailure as exc:
        result.counts = puller.counts
        _finish(engine, run_id, now, puller.counts, f"database error: {type(exc).__name__}")
        raise StorageError(f"database error during the CRM pull: {type(exc).__name__}") from None
    except RecycleEngineError as exc:
        _finish(engine, run_id, now, puller.counts, str(exc))
        raise
    result.counts = puller.counts
    finish_run(engine, run_id, now=now, counts=puller.counts)
    log.info(
        "CRM declines pulled",
        extra={"run_id": run_id, "start": start.isoformat(), "end": end.isoformat(), **puller.counts},
    )
    return result


def _crm(settings: Settings) -> CrmSettings:
    if settings.crm is None:
        raise ConfigError("settings.yaml has no crm: section; add one to pull declines from the CRM")
    return settings.crm


def _finish(engine: Engine, run_id: str, now: datetime, counts: dict[str, int], error: str) -> None:
    try:
        finish_run(engine, run_id, now=now, counts=counts, error=error)
    except (DatabaseFailure, StorageError):
        log.exception("could not record the failed CRM pull", extra={"run_id": run_id})


class _Pull:
    """One window: pages in, chunks written, counts kept."""

    def __init__(
        self,
        settings: Settings,
        crm: CrmSettings,
        engine: Engine,
        client: CrmApi,
        run_id: str,
        now: datetime,
        start: datetime,
        end: datetime,
    ) -> None:
        self.crm, self.engine, self.client, self.run_id, self.now = crm, engine, client, run_id, now
        self.start, self.end = start, end
        self.importer = ImportSession(settings, dialect=engine.dialect, run_id=run_id, now=now)
        self.fed: set[str] = set()
        with engine.connect() as conn:
            self.rejected_before = bool(crm_repo.recent_rejects(conn, 1))
        self.line = 1  # a running row number; a reason names it as a CSV reject names its line
        self.counts = {"pages": 0, "read": 0, "accepted": 0, "rejected": 0, "duplicates": 0, "passes": 0}
        # Pages fetched ahead: a chunk's worth, so the calls go on while a whole chunk is checked and
        # written (one or two pages ahead, the reader waited on the CRM for most of each chunk).
        self.pages_ahead = CHUNK_ROWS // max(1, crm.results_per_page) + 1
        # The checks and writes wait for the first chunk's pages: a small first chunk, doubling, gets
        # them going after a page or two rather than a full chunk's calls.
        self.chunk_rows = max(1, CHUNK_ROWS // _RAMP)

    def read(self) -> None:
        """Both decline types' pages as one stream, so the reader goes on to the next type while this
        one's last chunk is written; a type whose total changed while paging is read again."""
        types: tuple[str, ...] = DECLINE_TYPES
        for _ in range(MAX_PASSES):
            self.counts["passes"] += len(types)
            totals: dict[str, set[int]] = {t: set() for t in types}
            waiting: list[_Read] = []
            found = _Found({}, {})
            for decline_type, page, rows, details in _prefetched(self._pages(types), self.pages_ahead):
                self.counts["pages"] += 1
                totals[decline_type].add(page.total)
                waiting += rows
                found.orders.update(details.orders)
                found.purchases.update(details.purchases)
                if len(waiting) >= self.chunk_rows:
                    self._feed(waiting, found)
                    waiting, found = [], _Found({}, {})
                    self.chunk_rows = min(CHUNK_ROWS, 2 * self.chunk_rows)
            self._feed(waiting, found)
            types = tuple(t for t in types if len(totals[t]) > 1)
            if not types:
                return
            log.info("the CRM's total changed while paging; reading again", extra={"types": ",".join(types)})

    def _pages(self, types: Iterable[str]) -> Iterator[tuple[str, CrmPage, list[_Read], _Found]]:
        """Each page of the window in order, type after type, with the orders and purchases its rows
        name (a call each). A page's two look-ups run at once, and the next page is read while they
        run: across the internet a page costs about one round trip instead of three."""
        pool = ThreadPoolExecutor(DETAIL_WORKERS, thread_name_prefix="crm-details")
        waiting: deque[tuple[str, CrmPage, list[_Read], _Lookups]] = deque()
        try:
            for decline_type, page, rows in self._transaction_pages(types):
                orders = pool.submit(
                    self.client.query_ids,
                    ORDERS,
                    "orderId",
                    {str(r["orderId"]) for r, _ in rows if r.get("orderId")},
                )
                purchases = pool.submit(
                    self.client.query_ids,
                    PURCHASES,
                    "purchaseId",
                    {str(r["purchaseId"]) for r, _ in rows if r.get("purchaseId")},
                )
                waiting.append((decline_type, page, rows, (orders, purchases)))
                if len(waiting) > 1:  # this page was read while the one before looked its ids up
                    yield _looked_up(waiting.popleft())
            while waiting:
                yield _looked_up(waiting.popleft())
        finally:
            # Left early (an error, or the reader stopped): look-ups not yet started never start, and
            # those under way end with their current call.
            pool.shutdown(wait=True, cancel_futures=True)

    def _transaction_pages(self, types: Iterable[str]) -> Iterator[tuple[str, CrmPage, list[_Read]]]:
        """Each transactions page of the window, type after type, with its rows inside the window."""
        start, end = self.start, self.end
        for decline_type in types:
            params = {
                "startDate": start.strftime("%m/%d/%Y"),
                "endDate": end.strftime("%m/%d/%Y"),
                "dateRangeType": "dateCreated",
                "responseType": decline_type,
                "sortDir": "1",  # oldest first: rows arriving meanwhile can only repeat a row, not hide one
            }
            for page in self.client.query_all(TRANSACTIONS, params):
                # A row whose time cannot be read is fed all the same: the checks reject it with its reason.
                read = ((row, declined_at(row)) for row in page.rows)
                rows: list[_Read] = [(row, when) for row, when in read if when is None or start <= when < end]
                yield decline_type, page, rows

    def _feed(self, rows: Iterable[_Read], found: _Found) -> None:
        # The mapped rows, the checks and the writes allocate a few hundred thousand objects, none in
        # a cycle: the collector, walking them again and again, cost about 8 µs a row, a tenth of the chunk.
        with collection_deferred():
            self._feed_chunk(rows, found)

    def _feed_chunk(self, rows: Iterable[_Read], found: _Found) -> None:
        fresh = []
        for read in rows:
            key = str(read[0].get("transactionId", ""))
            if key in self.fed:
                continue
            self.fed.add(key)
            fresh.append(read)
        if not fresh:
            return
        transactions = [row for row, _ in fresh]
        orders = [found.orders.get(str(row.get("orderId", ""))) for row in transactions]
        missing = {self.line + n for n, order in enumerate(orders) if order is None}
        purchases = [
            found.purchases.get(str(row.get("purchaseId", ""))) if row.get("purchaseId") else None
            for row in transactions
        ]
        whens = [w for _, w in fresh]
        columns = feed_columns(transactions, orders, purchases, self.crm.gateway_of, whens)
        # Every cell is already text: plain objects spare pandas a string array it would check and
        # the checks would unpack again, column by column.
        frame = pd.DataFrame(columns, dtype=object)
        # The times read while paging are the declined_at cells' instants: not parsed a second time.
        checked, prepared = self.importer.check_and_prepare(frame, self.line, whens)
        # Most chunks reject nothing: no empty frame of rejects built and unpacked for them.
        records = checked.rejects_frame().to_dict("records") if checked.reasons else []
        saved = [self._reject({str(k): v for k, v in r.items()}, missing) for r in records]
        before = dict(self.importer.counts)
        with self.engine.begin() as conn:
            self.importer.write(conn, prepared)
            if self.rejected_before:  # only a database that has rejects can hold one of these rows
                crm_repo.clear_rejects(conn, [str(t) for t in prepared.columns["transaction_id"]])
            crm_repo.save_rejects(conn, saved)
        self.line += len(fresh)
        self.counts["read"] += len(fresh)
        self.counts["rejected"] += len(saved)
        self.counts["accepted"] += self.importer.counts["accepted"] - before["accepted"]
        self.counts["duplicates"] += self.importer.counts["duplicates"] - before["duplicates"]

    def _reject(self, record: dict[str, Any], missing: set[int]) -> crm_repo.RejectedRow:
        line = int(record.pop("line"))
        reason = str(record.pop("reason"))
        if line in missing:  # the columns only an order gives are missing because of it: say that once
            parts = [p for p in reason.split("; ") if p not in _FROM_ORDER]
            reason = "; ".join([_NO_ORDER, *parts])
        key = str(record.get("transaction_id") or "") or f"{self.run_id}:{line}"
        row = json.dumps({k: str(v) for k, v in record.items()}, sort_keys=True)
        return crm_repo.RejectedRow(key[:64], reason, row, self.now, self.run_id)


@dataclass(frozen=True)
class _Found:
    orders: dict[str, dict[str, Any]]
    purchases: dict[str, dict[str, Any]]


_Lookups = tuple[Future[dict[str, dict[str, Any]]], Future[dict[str, dict[str, Any]]]]  # orders, purchases


def _looked_up(
    item: tuple[str, CrmPage, list[_Read], _Lookups],
) -> tuple[str, CrmPage, list[_Read], _Found]:
    """A page with its orders and purchases, once both look-ups are done (their error raised here)."""
    decline_type, page, rows, (orders, purchases) = item
    return decline_type, page, rows, _Found(orders.result(), purchases.result())


_END: Final = object()


def _prefetched(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """`items` produced up to `depth` ahead in a thread: the next pages and their details are fetched
    while this one is checked and written (the calls mostly wait on the CRM, so the GIL is free for
    the checks). An error in the thread is raised here; leaving early stops the thread after its
    current call."""
    ahead: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            offer(exc)
        finally:
            # Closed here, not whenever it is collected: a generator's own workers stop before the join.
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="crm-pages", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
