"""Apply final hand-off states to orders and subscriptions, exactly once (SPEC section 1 table)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from recycle_engine.config import Settings
from recycle_engine.services.outcomes.outcome_chunk import Prepared, prepare_chunk, write_chunk
from recycle_engine.storage import outcome_queue

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, RootTransaction

__all__ = ["apply_outcomes"]


def apply_outcomes(
    settings: Settings,
    engine: Engine,
    *,
    now: datetime,
    handoff_ids: Sequence[str] | None = None,
    run_id: str | None = None,
    chunk: int = 20_000,
) -> Counter[str]:
    """Apply every queued hand-off outcome (storage.outcome_queue); safe to run again and concurrently.

    Up to `chunk` outcomes a transaction: one statement reads them with their purchases, the outcome
    table is applied in Python, and a fixed number of set-based statements writes them and dequeues
    them (services.outcomes.outcome_chunk, storage.outcome_writes); new sales, rare, row by row."""
    counts: Counter[str] = Counter()
    while True:
        # One look at the queue, oldest outcome first, then chunks by id.
        with engine.connect() as conn:
            chunks = _chunks(outcome_queue.pending(conn, handoff_ids), chunk)
        if engine.dialect.name == "postgresql" and len(chunks) > 1:
            applied = _apply_ahead(settings, engine, chunks, now=now, run_id=run_id, counts=counts)
        else:
            applied = 0
            for ids in chunks:
                with engine.begin() as conn:
                    prepared = prepare_chunk(settings, conn, now=now, ids=ids, run_id=run_id)
                    write_chunk(conn, prepared, now=now, run_id=run_id)
                counts.update(prepared.counts)
                applied += prepared.applied
        # Look again for outcomes that became final meanwhile; stop once a look brings nothing to
        # apply (rows another process holds locked are its to apply).
        if applied == 0:
            return counts


def _chunks(pending: Sequence[outcome_queue.Pending], size: int) -> list[list[str]]:
    """Hand-off ids in chunks of about `size`, in queue order, with every outcome of one purchase (of
    one order, for a new sale without one) in the same chunk: no chunk reads what another writes."""
    chunks: list[list[str]] = []
    chunk_of: dict[str, int] = {}
    for p in pending:
        key = p.purchase_id or f"order:{p.order_id}"
        n = chunk_of.get(key)
        if n is None:
            if not chunks or len(chunks[-1]) >= size:
                chunks.append([])
            n = chunk_of[key] = len(chunks) - 1
        chunks[n].append(p.handoff_id)
    return chunks


@dataclass
class _Open:
    """A chunk prepared in its own transaction, not yet written."""

    conn: Connection
    tx: RootTransaction
    prepared: Prepared

    def close(self, *, commit: bool) -> None:
        try:
            if commit:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            self.conn.close()


def _prepare_apart(
    settings: Settings, engine: Engine, ids: Sequence[str], now: datetime, run_id: str | None
) -> _Open:
    conn = engine.connect()
    try:
        tx = conn.begin()
        return _Open(conn, tx, prepare_chunk(settings, conn, now=now, ids=ids, run_id=run_id))
    except BaseException:
        conn.close()
        raise


def _apply_ahead(
    settings: Settings,
    engine: Engine,
    chunks: Sequence[Sequence[str]],
    *,
    now: datetime,
    run_id: str | None,
    counts: Counter[str],
) -> int:
    """PostgreSQL: while one chunk's writes run on the server, the next chunk is read and worked out on
    a second connection, in its own transaction (its queue rows locked), so that the Python work and
    the reads hide behind the writes instead of adding to them. Chunks share no purchase (_chunks):
    the next chunk's reads cannot depend on this one's writes. Each chunk still commits on its own,
    its writes and its dequeue together; on an error the prepared next chunk is rolled back unwritten."""
    applied = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outcomes-ahead") as pool:
        ahead: Future[_Open] | None = pool.submit(_prepare_apart, settings, engine, chunks[0], now, run_id)
        try:
            for n in range(len(chunks)):
                assert ahead is not None
                current = ahead.result()
                ahead = None
                if n + 1 < len(chunks):
                    ahead = pool.submit(_prepare_apart, settings, engine, chunks[n + 1], now, run_id)
                try:
                    write_chunk(current.conn, current.prepared, now=now, run_id=run_id)
                except BaseException:
                    current.close(commit=False)
                    raise
                current.close(commit=True)
                counts.update(current.prepared.counts)
                applied += current.prepared.applied
        finally:
            if ahead is not None and ahead.exception() is None:
                ahead.result().close(commit=False)
    return applied
