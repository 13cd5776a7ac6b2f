"""recycle-engine: scheduled recycle billing with FlexFactor decline salvage."""

from __future__ import annotations

from recycle_engine.errors import ConfigError, FlexFactorError, RecycleEngineError
from recycle_engine.money import Money

__all__ = ["ConfigError", "FlexFactorError", "Money", "RecycleEngineError", "__version__"]

__version__ = "0.1.0"
