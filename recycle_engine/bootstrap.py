"""The one wiring point: settings, the database engine, the ports and the run's time, put together.

Entry points (the CLI, the jobs, the workers, the demo, the web app) open a `Run` with `open_run` for
one night's work, or an `App` with `open_app` when they live on and need a live clock; both close
everything they opened. Only this module (and the clock adapter) constructs the system clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine

from recycle_engine.config import Need, Settings, require
from recycle_engine.domain.night import Night
from recycle_engine.ports import Clock, FlexFactorGateway, ProcessorGateway
from recycle_engine.storage.db import make_engine

if TYPE_CHECKING:
    from recycle_engine.adapters.crm_http import CrmClient
    from recycle_engine.services.nightly.claiming import Progress
    from recycle_engine.services.nightly.submit import SubmitResult
    from recycle_engine.services.outcomes.reconcile import ReconcileResult

__all__ = [
    "Alert",
    "App",
    "Night",
    "Run",
    "build_app",
    "close_clients",
    "crm_client",
    "flexfactor_clients",
    "load_settings_file",
    "open_app",
    "open_run",
    "processors",
    "system_clock",
    "tonight",
]


class Alert(Protocol):
    def __call__(self, *, kind: str, reason: str, run_id: str | None = None) -> bool:
        """Tell the alert hook; True when it took the message. Never raises."""
        ...


def system_clock() -> Clock:
    """The wall clock; the one construction of it outside the clock adapter."""
    from recycle_engine.adapters.clock import SystemClock

    return SystemClock()


def load_settings_file(path: Path, *needs: Need) -> Settings:
    """Load and check settings; raises ConfigError naming every problem.

    `needs`: what the command will do that needs credentials (call FlexFactor, verify webhooks); a
    credential whose variable is missing is a problem only then (README: which command needs which).
    """
    from recycle_engine.config import load_settings

    return load_settings(path, needs=needs)


@dataclass
class App:
    """What a command needs: the settings, a database engine and a clock."""

    settings: Settings
    engine: Engine
    clock: Clock
    _clients: list[Mapping[str, FlexFactorGateway]] = field(default_factory=list)

    def flexfactor_clients(self, clock: Clock) -> dict[str, FlexFactorGateway]:
        """One client per FlexFactor gateway sharing this database's token cache; closed with the app."""
        clients = flexfactor_clients(self.settings, clock, engine=self.engine)
        self._clients.append(clients)
        return clients

    def close(self) -> None:
        for clients in self._clients:
            close_clients(clients)
        self._clients.clear()
        self.engine.dispose()


def tonight(settings: Settings) -> Night:
    """The night of the wall clock, read once, in the settings timezone."""
    return Night.of(system_clock().now(), settings.timezone)


@dataclass
class Run:
    """One night's work: settings, engine and ports, the frozen `night` it plans, and the wall clock
    that stamps its job-run records and FlexFactor's real send times. `submit` and `reconcile` run the
    nightly services wired with all of these, so no entry point passes a clock of its own."""

    app: App
    night: Night
    _crm: list[CrmClient] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def engine(self) -> Engine:
        return self.app.engine

    @property
    def clock(self) -> Clock:
        return self.app.clock

    def flexfactor_clients(self) -> dict[str, FlexFactorGateway]:
        """Clients that read FlexFactor's dates against the night (token lifetimes still count real
        seconds); closed with the run."""
        from recycle_engine.adapters.clock import LogicalClock

        return self.app.flexfactor_clients(LogicalClock(self.night.at))

    def processors(self) -> dict[str, ProcessorGateway]:
        return processors(self.settings)

    def send_clock(self) -> Clock:
        """The clock a hand-off's FlexFactor window counts from: the real send instant (README)."""
        from recycle_engine.adapters.clock import send_clock

        return send_clock(self.night.at)

    def submit(self, *, dry_run: bool = False, progress: Progress | None = None) -> SubmitResult:
        """The nightly submit of this run's night, on its ports, stamped by its clock and sending by its
        send clock; the CLI, the scheduled job and each worker process all run it this one way."""
        from recycle_engine.services.nightly.submit import run_submit

        return run_submit(
            self.settings,
            self.engine,
            {} if dry_run else self.flexfactor_clients(),  # a dry run calls nobody
            self.processors(),
            night=self.night,
            send_clock=self.send_clock(),
            dry_run=dry_run,
            progress=progress,
            clock=self.clock,
        )

    def submit_in_workers(self, workers: int, *, log_level: str = "INFO") -> SubmitResult:
        """The nightly submit in `workers` processes on PostgreSQL under one job run, each worker
        wired by `submit_in_worker` as `submit` wires this process."""
        from recycle_engine.services.nightly.workers import run_submit_workers

        return run_submit_workers(
            self.settings,
            self.engine,
            workers=workers,
            night=self.night,
            clock=self.clock,
            submit=submit_in_worker,
            log_level=log_level,
        )

    def reconcile(self) -> ReconcileResult:
        """The nightly reconcile of this run's night, wired as `submit` is; the CLI and the scheduled
        job both run it this way."""
        from recycle_engine.services.outcomes.reconcile import run_reconcile

        return run_reconcile(
            self.settings,
            self.engine,
            self.flexfactor_clients(),
            night=self.night,
            send_clock=self.send_clock(),
            clock=self.clock,
        )

    def crm(self) -> CrmClient:
        """The CRM client (refuses without a crm: section); closed with the run."""
        client = crm_client(self.settings)
        self._crm.append(client)
        return client

    def alert(self, job: str) -> Alert:
        """The alert hook for `job`: alert(kind=..., reason=..., run_id=...) -> delivered."""
        from recycle_engine.adapters.alerts import send_alert

        command = self.settings.alert_command

        def alert(*, kind: str, reason: str, run_id: str | None = None) -> bool:
            return send_alert(command, job=job, kind=kind, reason=reason, run_id=run_id)

        return alert

    def close(self) -> None:
        for client in self._crm:
            client.close()
        self._crm.clear()
        self.app.close()


