"""The bundled FlexFactor sandbox (SPEC section 8): a loopback HTTP server speaking the vendor contract."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recycle_engine.sandbox.server import RunningSandbox, create_app, run_sandbox, serve_forever
    from recycle_engine.sandbox.signing import sign_webhook
    from recycle_engine.sandbox.state import SANDBOX_SIGNING_KEY_B64, SandboxConfig, SandboxState

__all__ = [
    "SANDBOX_SIGNING_KEY_B64",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxState",
    "create_app",
    "run_sandbox",
    "serve_forever",
    "sign_webhook",
]

# Loaded on first use: every CLI command imports SandboxConfig for `sandbox --help`, and uvicorn with
# starlette would otherwise add a noticeable delay to each of them.
_MODULE_OF = {
    "SANDBOX_SIGNING_KEY_B64": "state",
    "SandboxConfig": "state",
    "SandboxState": "state",
    "RunningSandbox": "server",
    "create_app": "server",
    "run_sandbox": "server",
    "serve_forever": "server",
    "sign_webhook": "signing",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"recycle_engine.sandbox.{_MODULE_OF[name]}"), name)
