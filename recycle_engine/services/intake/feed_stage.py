"""The read-and-check stage of an import, run one chunk ahead of the writes in a child process.

Parsing and checking a chunk is CPU work in Python, and so is writing the previous one; a second
process lets them overlap on two cores. Threads would not: SQLite's driver gives up the GIL for every
row it steps, and would then wait a full switch interval to get it back from a busy checker.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

import pandas as pd

from recycle_engine.errors import InputError, RecycleEngineError
from recycle_engine.services.intake.decline_effects import ImportSession, PreparedChunk
from recycle_engine.services.intake.feed_file import read_chunks

__all__ = ["StagedChunk", "collection_deferred", "staged_chunks"]

_DONE: Final = "done"
# The writer waits idle for the first chunk: small chunks, doubling, get both stages busy sooner.
_RAMP: Final = 16  # the first chunk is this fraction of a full one


@dataclass(frozen=True)
class StagedChunk:
    """One chunk through the checks: its rejected rows (masked, with line and reason) and the good
    rows ready to write."""

    rejects: pd.DataFrame
    rejected: int
    prepared: PreparedChunk


def staged_chunks(
    path: Path, header: Sequence[str], chunk_rows: int, importer: ImportSession, *, ahead: bool = True
) -> Iterator[StagedChunk]:
    """The feed's chunks, checked and prepared, in file order.

    With `ahead`, a forked child reads and checks the next chunk while the caller writes this one.
    Forking is safe only from a single-threaded process (another thread may hold a lock the child
    would inherit held), so elsewhere, or where fork does not exist, the stage runs inline.
    """
    if not ahead or threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from _stage(path, header, chunk_rows, importer)
        return
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_run_child, args=(sender, path, header, chunk_rows, importer), name="feed-checker", daemon=True
    )
    child.start()
    sender.close()  # the child holds the only writing end: its exit ends our reads
    try:
        while True:
            try:
                with collection_deferred():
                    kind, payload = receiver.recv()
            except EOFError:
                child.join()  # its end of the pipe closes as it exits: wait for its exit code
                raise RecycleEngineError(
                    f"{path}: the feed checker stopped unexpectedly (exit code {child.exitcode}); "
                    "nothing after the chunks already written was stored"
                ) from None
            if kind == _DONE:
                return
            if kind == "chunk":
                yield payload
            elif kind == "refused":
                raise payload
            else:
                raise RecycleEngineError(f"{path}: the feed checker failed: {payload}")
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()  # the caller stopped early; the child may be blocked sending
        child.join()


@contextmanager
def collection_deferred() -> Iterator[None]:
    """Pause the cyclic garbage collector for one chunk. A chunk is a few hundred thousand fresh
    tuples and strings, none in a cycle, that it would otherwise walk again and again (a tenth of the
    import's time); it runs once, at the next allocation after the chunk."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _stage(
    path: Path, header: Sequence[str], chunk_rows: int, importer: ImportSession, first_rows: int | None = None
) -> Iterator[StagedChunk]:
    for frame, first_line in read_chunks(path, header, chunk_rows, first_rows=first_rows):
        with collection_deferred():
            checked, prepared = importer.check_and_prepare(frame, first_line)
            staged = StagedChunk(checked.rejects_frame(), len(checked.reasons), prepared)
        yield staged


def _run_child(
    sender: Connection, path: Path, header: Sequence[str], chunk_rows: int, importer: ImportSession
) -> None:
    try:
        for staged in _stage(path, header, chunk_rows, importer, max(1, chunk_rows // _RAMP)):
            sender.send(("chunk", staged))
        sender.send((_DONE, None))
    except InputError as exc:
        sender.send(("refused", exc))
    except BrokenPipeError:
        pass  # the parent stopped reading: it has its own error to report
    except Exception as exc:  # noqa: BLE001 - anything else is reported by the parent, not lost here
        # Where, not what: an exception's text may quote a feed value, and values may hold card numbers.
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        sender.send(("failed", f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"))
    finally:
        sender.close()
