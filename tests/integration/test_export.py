"""`export submissions` and `export changes`: columns, values, CSV and JSON lines, --since and the id cursor."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from recycle_engine.cli import main
from recycle_engine.services.export import (
    ExportFormat,
    export_changes,
    export_submissions,
)
from recycle_engine.storage.db import make_engine
from recycle_engine.storage.models import Change, Handoff

T0 = datetime(2026, 6, 10, 6, 0, tzinfo=UTC)
SPEC_COLUMNS = (
    "submission_id,source,order_id,purchase_id,transaction_id,gateway_id,slot,attempt,amount,currency,"
    "submitted_at,expires_at,flexfactor_order_id,state,outcome_at,outcome_source,last_error"
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def a_handoff(engine: Engine, handoff_id: str, **overrides: Any) -> None:
    row: dict[str, Any] = {
        "id": handoff_id,
        "source": "RECYCLE",
        "order_id": f"o-{handoff_id}",
        "purchase_id": f"p-{handoff_id}",
        "transaction_id": f"t-{handoff_id}",
        "gateway_id": "ff-main",
        "declining_gateway_id": "nmi-main",
        "slot": "4-6",
        "attempt": 4,
        "billing_cycle": 3,
        "amount_minor": 2749,
        "currency": "USD",
        "idempotency_key": f"key-{handoff_id}",
        "request_body": "{}",
        "dedupe_key": f"dedupe-{handoff_id}",
        "state": "PENDING",
        "created_at": T0,
        "updated_at": T0,
        **overrides,
    }
    with engine.begin() as conn:
        conn.execute(insert(Handoff).values(row))


def a_change(engine: Engine, at: datetime, **overrides: Any) -> None:
    row: dict[str, Any] = {
        "entity": "SUBSCRIPTION",
        "entity_id": "p-1",
        "field": "status",
        "old_value": "RECYCLE_BILLING",
        "new_value": "ACTIVE",
        "reason": "FLEXFACTOR_APPROVED",
        "source": "FLEXFACTOR",
        "handoff_id": "sub_1",
        "occurred_at": at,
        **overrides,
    }
    with engine.begin() as conn:
        conn.execute(insert(Change).values(row))


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_given_handoffs_of_each_source_when_exported_as_csv_then_columns_and_values_follow_the_spec(
    engine: Engine,
) -> None:
    # given
    a_handoff(
        engine,
        "sub_a",
        state="APPROVED",
        submitted_at=T0,
        expires_at=T0 + timedelta(days=21),
        flexfactor_order_id="ff-1",
        outcome_at=T0 + timedelta(days=2, hours=3),
        outcome_source="WEBHOOK",
    )
    a_handoff(
        engine, "sub_b", slot="final", attempt=10, amount_minor=500, created_at=T0 + timedelta(seconds=1)
    )
    a_handoff(
        engine,
        "sub_c",
        source="RERUN",
        slot=None,
        attempt=None,
        purchase_id=None,
        amount_minor=1500,
        currency="JPY",
        created_at=T0 + timedelta(seconds=2),
    )
    a_handoff(
        engine, "sub_d", source="CASCADE", slot="4-6", attempt=None, created_at=T0 + timedelta(seconds=3)
    )
    out = io.StringIO()
    # when
    count = export_submissions(engine, out, ExportFormat.CSV)
    # then
    header, *rows = csv_rows(out.getvalue())
    assert ",".join(header) == SPEC_COLUMNS
    assert count == 4
    assert rows[0] == [
        "sub_a",
        "RECYCLE",
        "o-sub_a",
        "p-sub_a",
        "t-sub_a",
        "ff-main",
        "4-6",
        "4",
        "27.49",
        "USD",
        "2026-06-10T06:00:00+00:00",
        "2026-07-01T06:00:00+00:00",
        "ff-1",
        "APPROVED",
        "2026-06-12T09:00:00+00:00",
        "WEBHOOK",
        "",
    ]
    assert (rows[1][6], rows[1][7], rows[1][8]) == ("final", "final", "5.00")
    # A rerun has no slot, attempt or purchase; yen have no minor digits.
    assert rows[2][1:4] + rows[2][6:10] == ["RERUN", "o-sub_c", "", "", "", "1500", "JPY"]
    assert rows[2][10:] == ["", "", "", "PENDING", "", "", ""]
    # A cascade never shows a slot, whatever the row holds.
    assert (rows[3][1], rows[3][6]) == ("CASCADE", "")


def test_given_a_failed_handoff_when_exported_then_its_last_error_says_why(engine: Engine) -> None:
    # given: FlexFactor refused the hand-off
    reason = "400 ExpiryDateUtc: The ExpiryDateUtc must be at most 21 days ahead."
    a_handoff(engine, "sub_f", state="FAILED", outcome_at=T0, last_error=reason)
    out = io.StringIO()
    # when
    export_submissions(engine, out, ExportFormat.CSV)
    # then
    header, row = csv_rows(out.getvalue())
    assert dict(zip(header, row, strict=True))["last_error"] == reason


def test_given_handoffs_created_together_when_exported_then_the_order_is_created_at_then_id(
    engine: Engine,
) -> None:
    # given
    a_handoff(engine, "sub_z", created_at=T0)
    a_handoff(engine, "sub_b", created_at=T0 + timedelta(minutes=1))
    a_handoff(engine, "sub_a", created_at=T0)
    out = io.StringIO()
    # when
    export_submissions(engine, out, ExportFormat.CSV)
    # then
    assert [r[0] for r in csv_rows(out.getvalue())[1:]] == ["sub_a", "sub_z", "sub_b"]


def test_given_a_handoff_when_exported_as_jsonl_then_each_line_is_an_object_with_the_spec_keys_in_order(
    engine: Engine,
) -> None:
    # given
    a_handoff(engine, "sub_a", source="RERUN", slot=None, attempt=None, purchase_id=None)
    out = io.StringIO()
    # when
    export_submissions(engine, out, ExportFormat.JSONL)
    # then
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert ",".join(record) == SPEC_COLUMNS
    assert (record["amount"], record["purchase_id"], record["slot"], record["attempt"]) == (
        "27.49",
        None,
        None,
        None,
    )


def test_given_changes_over_time_when_exported_since_t_then_rows_at_or_after_t_come_in_id_order(
    engine: Engine,
) -> None:
    # given
    a_change(engine, T0 - timedelta(seconds=1), entity_id="before")
    a_change(engine, T0, entity_id="at")
    a_change(engine, T0 + timedelta(hours=1), entity_id="after", old_value=None)
    out = io.StringIO()
    # when
    count = export_changes(engine, out, since=T0, fmt=ExportFormat.CSV)
    # then
    header, *rows = csv_rows(out.getvalue())
    assert header == [
        "id",
        "entity",
        "entity_id",
        "field",
        "old_value",
        "new_value",
        "reason",
        "source",
        "handoff_id",
        "occurred_at",
    ]
    assert count == 2
    assert [(r[2], r[4], r[9]) for r in rows] == [
        ("at", "RECYCLE_BILLING", "2026-06-10T06:00:00+00:00"),
        ("after", "", "2026-06-10T07:00:00+00:00"),
    ]
    assert int(rows[0][0]) < int(rows[1][0])


def test_given_an_id_cursor_when_changes_are_read_again_then_only_later_ids_come_and_a_reread_is_identical(
    engine: Engine,
) -> None:
    # given
    for minute in range(3):
        a_change(engine, T0 + timedelta(minutes=minute), entity_id=f"p-{minute}")
    first = io.StringIO()
    export_changes(engine, first, since=T0, fmt=ExportFormat.JSONL)
    records = [json.loads(line) for line in first.getvalue().splitlines()]
    # when
    again, after = io.StringIO(), io.StringIO()
    export_changes(engine, again, since=T0, fmt=ExportFormat.JSONL)
    export_changes(engine, after, since=T0, after_id=records[0]["id"], fmt=ExportFormat.JSONL)
    # then
    assert again.getvalue() == first.getvalue()
    assert all(isinstance(r["id"], int) for r in records)
    assert [json.loads(line)["entity_id"] for line in after.getvalue().splitlines()] == ["p-1", "p-2"]


# --- the commands ---------------------------------------------------------------------------------


@pytest.fixture
def settings_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            timezone: UTC
            database: {{url: "{db_url}"}}
            gateways:
              - {{id: nmi-main, type: simulated}}
            """
        ),
        encoding="utf-8",
    )
    return path