def submit_in_worker(settings: Settings, night: Night, pool_size: int) -> Mapping[str, int]:
    """One worker process's submit: its own engine and clients on the night the parent read; the run
    closes them. Module-level, so the worker pool can pass it to another process by name."""
    with open_run(settings, night=night, pool_size=pool_size) as run:
        return run.submit().counts


@contextmanager
def open_run(
    source: Path | Settings,
    *needs: Need,
    at: datetime | None = None,
    night: Night | None = None,
    clock: Clock | None = None,
    pool_size: int | None = None,
) -> Iterator[Run]:
    """Open one run: settings (loaded from `source` with `needs`, or given), engine and ports, and its
    night at `at` (`--at`), or `night` as given (a worker's), or the wall clock read once. Closes the
    engine, the HTTP clients, their token cache and the CRM client on exit."""
    with open_app(source, *needs, clock=clock, pool_size=pool_size) as app:
        if night is None:
            night = Night.of(at or app.clock.now(), app.settings.timezone)  # the one read of the clock
        run = Run(app, night)
        try:
            yield run
        finally:
            run.close()


@contextmanager
def open_app(
    source: Path | Settings, *needs: Need, clock: Clock | None = None, pool_size: int | None = None
) -> Iterator[App]:
    """Open settings, engine and a live clock for a process that lives on (serve, the scheduler, the
    demo's loop); its FlexFactor clients close with it."""
    settings = source if isinstance(source, Settings) else load_settings_file(source, *needs)
    if isinstance(source, Settings):
        require(settings, *needs)
    app = build_app(settings, clock or system_clock(), pool_size=pool_size)
    try:
        yield app
    finally:
        app.close()


def build_app(settings: Settings, clock: Clock, *, pool_size: int | None = None) -> App:
    size = pool_size or max(5, settings.batching.concurrency // 4)
    return App(settings=settings, engine=make_engine(settings.database_url, pool_size=size), clock=clock)


def flexfactor_clients(
    settings: Settings, clock: Clock, *, engine: Engine | None = None
) -> dict[str, FlexFactorGateway]:
    """One pooled client per FlexFactor gateway; refuses when a credential it sends is missing.

    With `engine`, the clients keep their token in its flexfactor_token_cache table, sealed, so every
    process on that database shares one token until shortly before it expires."""
    require(settings, Need.FLEXFACTOR)
    from recycle_engine.adapters.flexfactor_http import FlexFactorClient
    from recycle_engine.storage.sealed_token_cache import SealedTokenCache

    http = settings.http
    # How long a process waits for another's token call before making its own: one call's worst case.
    lock_wait_s = (http.connect_timeout_s + http.read_timeout_s) * (http.max_retries + 1)
    clients: dict[str, FlexFactorGateway] = {}
    for gw in settings.flexfactor_gateways():
        ff = gw.flexfactor
        assert ff is not None
        cache = (
            SealedTokenCache(
                engine.url.render_as_string(hide_password=False),
                base_url=ff.base_url,
                app_key=ff.app_key,
                app_secret=ff.app_secret,
                lock_wait_s=lock_wait_s,
            )
            if engine is not None
            else None
        )
        clients[gw.id] = FlexFactorClient(
            ff, settings.http, settings.batching, clock, gateway_id=gw.id, token_cache=cache
        )
    return clients


def close_clients(clients: Mapping[str, object]) -> None:
    """Close each client that holds resources (an HTTP pool, its token cache's database connection)."""
    for client in clients.values():
        close = getattr(client, "close", None)
        if close is not None:
            close()


def processors(settings: Settings) -> dict[str, ProcessorGateway]:
    """A processor adapter per ordinary gateway."""
    from recycle_engine.adapters.processors import processor_for

    pool = settings.batching.concurrency
    return {g.id: processor_for(g, pool_size=pool) for g in settings.gateways.values() if not g.is_flexfactor}


def crm_client(settings: Settings) -> CrmClient:
    """The CRM client; refuses without a crm: section or when its login or password variable is missing."""
    from recycle_engine.adapters.crm_http import CrmClient
    from recycle_engine.errors import ConfigError

    if settings.crm is None:
        raise ConfigError("settings.yaml has no crm: section; add one to reach the CRM")
    require(settings, Need.CRM)
    return CrmClient(settings.crm)
