"""The `recycle-engine` command line (docs/spec.md section 4): parse, load settings, call a service, exit.

One module a command group; importing this package registers every command on `main`."""

from __future__ import annotations

from recycle_engine.cli import crm, data, db, ladder, orders, run, serve
from recycle_engine.cli.app import main

__all__ = ["crm", "data", "db", "ladder", "main", "orders", "run", "serve"]