def test_given_handoffs_when_export_submissions_runs_with_out_then_the_file_holds_them(
    engine: Engine, settings_file: Path, tmp_path: Path
) -> None:
    # given
    a_handoff(engine, "sub_a")
    target = tmp_path / "submissions.jsonl"
    # when
    result = CliRunner().invoke(
        main,
        ["export", "submissions", "--config", str(settings_file), "--format", "jsonl", "--out", str(target)],
    )
    # then
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["submission_id"] for line in target.read_text().splitlines()] == ["sub_a"]
    assert not (tmp_path / "submissions.jsonl.partial").exists()


def test_given_changes_when_export_changes_runs_then_csv_goes_to_stdout(
    engine: Engine, settings_file: Path
) -> None:
    # given
    a_change(engine, T0, entity_id="p-9")
    # when
    result = CliRunner().invoke(
        main, ["export", "changes", "--config", str(settings_file), "--since", "2026-06-10T02:00:00-04:00"]
    )
    # then
    assert result.exit_code == 0, result.output
    header, row = csv_rows(result.stdout)
    assert (header[0], row[2]) == ("id", "p-9")


def test_given_a_since_without_offset_when_export_changes_runs_then_it_exits_non_zero(
    settings_file: Path,
) -> None:
    # when
    result = CliRunner().invoke(
        main, ["export", "changes", "--config", str(settings_file), "--since", "2026-06-10T00:00:00"]
    )
    # then
    assert result.exit_code != 0
    assert "no UTC offset" in result.output
