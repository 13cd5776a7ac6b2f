"""`config check` through the real entry point: the ladders it accepts, warnings, JSON, in-flight versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from recycle_engine.cli import main
from recycle_engine.domain.profile_versions import profile_version
from recycle_engine.storage.db import make_engine, upgrade
from tests.factories import SANDBOX_ENV, a_settings_file, load_test_settings
from tests.integration.test_ladder_versions import LADDER_A, LADDER_B, import_one

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "settings.yaml"
NO_SECRETS = {name: "" for name in SANDBOX_ENV} | {"RECYCLE_ENGINE_CONFIG": ""}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def check(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEXFACTOR_")}
    environment.update(env or {})
    result = CliRunner().invoke(main, ["config", "check", *args], env=environment)
    return result.exit_code, result.stdout, result.stderr


def test_given_the_shipped_settings_when_checked_then_attempt_4_shows_when_what_and_where() -> None:
    # when
    code, out, _ = check("--config", str(SHIPPED), "--no-database")

    # then
    assert code == 0, out
    assert "recycle ladders for a sample price of 49.99 USD (day: days after the decline):" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  4 ")]
    assert rows[0][:5] == ["4", "9", "47.49", "USD", "5"]
    assert "slot 4-6: FlexFactor (flexfactor-main): the hand-off ends the ladder" in out
    assert "only if FlexFactor refuses attempt 4" in out
    final_line = next(
        n for n, text in enumerate(SHIPPED.read_text().splitlines(), 1) if "final: flexfactor" in text
    )
    assert (
        f"warning: recycle_profiles[0].slots.final (line {final_line}), profile default: attempt final "
        "(slot final) never runs as configured: FlexFactor takes attempt 4, which ends the ladder" in out
    )
    assert out.rstrip().endswith("settings are valid (1 warning)")


def test_given_a_sample_price_in_euros_when_checked_then_prices_follow_it_and_the_minimum_price() -> None:
    # when
    code, out, _ = check(
        "--config", str(SHIPPED), "--no-database", "--sample-price", "10.00", "--currency", "eur"
    )

    # then: profile short takes 2.00 off at attempt 2, below its 9.00 minimum price
    assert code == 0, out
    assert "sample price of 10.00 EUR" in out
    short = out[out.index("recycle profile short (") :]
    attempt_2 = next(line for line in short.splitlines() if line.startswith("  2 "))
    assert attempt_2.split()[:6] == ["2", "3", "9.00", "EUR", "(minimum", "price)"]
    assert "minimum price 9.00 EUR" in short


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sample-price", "12.345"], "--sample-price"),
        (["--sample-price", "abc"], "not a decimal amount"),
        (["--currency", "XYZ"], "unknown currency 'XYZ'"),
    ],
)
def test_given_a_bad_sample_price_when_checked_then_it_says_which_option(args: list[str], words: str) -> None:
    # when
    code, _, err = check("--config", str(SHIPPED), "--no-database", *args)

    # then
    assert code == 2
    assert words in err
    assert "Traceback" not in err


def test_given_json_when_checked_then_the_document_has_the_documented_keys() -> None:
    # when: the real console entry point, as a pull-request check would run it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recycle_engine",
            "config",
            "check",
            "--config",
            str(SHIPPED),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLEXFACTOR_")},
        cwd=ROOT,
    )

    # then
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1
    assert doc["ok"] is True
    assert doc["errors"] == []
    assert [(w["profile"], w["path"]) for w in doc["warnings"]] == [
        ("default", "recycle_profiles[0].slots.final")
    ]
    assert (
        SHIPPED.read_text().splitlines()[doc["warnings"][0]["line"] - 1].strip() == "final: flexfactor-main"
    )
    assert {u["variable"] for u in doc["unset_variables"]} >= {"FLEXFACTOR_APP_SECRET"}
    default = doc["profiles"][0]
    assert default["id"] == "default"
    four = next(a for a in default["attempts"] if a["attempt"] == "4")
    assert four == {
        "attempt": "4",
        "skipped": False,
        "day": 9,
        "price_minor": 4749,
        "price": "47.49 USD",
        "reduction": "5",
        "reduction_minor": 250,
        "at_minimum_price": False,
        "slot": "4-6",
        "gateway": "flexfactor-main",
        "flexfactor": True,
        "only_if_flexfactor_refuses": None,
    }
    final = next(a for a in default["attempts"] if a["attempt"] == "final")
    assert final["only_if_flexfactor_refuses"] == "4"


def test_given_broken_settings_and_json_when_checked_then_every_problem_is_in_the_document_and_exit_2(
    tmp_path: Path,
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text("timezone: Mars/Base\nbatching: {batch_sise: 3}\n", encoding="utf-8")

    # when
    code, out, _ = check("--config", str(path), "--format", "json")

    # then
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["profiles"] == []
    assert set(doc) == set(
        json.loads(check("--config", str(SHIPPED), "--format", "json", "--no-database")[1])
    )
    by_path = {e["path"]: e for e in doc["errors"]}
    assert set(by_path) == {"gateways", "timezone", "batching.batch_sise"}
    assert by_path["timezone"]["line"] == 1
    assert by_path["batching.batch_sise"]["line"] == 2
    assert "did you mean 'batch_size'?" in by_path["batching.batch_sise"]["message"]


def test_given_a_yaml_syntax_error_and_json_when_checked_then_line_and_column_are_given(
    tmp_path: Path,
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text('timezone: "UTC\n', encoding="utf-8")

    # when
    code, out, _ = check("--config", str(path), "--format", "json")

    # then
    assert code == 2
    (error,) = json.loads(out)["errors"]
    assert (error["line"], error["column"]) == (2, 1)
    assert "the quote opened on line 1 is never closed" in error["message"]


def test_given_no_database_file_when_checked_then_it_says_so_and_creates_none(tmp_path: Path) -> None:
    # given
    path = a_settings_file(tmp_path, db_url="sqlite:///never.db")

    # when
    code, out, _ = check("--config", str(path), env=SANDBOX_ENV)

    # then
    assert code == 0, out
    assert (
        f"in-flight subscriptions: not compared: no database yet (sqlite file {tmp_path / 'never.db'})" in out
    )
    assert not (tmp_path / "never.db").exists()


def test_given_subscriptions_on_an_older_ladder_when_checked_then_the_diff_and_counts_are_shown(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given: one subscription entered under ladder A; finance then edits the file to ladder B
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old_path = a_settings_file(tmp_path / "a", db_url=db_url, attempts=LADDER_A)
    old = load_test_settings(old_path)
    import_one(tmp_path, old, engine)
    path = a_settings_file(tmp_path / "b", db_url=db_url, attempts=LADDER_B)
    old_version = profile_version(old.recycle_profiles["default"])

    # when
    code, out, _ = check("--config", str(path), env=SANDBOX_ENV)
    json_code, json_out, _ = check("--config", str(path), "--format", "json", env=SANDBOX_ENV)

    # then
    assert code == 0, out
    assert f"    1 follow {old_version}, which differs from these settings:" in out
    assert "      attempt 1: day 1 -> 4" in out
    assert "      attempt 2: day 2 -> 10" in out
    assert "(recycle-engine ladder migrate --profile default moves them to these settings)" in out
    assert json_code == 0
    (followed,) = json.loads(json_out)["profiles"][0]["in_flight"]
    assert followed["version"] == old_version
    assert followed["subscriptions"] == 1
    assert followed["current"] is False
    assert followed["changes"][0] == "attempt 1: day 1 -> 4"


def test_given_subscriptions_on_the_current_ladder_when_checked_then_they_are_counted_without_a_diff(
    tmp_path: Path, db_url: str, engine: Engine
) -> None:
    # given
    path = a_settings_file(tmp_path, db_url=db_url, attempts=LADDER_A)
    settings = load_test_settings(path)
    import_one(tmp_path, settings, engine)

    # when
    code, out, _ = check("--config", str(path), env=SANDBOX_ENV)

    # then
    assert code == 0, out
    assert f"    1 follow {profile_version(settings.recycle_profiles['default'])}: these settings" in out
    assert "differs" not in out


def test_given_a_run_holding_the_sqlite_write_lock_when_checked_then_the_check_reads_without_waiting(
    tmp_path: Path,
) -> None:
    # given: a folder name a URI would misread, and a writer in the middle of a transaction
    folder = tmp_path / "book #1 %20"
    folder.mkdir()
    database = folder / "book.db"
    db_url = f"sqlite:///{database}?timeout=3"
    upgrade(db_url, "head")
    path = a_settings_file(folder, db_url=db_url, attempts=LADDER_A)
    settings = load_test_settings(path)
    writer = make_engine(db_url)
    import_one(tmp_path, settings, writer)
    with writer.begin() as conn:  # BEGIN IMMEDIATE: the write lock, as a nightly run holds it
        conn.exec_driver_sql("UPDATE subscriptions SET updated_at = updated_at")

        # when
        code, out, err = check(
            "--config", str(path), env=SANDBOX_ENV | {"RECYCLE_ENGINE_SQLITE_TIMEOUT": "1"}
        )

    writer.dispose()
    # then
    assert code == 0, err
    assert f"    1 follow {profile_version(settings.recycle_profiles['default'])}: these settings" in out


def test_given_an_unreachable_postgresql_when_checked_then_it_says_so_and_still_shows_the_ladders(
    tmp_path: Path,
) -> None:
    # given: nothing listens on port 1
    path = a_settings_file(tmp_path, db_url="postgresql+psycopg://engine@127.0.0.1:1/book")

    # when
    code, out, err = check("--config", str(path), env=SANDBOX_ENV)

    # then
    assert code == 0, err
    assert (
        "in-flight subscriptions: not compared: cannot read the database (postgresql at 127.0.0.1:1/book)"
        in out
    )
    assert "recycle profile default (version " in out
    assert "Traceback" not in out + err


def test_given_a_minimum_price_with_cents_when_shown_in_yen_then_it_says_to_choose_another_currency(
    tmp_path: Path,
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text(SHIPPED.read_text().replace('minimum_price: "5.00"', 'minimum_price: "5.50"'))

    # when
    code, _, err = check(
        "--config", str(path), "--no-database", "--currency", "JPY", "--sample-price", "4999"
    )

    # then
    assert code == 1
    assert (
        "recycle profile default cannot be shown in JPY: 5.50 has more than 0 decimal places for JPY" in err
    )
    assert "choose another --currency" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("edit", "exit_code", "words"),
    [
        (
            ('{attempt: final, days: 5, reduction: "10"}', '{attempt: final, days: 5, reduction: "100"}'),
            0,
            "recycle_profiles[0].attempts (line {line}), profile default: reductions add up to 105 % by "
            "attempt final: from there every attempt charges the minimum price 5.00",
        ),
        (('"7-9": null', '"7-10": flexfactor-main'), 2, "unknown slot '7-10'; slots: 4-6, 7-9, final"),
        (('"4-6": flexfactor-main', '"4-6": FlexFactor-Main'), 2, "(did you mean 'flexfactor-main'?)"),
        (('minimum_price: "5.00"', 'minimum_price: "1000000000000"'), 2, "must be at most 999999999.999"),
        (("    slots:\n", "    slots\n"), 2, "not valid YAML: the key on line"),
    ],
    ids=["reductions-105", "slot-7-10", "gateway-case", "minimum-price-max", "yaml-syntax"],
)
def test_given_a_finance_edit_of_the_shipped_settings_when_checked_then_it_is_warned_or_refused_in_words(
    tmp_path: Path, edit: tuple[str, str], exit_code: int, words: str
) -> None:
    # given
    old, new = edit
    text = SHIPPED.read_text()
    assert old in text
    path = tmp_path / "settings.yaml"
    path.write_text(text.replace(old, new, 1))
    line = next(n for n, row in enumerate(path.read_text().splitlines(), 1) if row.strip() == "attempts:")

    # when
    code, out, err = check("--config", str(path), "--no-database")

    # then
    assert code == exit_code, out + err
    assert words.format(line=line) in (out if exit_code == 0 else err)
    assert "Traceback" not in err
