"""Load-time checks finance meets while editing settings.yaml: slot typos, gateway case, amounts, YAML syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from recycle_engine.config import load_settings
from tests.unit.test_config import ENV, GATEWAYS, LADDER, line_of, only_problem, write


def _profile(body: str) -> str:
    return GATEWAYS + "recycle_profiles:\n  - id: default\n    gateways: [nmi-main]\n" + body


def test_given_a_flexfactor_gateway_on_slot_7_10_when_loaded_then_it_is_an_unknown_slot(
    tmp_path: Path,
) -> None:
    # given
    path = write(tmp_path, _profile(LADDER + '    slots: {"7-10": ff-main}\n'))

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].slots.7-10"
    assert problem.message.startswith("unknown slot '7-10'; slots: 4-6, 7-9, final")
    assert "FlexFactor can be chosen only" not in problem.message


@pytest.mark.parametrize(
    ("written", "meant"),
    [("NMI-Main", "nmi-main"), ("FF-MAIN", "ff-main"), ("nmi-bakup", "nmi-backup")],
)
def test_given_a_gateway_id_in_another_case_when_loaded_then_it_says_did_you_mean(
    tmp_path: Path, written: str, meant: str
) -> None:
    # given
    path = write(
        tmp_path,
        GATEWAYS + f"recycle_profiles:\n  - id: default\n    gateways: [nmi-main]\n{LADDER}"
        f'    slots: {{"4-6": {written}}}\n',
    )

    # when
    problem = only_problem(path)

    # then
    assert problem.path == "recycle_profiles[0].slots.4-6"
    assert problem.message.startswith(f"unknown gateway {written!r} (did you mean {meant!r}?); gateways: ")


@pytest.mark.parametrize("key", ["minimum_price", "reduction"])
def test_given_an_amount_past_the_money_maximum_when_loaded_then_it_is_refused_at_load(
    tmp_path: Path, key: str
) -> None:
    # given: 10^12 minor units of a three-decimal currency is one more than the engine handles
    huge = '"1000000000.000"'
    if key == "minimum_price":
        body = f"    reduction_type: flat\n    minimum_price: {huge}\n" + LADDER
    else:
        body = (
            f"    reduction_type: flat\n    attempts:\n      - {{attempt: 1, days: 2, reduction: {huge}}}\n"
        )
    path = write(tmp_path, _profile(body))

    # when
    problem = only_problem(path)

    # then
    assert problem.path.endswith(key)
    assert problem.line == line_of(path, "1000000000.000")
    assert problem.message.startswith("must be at most 999999999.999, the largest amount the engine handles")


def test_given_the_largest_amount_when_loaded_then_it_is_accepted(tmp_path: Path) -> None:
    # given
    path = write(
        tmp_path, _profile('    reduction_type: flat\n    minimum_price: "999999999.999"\n' + LADDER)
    )

    # when / then
    assert str(load_settings(path, ENV).recycle_profiles["default"].minimum_price) == "999999999.999"


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        (
            "timezone: UTC\ngateways:\n  - {id: x, type: simulated\nbatching: {}\n",
            4,
            9,
            "the '{' opened on line 3 is not closed with '}'",
        ),
        ("timezone: UTC\nreport: output_dir: x\n", 2, 19, "put quotes around text that contains ': '"),
        ("timezone: UTC\ngateways:\n\t- {id: x}\n", 3, 1, "a tab character; indent with spaces only"),
        ("batching:\n  batch_size: 10\n concurrency: 2\n", 3, 2, "not indented like the entries it follows"),
        ("batching:\n  batch_size: 10\n  concurrency\n  x: 1\n", 4, 3, "the key on line 3 has no ':'"),
        ('timezone: "UTC\nbatching: {}\n', 3, 1, "the quote opened on line 1 is never closed"),
        ("timezone: @UTC\n", 1, 11, "a value cannot start with '@'; put the value in quotes"),
    ],
)
def test_given_a_yaml_syntax_error_when_loaded_then_it_names_line_and_column_in_plain_words(
    tmp_path: Path, text: str, line: int, column: int, words: str
) -> None:
    # given
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")

    # when
    problem = only_problem(path)

    # then
    assert (problem.line, problem.column) == (line, column)
    assert problem.message.startswith("not valid YAML: ")
    assert words in problem.message
    assert "<block" not in problem.message
    assert "scalar" not in problem.message
    assert f"(line {line}, column {column})" in str(problem)
