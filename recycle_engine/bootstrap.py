"""The only wiring: builds settings, engines, clients and services from a settings file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from recycle_engine.config import Need, Settings, require
from recycle_engine.ports import Clock, FlexFactorGateway, ProcessorGateway
from recycle_engine.storage.db import make_engine

if TYPE_CHECKING:
    from recycle_engine.adapters.crm_http import CrmClient

__all__ = [
    "App",
    "build_app",
    "close_clients",
    "crm_client",
    "flexfactor_clients",
    "load_settings_file",
    "processors",
]


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
