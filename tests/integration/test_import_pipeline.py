"""The import's read-and-check stage in a forked child: the same stored result as inline, and a
checker that fails or dies mid-file loses nothing (what was written stays, a rerun completes it)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from recycle_engine.adapters.clock import FixedClock
from recycle_engine.config import Settings
from recycle_engine.errors import InputError, RecycleEngineError
from recycle_engine.services.intake import decline_effects
from recycle_engine.services.intake.decline_effects import ImportSession
from recycle_engine.services.intake.feed_file import read_header
from recycle_engine.services.intake.feed_stage import staged_chunks
from recycle_engine.services.intake.import_declines import import_declines
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Change, Customer, Decline, JobRun, Order, Subscription
from tests.integration.test_import_declines import a_decline, a_new_sale, feed_settings, write_feed

CHUNK = 8  # rows per transaction: a 60-row feed spans chunks of 1, 2, 4 and then 8 rows


def a_mixed_feed() -> list[dict[str, str]]:
    """Rebills and new sales, purchases, orders and customers repeated across chunk boundaries, a few
    bad rows and an in-file duplicate."""
    feed = []
    for n in range(60):
        day = 1 + n % 9
        common = {
            "transaction_id": f"T-{n}",
            "declined_at": f"2026-06-{day:02d}T{n % 24:02d}:15:00-04:00",
            "order_id": f"O-{n % 41}",
            "customer_id": f"C-{n % 13}",
            "email": f"c{n % 13}-{n}@example.com",
        }
        if n % 3 == 0:
            feed.append(a_new_sale(**common))
        else:
            text = "Do Not Honor" if n % 5 == 0 else "Insufficient funds"
            feed.append(
                a_decline(
                    **common, purchase_id=f"P-{n % 11}", billing_cycle=str(2 + n % 4), response_text=text
                )
            )
    feed[17]["currency"] = "XXX"
    feed[33]["amount"] = "-1"
    feed[45] = dict(feed[44])  # the same transaction id twice
    return feed


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row the import writes, without generated ids and run ids."""
    tables = {
        "declines": select(Decline).order_by(Decline.transaction_id),
        "orders": select(Order).order_by(Order.id),
        "customers": select(Customer).order_by(Customer.id),
        "subscriptions": select(Subscription).order_by(Subscription.id),
    }
    found: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, stmt in tables.items():
            found[name] = [tuple(row._mapping.values()) for row in conn.execute(stmt)]
        changes = select(Change.entity, Change.entity_id, Change.old_value, Change.new_value, Change.reason)
        found["changes"] = sorted(tuple(row) for row in conn.execute(changes))
    return found


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return feed_settings(tmp_path)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_given_a_feed_when_checked_ahead_in_a_child_then_the_stored_rows_equal_an_inline_import(
    tmp_path: Path, settings: Settings, engine: Engine, twin_db_url: str, clock: FixedClock
) -> None:
    # given
    feed = write_feed(tmp_path / "declines.csv", a_mixed_feed())
    twin = make_engine(twin_db_url)
    # when
    ahead = import_declines(feed, settings=settings, engine=engine, clock=clock, chunk_rows=CHUNK)
    inline = import_declines(feed, settings=settings, engine=twin, clock=clock, chunk_rows=CHUNK, ahead=False)
    # then
    assert (ahead.accepted, ahead.rejected, ahead.duplicates) == (57, 3, 0)
    assert (inline.accepted, inline.rejected, inline.duplicates) == (57, 3, 0)
    assert snapshot(engine) == snapshot(twin)
    twin.dispose()


def test_given_a_single_threaded_process_when_staging_ahead_then_the_checks_run_in_another_process(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock
) -> None:
    if threading.active_count() > 1:
        pytest.skip("another thread is running in this test process: the stage runs inline by design")
    # given
    feed = write_feed(tmp_path / "declines.csv", a_mixed_feed())
    importers = [
        ImportSession(settings, dialect=engine.dialect, run_id="r", now=clock.now()) for _ in range(2)
    ]
    # when
    ahead = list(staged_chunks(feed, read_header(feed), CHUNK, importers[0], ahead=True))
    inline = list(staged_chunks(feed, read_header(feed), CHUNK, importers[1], ahead=False))
    # then: the same chunks, but only the inline stage saw the transaction ids in this process
    assert [c.prepared.lines for c in ahead] != [c.prepared.lines for c in inline]  # ahead starts small
    assert sum((c.prepared.lines for c in ahead), []) == sum((c.prepared.lines for c in inline), [])
    assert importers[0].seen == {}
    assert len(importers[1].seen) == 59  # 60 rows, one id twice


def _failing_after(line: int, fail: Any) -> Any:
    original = ImportSession.check_and_prepare

    def check_and_prepare(self: ImportSession, frame: Any, first_line: int) -> Any:
        if first_line > line:
            fail()
        return original(self, frame, first_line)

    return check_and_prepare


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        (lambda: os._exit(70), "the feed checker stopped unexpectedly (exit code 70)"),
        (lambda: 1 // 0, "the feed checker failed: ZeroDivisionError at test_import_pipeline.py:"),
    ],
    ids=["killed", "raising"],
)
def test_given_a_checker_that_dies_mid_file_when_imported_then_the_run_fails_and_a_rerun_completes_it(
    tmp_path: Path,
    settings: Settings,
    engine: Engine,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    fail: Any,
    message: str,
) -> None:
    if threading.active_count() > 1:
        pytest.skip("another thread is running in this test process: the stage runs inline by design")
    # given: the checker stops before the chunk that starts after line 20
    feed = write_feed(tmp_path / "declines.csv", a_mixed_feed())
    monkeypatch.setattr(decline_effects.ImportSession, "check_and_prepare", _failing_after(20, fail))
    # when
    with pytest.raises(RecycleEngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_declines(feed, settings=settings, engine=engine, clock=clock, chunk_rows=CHUNK)
    # then: what was written stays, the run says it failed, and a rerun completes the feed
    with engine.connect() as conn:
        stored = set(conn.execute(select(Decline.transaction_id)).scalars())
        failed = conn.execute(select(JobRun.status, JobRun.error)).one()
    assert 0 < len(stored) < 57
    assert failed.status == "FAILED"
    assert "feed checker" in failed.error
    monkeypatch.undo()
    rerun = import_declines(feed, settings=settings, engine=engine, clock=clock, chunk_rows=CHUNK)
    assert (rerun.accepted, rerun.duplicates) == (57 - len(stored), len(stored))


def test_given_a_feed_unreadable_midway_when_checked_ahead_then_the_input_error_names_where(
    tmp_path: Path, settings: Settings, engine: Engine, clock: FixedClock
) -> None:
    # given: an unterminated quote in line 40
    feed = write_feed(tmp_path / "declines.csv", a_mixed_feed())
    lines = feed.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[39] = lines[39].replace("Insufficient", '"Insufficient', 1)
    feed.write_text("".join(lines), encoding="utf-8")
    # when
    with pytest.raises(InputError, match=r"unreadable CSV after line (\d+)") as raised:
        import_declines(feed, settings=settings, engine=engine, clock=clock, chunk_rows=CHUNK)
    # then: the line named is before the broken one, at the start of the chunk that could not be read
    named = int(re.search(r"after line (\d+)", str(raised.value)).group(1))  # type: ignore[union-attr]
    assert 1 <= named < 40
