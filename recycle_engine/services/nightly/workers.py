"""The nightly submit in N worker processes on one PostgreSQL database, under one job run."""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import TYPE_CHECKING, Final

from recycle_engine.config import Settings
from recycle_engine.domain.night import Night
from recycle_engine.errors import InputError, RecycleEngineError
from recycle_engine.ports import Clock
from recycle_engine.services.job_runs import finish_run, start_run
from recycle_engine.services.nightly.anomalies import count_unsent
from recycle_engine.services.nightly.submit import SubmitResult
from recycle_engine.services.reporting.rollups import refresh_after_run

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "WORKER_POOL_SIZE",
    "WorkerSubmit",
    "WorkersFailed",
    "refuse_workers_on_sqlite",
    "run_submit_workers",
    "worker_settings",
]

log = logging.getLogger(__name__)

# Connections each worker's pool keeps (and may double under load): a worker uses one at a time,
# claiming, leasing and recording in turn; the HTTP threads never touch the database.
WORKER_POOL_SIZE: Final = 2
# What a worker imports before its first send, loaded once by the fork server.
_WORKER_MODULES: Final = (
    "recycle_engine.adapters.flexfactor_http",
    "recycle_engine.adapters.processors",
    "recycle_engine.logs",
)
_MAX_COUNTS: Final = frozenset({"skipped_gateways"})  # every worker reports the same gateways


# One worker's whole submit: given the worker's settings, the night under the shared job run and its
# pool size, it wires its own engine and clients and returns its counts. A module-level function (so
# it pickles by name), passed in by the wiring point rather than imported here.
WorkerSubmit = Callable[[Settings, Night, int], Mapping[str, int]]


class WorkersFailed(RecycleEngineError):
    """One or more workers failed or died; what the others did is recorded and stays valid."""


@dataclass(frozen=True)
class _Job:
    settings: Settings
    night: Night  # under the shared job run
    worker: int
    log_level: str
    submit: WorkerSubmit


def refuse_workers_on_sqlite(engine: Engine, workers: int) -> None:
    """Raise InputError when more than one worker is asked for on anything but PostgreSQL."""
    if workers > 1 and engine.dialect.name != "postgresql":
        raise InputError(
            f"--workers {workers} needs PostgreSQL: {engine.dialect.name} lets one process write at a "
            "time, so extra workers would only queue on its lock. Use --workers 1 here, or point "
            "database.url at PostgreSQL to run several workers or hosts on one book."
        )


def worker_settings(settings: Settings, workers: int) -> Settings:
    """One worker's settings: the rate limit is FlexFactor's, shared, so each worker gets its share;
    batch size and concurrency stay per process (each worker has its own HTTP pool)."""
    share = settings.batching.rate_limit_per_second / workers
    return replace(settings, batching=replace(settings.batching, rate_limit_per_second=share))


def run_submit_workers(
    settings: Settings,
    engine: Engine,
    *,
    workers: int,
    night: Night,
    clock: Clock,
    submit: WorkerSubmit,
    log_level: str = "INFO",
) -> SubmitResult:
    """run_submit in `workers` worker processes, each with its own engine and FlexFactor clients.

    The workers share one job run (started and finished here, counts summed) and split the night
    through the database: due pages and unsent hand-offs are claimed with FOR UPDATE SKIP LOCKED and
    leases, so the same command on several hosts splits it too. Raises InputError on SQLite and
    WorkersFailed after all workers ended if any failed or died (its leases expire and the next run
    finishes its share)."""
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    refuse_workers_on_sqlite(engine, workers)
    at = night.at
    run_id = start_run(engine, "submit", logical_at=at, now=clock.now())
    share = worker_settings(settings, workers)
    jobs = [_Job(share, night.started(run_id), k, log_level, submit) for k in range(workers)]
    try:
        counts, errors = _run_all(jobs)
    except BaseException as exc:
        finish_run(engine, run_id, now=clock.now(), counts={}, error=f"{type(exc).__name__}: {exc}")
        raise
    # Once for the whole night, not once per worker: the workers' notes are all in by now.
    refresh_after_run(engine, settings.timezone, now=at, run_id=run_id)
    unsent = count_unsent(settings, engine, counts, job="submit", at=at, run_id=run_id)
    error = "; ".join(errors) if errors else None
    finish_run(engine, run_id, now=clock.now(), counts=dict(counts), error=error, incomplete=unsent > 0)
    if errors:
        raise WorkersFailed(
            f"submit {run_id}: {len(errors)} of {workers} workers failed ({error}); the others finished. "
            "Hand-offs a dead worker leased are looked up by the next run once their lease expires."
        )
    return SubmitResult(run_id, counts)


def _run_all(jobs: Sequence[_Job]) -> tuple[Counter[str], list[str]]:
    context = _worker_context(jobs[0].submit.__module__)
    readers: dict[Connection, int] = {}
    processes = []
    for job in jobs:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_work, args=(job, writer), name=f"submit-worker-{job.worker}")
        process.daemon = True  # a parent stopped by an exception takes its workers with it
        process.start()
        writer.close()  # the worker holds the only writing end: EOF on the reader means it is gone
        readers[reader] = job.worker
        processes.append(process)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    answered: set[int] = set()
    pending = dict(readers)
    while pending:
        for ready in wait(list(pending)):
            assert isinstance(ready, Connection)
            worker = pending.pop(ready)
            try:
                worker_counts, error = ready.recv()
            except EOFError:
                continue  # died without a word; its exit code tells below
            answered.add(worker)
            _add(counts, worker_counts)
            if error:
                errors.append(f"worker {worker}: {error}")
    for job, process in zip(jobs, processes, strict=True):
        process.join()
        if job.worker not in answered:
            errors.append(f"worker {job.worker} died (exit code {process.exitcode})")
    return counts, errors


def _worker_context(wiring: str) -> SpawnContext | ForkServerContext:
    # Not fork: a worker must not inherit the parent's pooled connections or HTTP sessions. A fork
    # server is a clean process that imports the engine once and forks each worker from that, rather
    # than every worker starting Python and importing it again (the night's first sends come sooner).
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, wiring, *_WORKER_MODULES])
    return context


def _add(total: Counter[str], worker_counts: dict[str, int]) -> None:
    for key, value in worker_counts.items():
        total[key] = max(total[key], value) if key in _MAX_COUNTS else total[key] + value


def _work(job: _Job, results: Connection) -> None:
    """One worker process: its own engine, clients and processors, then the submit under the shared run."""
    from recycle_engine.logs import configure_logging

    configure_logging(job.log_level)
    try:
        counts = job.submit(job.settings, job.night, WORKER_POOL_SIZE)
        results.send((dict(counts), None))
    except Exception as exc:
        log.exception("submit worker failed", extra={"worker": job.worker, "run": job.night.run_id})
        results.send(({}, f"{type(exc).__name__}: {exc}"))
    finally:
        results.close()
