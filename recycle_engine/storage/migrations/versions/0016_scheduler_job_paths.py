"""scheduler job paths: stored jobs follow the scheduler's entry points into recycle_engine.jobs

The scheduler's entry points moved from a top-level `jobs` package to `recycle_engine.jobs`. APScheduler's
job store keeps each job pickled, with its target as text ("jobs.nightly_submit:run") and its trigger
pickled by class path (jobs.triggers.LocalCronTrigger). A job that no longer unpickles is dropped by
APScheduler and added again from settings with a fresh next run time, so a night that fell due while
the scheduler was down would not be caught up. This rewrites the paths in place and keeps each job's
next run time.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 03:00:00
"""

import importlib
import io
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOBSTORE_TABLE = "apscheduler_jobs"  # APScheduler creates it; a book never scheduled has none
OLD, NEW = "jobs", "recycle_engine.jobs"


def _moved(module: str, old: str, new: str) -> str:
    return new + module[len(old) :] if module == old or module.startswith(old + ".") else module


class _MovedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, old: str, new: str) -> None:
        super().__init__(io.BytesIO(data))
        self._old, self._new = old, new

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_moved(module, self._old, self._new), name)


class _ModuleRef:
    """Pickles as `importlib.import_module(path)`: a module the dumping process need not have."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        return importlib.import_module, (self.path,)


class _MovedPickler(pickle.Pickler):
    """Writes classes of `old` under their path in `new`, which need not be importable here."""

    def __init__(self, file: io.BytesIO, old: str, new: str) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._old, self._new = old, new

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and _moved(obj.__module__, self._old, self._new) != obj.__module__:
            return getattr, (_ModuleRef(_moved(obj.__module__, self._old, self._new)), obj.__qualname__)
        return NotImplemented


def _rewrite(old: str, new: str) -> None:
    """Each stored job's paths from `old` to `new`; it is read with this code's classes either way."""
    bind = op.get_bind()
    if not sa.inspect(bind).has_table(JOBSTORE_TABLE):
        return
    jobs = sa.table(JOBSTORE_TABLE, sa.column("id", sa.String), sa.column("job_state", sa.LargeBinary))
    for job_id, job_state in bind.execute(sa.select(jobs.c.id, jobs.c.job_state)).all():
        state = _MovedUnpickler(job_state, OLD, NEW).load()
        func = state.get("func")
        if isinstance(func, str):
            target, _, attr = func.partition(":")
            state["func"] = f"{_moved(target, old, new)}:{attr}" if attr else func
        out = io.BytesIO()
        _MovedPickler(out, old, new).dump(state)
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(job_state=out.getvalue()))


def upgrade() -> None:
    _rewrite(OLD, NEW)


def downgrade() -> None:
    _rewrite(NEW, OLD)
