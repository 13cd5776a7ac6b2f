"""Log output: a progress line and log lines share a terminal; webhooks are summarised at INFO."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from recycle_engine.logs import configure_logging, end_progress, show_progress
from recycle_engine.web.webhook_app import AcceptedTally


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], io.StringIO]]:
    """Call it in the test's body: pytest re-assigns sys.stderr between a fixture's set-up and the test."""

    def attach() -> io.StringIO:
        screen = io.StringIO()
        monkeypatch.setattr("sys.stderr", screen)
        configure_logging("INFO", json_lines=False)
        return screen

    yield attach
    end_progress()
    logging.getLogger().handlers.clear()


def test_given_a_progress_line_when_a_log_line_arrives_then_it_is_written_on_a_line_of_its_own_above_it(
    terminal: Callable[[], io.StringIO],
) -> None:
    # given
    screen = terminal()
    show_progress("submit: sent 120")
    # when
    logging.getLogger("recycle_engine.test").warning("a gateway refused")
    end_progress()
    # then
    out = screen.getvalue()
    assert "submit: sent 120warning" not in out
    assert out == (
        "\r\x1b[Ksubmit: sent 120\r\x1b[Kwarning recycle_engine.test: a gateway refused\nsubmit: sent 120\n"
    )


def test_given_alembic_plugins_when_logging_is_configured_then_their_info_lines_are_not_shown(
    terminal: Callable[[], io.StringIO],
) -> None:
    # given
    screen = terminal()
    # when
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    # then
    assert screen.getvalue() == ""


def test_given_deliveries_within_a_minute_when_tallied_then_one_summary_comes_once_the_minute_has_passed() -> (
    None
):
    # given
    tally = AcceptedTally(every=timedelta(minutes=1))
    t0 = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
    # when
    early = [tally.add("order.completed", "applied", t0 + timedelta(seconds=s)) for s in (0, 10, 20)]
    summary = tally.add("order.expired", "applied", t0 + timedelta(seconds=61))
    after = tally.add("order.completed", "duplicate", t0 + timedelta(seconds=70))
    # then
    assert early == [None, None, None]
    assert summary == {
        "count": 4,
        "since": t0.isoformat(),
        "events": {"order.completed": 3, "order.expired": 1},
        "reasons": {"applied": 4},
    }
    assert after is None
