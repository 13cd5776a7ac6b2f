"""A pipeline stage run one item ahead in a forked child process, so its CPU work overlaps the caller's.

Parsing and checking rows is CPU work in Python, and so is writing them; a second process lets the two
overlap on two cores. Threads would not: SQLite's driver gives up the GIL for every row it steps, and
would then wait a full switch interval to get it back from a busy checker. The child never touches
the database: it only produces items, which the caller writes.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final, TypeVar

from recycle_engine.errors import RecycleEngineError

__all__ = ["can_fork", "collection_deferred", "produced_in_child"]

_T = TypeVar("_T")
_DONE: Final = "done"


def can_fork() -> bool:
    """Whether a stage may run in a forked child: only from a single-threaded process (another thread
    may hold a lock the child would inherit held), and where fork exists."""
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def produced_in_child(
    produce: Callable[[], Iterator[_T]],
    *,
    name: str,
    source: str,
    passed: tuple[type[BaseException], ...],
) -> Iterator[_T]:
    """The items of `produce()`, made in a forked child (call only when can_fork()) while the caller
    handles the one before; the pipe holds at most about one more.

    An exception of a `passed` type is raised here as the child raised it; any other is reported by
    type and place only (its text may quote an input value, and values may hold card numbers). A child
    that dies raises RecycleEngineError naming `source`. Leaving early kills the child.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_run_child, args=(sender, receiver, produce, passed), name=name, daemon=True
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
                    f"{source}: the {name} stopped unexpectedly (exit code {child.exitcode}); "
                    "nothing after the chunks already written was stored"
                ) from None
            if kind == _DONE:
                return
            if kind == "item":
                yield payload
            elif kind == "raised":
                raise payload
            else:
                raise RecycleEngineError(f"{source}: the {name} failed: {payload}")
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


def _run_child(
    sender: Connection,
    receiver: Connection,
    produce: Callable[[], Iterator[object]],
    passed: tuple[type[BaseException], ...],
) -> None:
    # Our copy of the reading end closed, a parent killed outright leaves no reader: the next send
    # fails and the child ends, instead of blocking on a full pipe for ever.
    receiver.close()
    try:
        for item in produce():
            sender.send(("item", item))
        sender.send((_DONE, None))
    except BrokenPipeError:
        pass  # the parent stopped reading: it has its own error to report, or is gone
    except passed as exc:
        # Its text is safe to pass on; an exception that cannot be rebuilt there goes as text.
        sender.send(("raised", exc) if _rebuilds(exc) else ("failed", f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 - anything else is reported by the parent, not lost here
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        sender.send(("failed", f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"))
    finally:
        sender.close()


def _rebuilds(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own exception, in our own process
    except Exception:  # noqa: BLE001 - any failure means: send it as text
        return False
    return True
