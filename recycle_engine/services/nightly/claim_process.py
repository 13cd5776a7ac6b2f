"""The night's claim in a forked process of its own, on PostgreSQL.

Planning attempts and writing hand-offs is CPU work in Python; in the sending process it queues for
the GIL behind the HTTP threads, and the claim then paces the whole night. In its own process it runs
on the other core, committing chunk after chunk while the parent leases and sends what is committed.
Nothing about exactly-once changes: every hand-off is still committed before anything sends it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Final

from recycle_engine.errors import RecycleEngineError, StorageError
from recycle_engine.services.nightly.claiming import NightClaim, claim_all

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["ClaimProcess", "can_claim_in_process"]

_NICENESS: Final = 10


def can_claim_in_process(engine: Engine) -> bool:
    """On PostgreSQL, from a single-threaded process (a fork must not copy a lock another thread
    holds), where fork exists. SQLite lets one process write at a time: there the claim stays a
    thread. So it does in a `--workers` worker: the workers are the processes, one per core or so."""
    return (
        engine.dialect.name == "postgresql"
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
        and "fork" in multiprocessing.get_all_start_methods()
    )


class _Orphaned(Exception):
    """The process that started the claim is gone: stop after the chunk just committed."""


class ClaimProcess:
    """claim_all running in a forked child; `is_set()` is true while it runs (send_pending's `claiming`)."""

    def __init__(self, night: NightClaim) -> None:
        context = multiprocessing.get_context("fork")
        self._claimed = context.Value("q", 0, lock=False)  # due rows selected so far, for progress
        self._reader, writer = context.Pipe(duplex=False)
        args = (writer, night, os.getpid())
        self._process = context.Process(target=self._run, args=args, name="submit-claim", daemon=True)
        self._process.start()
        writer.close()  # the child holds the only writing end: EOF means it is gone

    def is_set(self) -> bool:
        return self._process.is_alive()

    @property
    def claimed(self) -> int:
        return int(self._claimed.value)

    def result(self) -> Counter[str]:
        """The claim's counts once it has ended; raises RecycleEngineError if it failed or died."""
        try:
            counts, error = self._reader.recv()
        except EOFError:
            self._process.join()
            raise RecycleEngineError(
                f"the claim process died (exit code {self._process.exitcode}); what it committed stays, "
                "and the next run claims the rest"
            ) from None
        finally:
            self._reader.close()
        self._process.join()
        if isinstance(error, StorageError):
            raise error
        if error:
            raise RecycleEngineError(f"claiming failed: {error}")
        return Counter(counts)

    def stop(self) -> None:
        """Kill the child (the parent is failing); its committed chunks stay valid."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()

    def _run(self, results: Connection, night: NightClaim, parent: int) -> None:
        night.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        # The claim only has to stay ahead of the sends: on a busy machine the sender, FlexFactor's
        # answers and the database go first, and the claim takes the CPU they leave.
        os.nice(_NICENESS)
        counts: Counter[str] = Counter()

        def progress(_what: str, selected: int) -> None:
            self._claimed.value = selected
            if os.getppid() != parent:
                raise _Orphaned

        error: str | StorageError | None = None
        try:
            claim_all(night, counts=counts, progress=progress)
        except _Orphaned:
            error = "the run that started it is gone"
        except StorageError as exc:
            error = exc  # a database fault keeps its kind (and its one-line message) in the parent
        except Exception as exc:  # noqa: BLE001 - reported by the parent, which owns the run
            error = f"{type(exc).__name__}: {exc}"
        try:
            results.send((dict(counts), error))
        finally:
            results.close()
            night.engine.dispose()
