"""The command line answers with a sentence, not a traceback, for what a user can fix; global options
go on either side of the command."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recycle_engine.cli import main
from recycle_engine.cli.app import hoist_global_options
from recycle_engine.logs import JsonFormatter
from tests.conftest import ROOT
from tests.factories import SANDBOX_ENV

SAMPLE = ROOT / "recycle_engine" / "sample" / "declines-sample.csv"


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recycle_engine", *args],
        cwd=cwd,
        env=dict(os.environ) | SANDBOX_ENV | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def shipped_settings(tmp_path: Path) -> Path:
    """The repository's settings.yaml in a folder of its own (its SQLite file lands in var/ beside it)."""
    folder = tmp_path / "site"
    (folder / "var").mkdir(parents=True)
    path = folder / "settings.yaml"
    path.write_text((ROOT / "settings.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_given_global_options_when_written_after_or_before_the_command_then_both_are_accepted(
    shipped_settings: Path,
) -> None:
    # given
    env = SANDBOX_ENV
    runner = CliRunner()
    # when
    after = runner.invoke(
        main, ["db", "upgrade", "--config", str(shipped_settings), "--log-level", "warning"], env=env
    )
    before = runner.invoke(
        main, ["--config", str(shipped_settings), "--log-level=WARNING", "config", "check"], env=env
    )
    mixed = runner.invoke(main, ["--log-level", "ERROR", "status", f"--config={shipped_settings}"], env=env)
    # then
    assert after.exit_code == 0, after.output
    assert "database at revision head" in after.output
    assert before.exit_code == 0, before.output
    assert "settings are valid" in before.output
    assert mixed.exit_code == 0, mixed.output


def test_given_arguments_after_a_double_dash_when_hoisting_then_they_stay_where_they_were() -> None:
    # given
    args = ["run", "report", "--log-level", "DEBUG", "--", "--config", "x"]
    # when
    hoisted = hoist_global_options(args)
    # then
    assert hoisted == ["--log-level", "DEBUG", "run", "report", "--", "--config", "x"]


def test_given_no_settings_file_in_the_current_folder_when_a_command_runs_then_it_names_the_absolute_path_and_the_fixes(
    tmp_path: Path,
) -> None:
    # given
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # when
    result = _cli("status", cwd=elsewhere, env={"RECYCLE_ENGINE_CONFIG": ""})
    # then
    assert result.returncode != 0
    assert str(elsewhere / "settings.yaml") in result.stderr
    assert "--config" in result.stderr
    assert "$RECYCLE_ENGINE_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["export", "submissions"], ["run", "report", "--date", "2026-06-12"]]
)
def test_given_a_database_never_upgraded_when_a_command_runs_then_it_says_to_run_db_upgrade(
    shipped_settings: Path, command: list[str]
) -> None:
    # when
    result = _cli(*command, "--config", str(shipped_settings), cwd=shipped_settings.parent)
    # then
    assert result.returncode == 1
    assert "db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["sandbox", "serve"])
def test_given_a_port_in_use_when_a_server_command_starts_then_it_says_so_without_a_traceback(
    shipped_settings: Path, busy_port: int, command: str
) -> None:
    # when
    result = _cli(command, "--port", str(busy_port), cwd=shipped_settings.parent)
    # then
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def _big_feed(path: Path, copies: int) -> None:
    with SAMPLE.open(encoding="utf-8", newline="") as src:
        rows = list(csv.DictReader(src))
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for n in range(copies):
            for row in rows:
                writer.writerow(
                    row
                    | {
                        key: f"{row[key]}-{n}"
                        for key in ("transaction_id", "order_id", "purchase_id", "customer_id")
                        if row[key]
                    }
                )


def test_given_an_export_piped_into_head_when_the_reader_stops_then_the_command_ends_quietly_with_0(
    shipped_settings: Path,
) -> None:
    # given
    site = shipped_settings.parent
    assert _cli("db", "upgrade", cwd=site).returncode == 0
    _big_feed(site / "feed.csv", copies=25)
    imported = _cli("import", "declines", "feed.csv", cwd=site)
    assert imported.returncode == 0, imported.stderr
    # when
    proc = subprocess.Popen(
        [sys.executable, "-m", "recycle_engine", "export", "changes", "--since", "2020-01-01"],
        cwd=site,
        env=dict(os.environ) | SANDBOX_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    header = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does after its line
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()
    proc.stderr.close()
    # then
    assert header.startswith("id,entity")
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_given_a_date_without_time_when_exporting_changes_then_it_is_read_as_local_midnight(
    shipped_settings: Path,
) -> None:
    # given
    site = shipped_settings.parent
    assert _cli("db", "upgrade", cwd=site).returncode == 0
    # when
    by_date = _cli("export", "changes", "--since", "2026-11-01", cwd=site)
    no_offset = _cli("export", "changes", "--since", "2026-11-01T00:00:00", cwd=site)
    # then
    assert by_date.returncode == 0, by_date.stderr
    assert "exported 0 changes" in by_date.stderr
    assert no_offset.returncode == 2
    suggestion = no_offset.stderr.split("e.g. ")[1].strip()
    assert _cli("export", "changes", "--since", suggestion, cwd=site).returncode == 0


def test_given_a_record_with_uvicorns_color_message_when_written_as_json_then_it_carries_no_ansi() -> None:
    # given
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "x", 1, "Started server process [%d]", (42,), None
    )
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    # when
    line = JsonFormatter().format(record)
    # then
    assert "color_message" not in json.loads(line)
    assert "\x1b" not in line


def test_given_no_postgresql_driver_when_a_command_uses_postgresql_then_it_names_the_extra(
    tmp_path: Path,
) -> None:
    # given: a PostgreSQL URL, and psycopg made unimportable (as on a SQLite-only install)
    settings = ROOT.joinpath("settings.yaml").read_text(encoding="utf-8")
    settings = settings.replace(
        "url: sqlite:///var/recycle.db", "url: postgresql+psycopg://nobody@127.0.0.1:9/none"
    )
    path = tmp_path / "settings.yaml"
    path.write_text(settings, encoding="utf-8")
    script = (
        "import sys; sys.modules['psycopg'] = None; from recycle_engine.cli import main; "
        f"main(['db', 'upgrade', '--config', {str(path)!r}])"
    )
    # when
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ) | SANDBOX_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then
    assert result.returncode == 1
    assert "recycle-engine[postgres]" in result.stderr
    assert "Traceback" not in result.stderr
