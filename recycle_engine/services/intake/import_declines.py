"""`import declines`: a CSV declines feed into declines, customers, orders and recycling purchases."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from recycle_engine.config import Settings
from recycle_engine.errors import RecycleEngineError, StorageError
from recycle_engine.ports import Clock
from recycle_engine.services.intake.decline_effects import ImportSession
from recycle_engine.services.intake.feed_file import RejectsFile, read_header, rejects_path_for
from recycle_engine.services.intake.feed_stage import collection_deferred, staged_chunks
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.storage.faults import DatabaseFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["CHUNK_ROWS", "ImportResult", "import_declines", "rejects_path_for"]

log = logging.getLogger(__name__)

CHUNK_ROWS: Final = 20_000  # rows read, checked and written per transaction; memory stays flat


@dataclass(frozen=True)
class ImportResult:
    """Counts of one import: new declines stored, rows rejected, rows already imported earlier."""

    run_id: str
    accepted: int
    rejected: int
    duplicates: int
    rejects_path: Path


def import_declines(
    path: Path,
    *,
    settings: Settings,
    engine: Engine,
    clock: Clock,
    chunk_rows: int = CHUNK_ROWS,
    ahead: bool = True,
) -> ImportResult:
    """Load a declines feed (SPEC section 5), writing rejected rows with line and reason beside it.

    Good rows are kept whatever the bad ones; a known transaction_id changes nothing. Raises InputError
    when the file cannot be read or its header lacks a contract column, StorageError when the database
    fails. Each chunk of `chunk_rows` rows is one transaction. With `ahead`, the next chunk is read and
    checked in a child process while this one is written (feed_stage).
    """
    now = clock.now()
    target = rejects_path_for(path)
    try:
        run_id = start_run(engine, "import", logical_at=now, now=now)
    except DatabaseFailure as exc:
        raise StorageError(_storage_message(exc)) from None
    importer = ImportSession(settings, dialect=engine.dialect, run_id=run_id, now=now)
    try:
        header = read_header(path)
        with RejectsFile(target, header) as rejects:
            for staged in staged_chunks(path, header, chunk_rows, importer, ahead=ahead):
                with collection_deferred(), engine.begin() as conn:
                    importer.write(conn, staged.prepared)
                rejects.write(staged.rejects)
                importer.counts["rejected"] += staged.rejected
    except DatabaseFailure as exc:
        _finish_failed(engine, run_id, clock.now(), importer.counts, _storage_message(exc))
        raise StorageError(_storage_message(exc)) from None
    except RecycleEngineError as exc:
        _finish_failed(engine, run_id, clock.now(), importer.counts, str(exc))
        raise
    finish_run(engine, run_id, now=clock.now(), counts=importer.counts)
    log.info("declines feed imported", extra={"run_id": run_id, **importer.counts})
    counts = importer.counts
    return ImportResult(run_id, counts["accepted"], counts["rejected"], counts["duplicates"], target)


def _finish_failed(engine: Engine, run_id: str, now: datetime, counts: dict[str, int], error: str) -> None:
    try:
        finish_run(engine, run_id, now=now, counts=counts, error=error)
    except (DatabaseFailure, StorageError):
        log.exception("could not record the failed import run", extra={"run_id": run_id})


def _storage_message(exc: Exception) -> str:
    # Only the driver's first line: SQLAlchemy's own text would echo the bound row values.
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return f"database error: {first}"
