"""The bundled FlexFactor sandbox (SPEC section 8): a loopback HTTP server speaking the vendor contract."""

from __future__ import annotations

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
