"""Shared fixtures: paths to ../shared, a fixed clock, database URLs over SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recycle_engine.adapters.clock import FixedClock

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "flexfactor"


def load_fixture(name: str) -> dict[str, Any]:
    """A vendor artifact from ../shared/fixtures/flexfactor, unchanged."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 6, 10, 6, 0, tzinfo=UTC))
